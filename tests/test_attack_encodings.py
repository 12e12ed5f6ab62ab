"""Attacks on element decoding (issue 13, finding 4): a client hands the node, or a node hands a
client, an element that RFC 9496 §4.3.1 says must not decode. Every one must be refused, on the
single-element and the batch paths alike, whatever libsodium the binding bundles; and loading
the binding must leave nothing behind on disk."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from psi.errors import CryptoError
from psi.oprf import CHUNK, Oprf

VECTORS = Path(__file__).parent / "vectors"
A1 = json.loads((VECTORS / "rfc9497-a1-oprf-ristretto255-sha512.json").read_text())
A2 = json.loads((VECTORS / "rfc9496-a2-ristretto255-invalid-encodings.json").read_text())
INVALID = [(group, bad) for group, rows in A2["groups"].items() for bad in rows]
VALID = [v[k] for v in A1["vectors"] for k in ("BlindedElement", "EvaluationElement")]
SK = bytes.fromhex(A1["skSm"])


def top_bit(element: str) -> str:
    """The same 32 bytes with bit 255 set: the second spelling that libsodium 1.0.18 accepts."""
    raw = bytearray.fromhex(element)
    raw[31] |= 0x80
    return raw.hex()


HOSTILE = INVALID + [("bit 255 set on a valid element", top_bit(v)) for v in VALID]
HOSTILE += [("bit 255 set on an invalid one", top_bit(bad)) for _, bad in INVALID[:4]]


@pytest.fixture(scope="module")
def oprf() -> Oprf:
    return Oprf(workers=2)


def batch_with(element: bytes, oprf: Oprf, at: int = CHUNK + 7) -> np.ndarray:
    """Valid blinded elements across two chunks with ``element`` at row ``at``."""
    valid = np.frombuffer(bytes.fromhex(VALID[0]), np.uint8)
    rows = np.tile(valid, (2 * CHUNK, 1))
    rows[at] = np.frombuffer(element, np.uint8)
    return rows


@pytest.mark.parametrize(("kind", "element"), HOSTILE, ids=lambda x: x[:12])
def test_the_node_evaluates_no_invalid_encoding(oprf, kind, element):
    """A hostile client's element: the node's single and batch evaluation both refuse it."""
    bad = bytes.fromhex(element)
    with pytest.raises(CryptoError):
        oprf.blind_evaluate(SK, bad)
    with pytest.raises(CryptoError, match=f"rows {CHUNK}..{2 * CHUNK - 1}"):
        oprf.blind_evaluate_batch(SK, batch_with(bad, oprf))


@pytest.mark.parametrize(("kind", "element"), HOSTILE, ids=lambda x: x[:12])
def test_the_client_finalizes_no_invalid_encoding(oprf, kind, element):
    """A hostile node's answer: the client's finalize refuses it, single and batch."""
    bad = bytes.fromhex(element)
    blind = bytes.fromhex(A1["vectors"][0]["Blind"])
    with pytest.raises(CryptoError):
        oprf.finalize(b"x", blind, bad)
    n = 2 * CHUNK
    blinds = np.tile(np.frombuffer(blind, np.uint8), (n, 1))
    with pytest.raises(CryptoError):
        oprf.finalize_batch([b"x"] * n, blinds, batch_with(bad, oprf))


def test_valid_elements_still_evaluate(oprf):
    """The strict decoding refuses nothing RFC 9497's vectors hold."""
    for vector in A1["vectors"]:
        blinded = bytes.fromhex(vector["BlindedElement"])
        assert oprf.blind_evaluate(SK, blinded).hex() == vector["EvaluationElement"]


def test_loading_the_suite_leaves_no_file_behind(tmp_path):
    """rbcl writes its libsodium to the temporary directory at import; it must not stay there
    (one machine held 500 such copies, 1.3 GB)."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    use = "import psi.oprf, rbcl; print(rbcl.crypto_core_ristretto255_random())"
    subprocess.run(
        [sys.executable, "-c", use],
        env=env,
        check=True,
        capture_output=True,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []
