"""RFC 9497 OPRF mode against the published vectors; batch paths against element-by-element ones."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rbcl

from psi.errors import CryptoError
from psi.hash_to_curve import expand_message_xmd, expand_message_xmd_batch
from psi.oprf import Oprf
from psi.suites import SUITES, UnknownSuiteError, get_suite

VECTORS = Path(__file__).parent / "vectors"
A1 = json.loads((VECTORS / "rfc9497-a1-oprf-ristretto255-sha512.json").read_text())
K3 = json.loads((VECTORS / "rfc9380-k3-expand-message-xmd-sha512.json").read_text())
h = bytes.fromhex


@pytest.fixture(scope="module")
def oprf() -> Oprf:
    return Oprf(A1["suite"])


@pytest.mark.parametrize("vector", K3["vectors"], ids=lambda v: f"{v['msg']!r}-{v['len_in_bytes']}")
def test_expand_message_xmd_rfc9380_k3(vector):
    out = expand_message_xmd(vector["msg"].encode(), K3["DST"].encode(), vector["len_in_bytes"])
    assert out.hex() == vector["uniform_bytes"]


def test_derive_key_pair_rfc9497_a1(oprf):
    key = oprf.derive_key_pair(h(A1["Seed"]), h(A1["KeyInfo"]))
    assert key.sk.hex() == A1["skSm"]
    assert key.pk == rbcl.crypto_scalarmult_ristretto255_base(key.sk)
    assert A1["skSm"] not in repr(key)


@pytest.mark.parametrize("vector", A1["vectors"], ids=lambda v: v["Input"][:8])
def test_oprf_rfc9497_a1(oprf, vector):
    sk, x = h(A1["skSm"]), h(vector["Input"])
    blind, blinded = oprf.blind(x, h(vector["Blind"]))
    assert blinded.hex() == vector["BlindedElement"]
    evaluated = oprf.blind_evaluate(sk, blinded)
    assert evaluated.hex() == vector["EvaluationElement"]
    assert oprf.finalize(x, blind, evaluated).hex() == vector["Output"]
    assert oprf.evaluate(sk, x).hex() == vector["Output"]


@pytest.mark.parametrize("vector", A1["vectors"], ids=lambda v: v["Input"][:8])
def test_batch_paths_reproduce_rfc9497_a1(vector):
    """Batch paths with the vector's blind repeated, across chunk boundaries and threads."""
    oprf = Oprf(A1["suite"], workers=2)
    sk, x, n = h(A1["skSm"]), h(vector["Input"]), 2500
    blinds = np.tile(np.frombuffer(h(vector["Blind"]), dtype=np.uint8), (n, 1))
    elements = oprf.suite.hash_to_group([x] * n, oprf._dst_group)
    blinded = oprf.suite.scalar_mult(blinds, elements)
    assert {row.tobytes().hex() for row in blinded} == {vector["BlindedElement"]}
    evaluated = oprf.blind_evaluate_batch(sk, blinded)
    assert {row.tobytes().hex() for row in evaluated} == {vector["EvaluationElement"]}
    outputs = oprf.finalize_batch([x] * n, blinds, evaluated)
    assert {row.tobytes().hex() for row in outputs} == {vector["Output"]}


def test_batch_equals_element_by_element():
    oprf = Oprf(workers=2)
    key = oprf.derive_key_pair(os.urandom(32), b"dataset=prison;epoch=1")
    inputs = [os.urandom(1 + i % 40) for i in range(3000)]
    blinds, blinded = oprf.blind_batch(inputs)
    for i in (0, 1023, 1024, 2999):
        _, single = oprf.blind(inputs[i], blinds[i].tobytes())
        assert single == blinded[i].tobytes()
    evaluated = oprf.blind_evaluate_batch(key.sk, blinded)
    for i in (0, 1500, 2999):
        assert evaluated[i].tobytes() == oprf.blind_evaluate(key.sk, blinded[i].tobytes())
    outputs = oprf.finalize_batch(inputs, blinds, evaluated)
    direct = oprf.evaluate_batch(key.sk, inputs)
    assert np.array_equal(outputs, direct)
    inverted = oprf.finalize_inverted(inputs, oprf.invert_blinds(blinds), evaluated)
    assert np.array_equal(inverted, direct)
    for i in (0, 2047, 2999):
        one = oprf.finalize(inputs[i], blinds[i].tobytes(), evaluated[i].tobytes())
        assert one == outputs[i].tobytes() == oprf.evaluate(key.sk, inputs[i])


def test_batch_single_worker_equals_parallel():
    inputs = [f"150802198001011234-{i}".encode() for i in range(2100)]
    sk = Oprf().derive_key_pair(b"\x07" * 32, b"x").sk
    assert np.array_equal(
        Oprf(workers=1).evaluate_batch(sk, inputs), Oprf(workers=2).evaluate_batch(sk, inputs)
    )


def test_montgomery_batch_inversion_matches_libsodium():
    suite = get_suite("ristretto255-SHA512")
    scalars = suite.random_scalars(257)
    inverses = suite.invert_scalars(scalars)
    for s, inv in zip(scalars, inverses, strict=True):
        assert inv.tobytes() == rbcl.crypto_core_ristretto255_scalar_invert(s.tobytes())


def test_suite_ops_match_rbcl_public_api():
    suite = get_suite("ristretto255-SHA512")
    scalars = suite.random_scalars(50)
    points = np.array([list(rbcl.crypto_core_ristretto255_random()) for _ in range(50)], np.uint8)
    products = suite.scalar_mult(scalars, points)
    for s, p, q in zip(scalars, points, products, strict=True):
        assert q.tobytes() == rbcl.crypto_scalarmult_ristretto255(s.tobytes(), p.tobytes())


@pytest.mark.parametrize(
    ("element", "reason"),
    [
        (bytes(32), "identity"),
        (b"\xff" * 32, "canonical"),
        ((2**255 - 19).to_bytes(32, "little"), "canonical"),  # p itself: non-canonical
        (bytes([1]) + bytes(31), "canonical"),  # odd ("negative") encodings are not canonical
    ],
)
def test_invalid_encodings_rejected_not_evaluated(oprf, element, reason):
    sk = h(A1["skSm"])
    good = h(A1["vectors"][0]["BlindedElement"])
    batch = np.frombuffer(good * 3 + element + good, dtype=np.uint8).reshape(5, 32)
    with pytest.raises(CryptoError, match=reason) as info:
        oprf.blind_evaluate_batch(sk, batch)
    assert "element 3" in str(info.value)
    with pytest.raises(CryptoError, match=reason):
        oprf.blind_evaluate(sk, element)


def test_wrong_shapes_and_counts_are_clear_errors(oprf):
    with pytest.raises(CryptoError, match="rows of 32 bytes"):
        oprf.blind_evaluate_batch(b"\x01" * 32, np.zeros((2, 31), np.uint8))
    with pytest.raises(CryptoError, match="differ in number"):
        oprf.finalize_batch([b"a"], np.zeros((2, 32), np.uint8), np.zeros((2, 32), np.uint8))
    with pytest.raises(CryptoError, match="32-byte seed"):
        oprf.derive_key_pair(b"short", b"")


def test_suites_are_named_and_negotiable():
    assert "ristretto255-SHA512" in SUITES
    with pytest.raises(UnknownSuiteError, match="known: ristretto255-SHA512"):
        get_suite("P256-SHA256")


def test_empty_batches(oprf):
    blinds, blinded = oprf.blind_batch([])
    assert blinds.shape == (0, 32) and blinded.shape == (0, 32)
    assert oprf.finalize_batch([], blinds, blinded).shape == (0, 64)


@pytest.mark.parametrize("length", [32, 64, 128])
def test_expand_message_xmd_batch_equals_one_by_one(length):
    dst = K3["DST"].encode()
    msgs = [v["msg"].encode() for v in K3["vectors"]] + [os.urandom(i) for i in range(70)]
    joined = expand_message_xmd_batch(msgs, dst, length)
    assert joined == b"".join(expand_message_xmd(m, dst, length) for m in msgs)


def test_batch_of_equal_length_inputs_equals_element_by_element():
    """Identity numbers are all 18 bytes: the finalize hash takes its row-array path."""
    oprf = Oprf(workers=2)
    key = oprf.derive_key_pair(os.urandom(32), b"x")
    inputs = [f"15080219800101{i:04d}".encode() for i in range(1500)]
    outputs = oprf.evaluate_batch(key.sk, inputs)
    for i in (0, 1023, 1024, 1499):
        assert outputs[i].tobytes() == oprf.evaluate(key.sk, inputs[i])
    blinds, blinded = oprf.blind_batch(inputs)
    evaluated = oprf.blind_evaluate_batch(key.sk, blinded)
    assert np.array_equal(oprf.finalize_batch(inputs, blinds, evaluated), outputs)


def test_random_scalars_are_non_zero_and_distinct():
    scalars = get_suite("ristretto255-SHA512").random_scalars(2000)
    assert scalars.any(axis=1).all()
    assert len({row.tobytes() for row in scalars}) == 2000
    assert all(row[31] <= 0x10 for row in scalars)  # reduced: below the order, 2^252 + ε
