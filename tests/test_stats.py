"""psi.stats: cardinality, intersection-sum and grouped sums against the plaintext computation on
synthetic people; what each party sees is shuffled and blinded; sums are re-randomised."""

from datetime import date

import numpy as np
import pytest

from nodes.demo.synth import generate_city
from psi import paillier
from psi.errors import CryptoError
from psi.stats import (
    DST,
    Blinder,
    ElementSet,
    SumAccumulator,
    SumLayout,
    count_common,
    decrypt_sums,
    encrypt_pairs,
    node_set_chunks,
    pair_chunks,
    permutation,
    require_distinct,
    shuffled,
)
from psi.suites import get_suite

SUITE = get_suite("ristretto255-SHA512")


@pytest.fixture(scope="module")
def people():
    """The client's X (a roster's parents, with a value and a county each) and the node's Y (a
    register, plus every third parent so that the intersection is large)."""
    city = generate_city(children=150, as_of=date(2026, 11, 30), seed=11)
    parents = sorted(
        {
            x
            for row in city.roster
            for x in (city.canonical(row.father_id), city.canonical(row.mother_id))
            if x
        }
    )
    register = {city.canonical(r.id_number) for r in city.registers["police"]} - {None}
    node = sorted(register | set(parents[::3]))
    rng = np.random.default_rng(5)
    values = rng.integers(0, 1000, len(parents)).tolist()
    counties = rng.integers(0, 5, len(parents)).tolist()
    return parents, node, values, counties


@pytest.fixture(scope="module")
def key():
    return paillier.generate(1024)


def node_view(node: Blinder, client: Blinder, ys: list[str]) -> np.ndarray:
    """The node's set as the client holds it after re-blinding: a·b·H(y)."""
    return client.blind(np.concatenate(list(node_set_chunks(node, ys, 64))))


def test_cardinality_equals_the_plaintext_intersection(people):
    xs, ys, _, _ = people
    node, client = Blinder(), Blinder()
    double_y = node_view(node, client, ys)
    sent = shuffled(client.hash_blind([x.encode() for x in xs]))
    answered = shuffled(node.blind(sent))
    assert count_common(answered, double_y) == len(set(xs) & set(ys)) > 20


def plain_totals(xs, ys, values, groups, n_groups):
    inside = set(ys)
    sums, counts = [0] * n_groups, [0] * n_groups
    for x, v, g in zip(xs, values, groups, strict=True):
        if x in inside:
            sums[g] += v
            counts[g] += 1
    return sums, counts


def run_sum(key, xs, ys, layout, groups, values, chunk=50):
    node, client = Blinder(), Blinder()
    double_y = ElementSet(shuffled(node_view(node, client, ys)))
    elements, ciphertexts = encrypt_pairs(
        client, key.public, layout, [x.encode() for x in xs], groups, values
    )
    accumulator = SumAccumulator(node, double_y, key.public, layout.per_element)
    for block, data in pair_chunks(elements, ciphertexts, key.public, layout.per_element, chunk):
        accumulator.add(block, data)
    count, sums = accumulator.result()
    return count, decrypt_sums(key, layout, sums)


def test_intersection_sum_equals_the_plaintext_sum(people, key):
    xs, ys, values, _ = people
    layout = SumLayout.plan(
        groups=1, max_value=max(values), elements=len(xs), counts=False, key_bits=key.public.bits
    )
    count, (sums, counts) = run_sum(key, xs, ys, layout, [0] * len(xs), values)
    plain_sums, plain_counts = plain_totals(xs, ys, values, [0] * len(xs), 1)
    assert (count, sums, counts) == (plain_counts[0], plain_sums, None)


@pytest.mark.parametrize("with_values", [True, False], ids=["sums and counts", "counts"])
def test_grouped_sums_equal_the_plaintext_totals(people, key, with_values):
    xs, ys, values, counties = people
    layout = SumLayout.plan(
        groups=5,
        max_value=max(values) if with_values else None,
        elements=len(xs),
        counts=True,
        key_bits=key.public.bits,
    )
    assert layout.per_element == 1  # 10 slots of 19 bits share one 1024-bit plaintext
    count, (sums, counts) = run_sum(key, xs, ys, layout, counties, values if with_values else None)
    plain_sums, plain_counts = plain_totals(xs, ys, values, counties, 5)
    assert counts == plain_counts and count == sum(plain_counts)
    assert sums == (plain_sums if with_values else None)


def test_groups_beyond_one_plaintext_take_several_ciphertexts(people, key):
    """Values near 2^900 leave one slot per 1024-bit plaintext: 3 groups with counts need 6
    ciphertexts per element, and every total still comes out exact (also at the bound)."""
    xs, ys, _, counties = people
    big = [(1 << 900) - 1] * len(xs)  # every value at the maximum: the largest possible sums
    groups = [c % 3 for c in counties]
    layout = SumLayout.plan(
        groups=3, max_value=big[0], elements=len(xs), counts=True, key_bits=key.public.bits
    )
    assert layout.packing.slots_per_plaintext == 1 and layout.per_element == 6
    count, (sums, counts) = run_sum(key, xs, ys, layout, groups, big, chunk=17)
    plain_sums, plain_counts = plain_totals(xs, ys, big, groups, 3)
    assert (sums, counts, count) == (plain_sums, plain_counts, sum(plain_counts))


def test_the_node_sees_its_set_in_an_order_unrelated_to_the_register(people):
    _, ys, _, _ = people
    node = Blinder()
    streamed = np.concatenate(list(node_set_chunks(node, ys, 64)))
    in_order = node.hash_blind([y.encode() for y in ys])
    assert ElementSet(streamed).contains(in_order).all() and len(streamed) == len(ys)
    assert (streamed == in_order).all(axis=1).mean() < 0.05  # hardly any row in place


def test_the_client_cannot_link_its_doubly_blinded_elements_to_its_inputs(people):
    xs, _, _, _ = people
    node, client = Blinder(), Blinder()
    in_order = client.hash_blind([x.encode() for x in xs])
    sent = shuffled(in_order)
    assert (sent == in_order).all(axis=1).mean() < 0.05
    answered = shuffled(node.blind(sent))
    # Same set as b·(a·H(x)) in the client's own order, but not in that order:
    assert count_common(answered, node.blind(in_order)) == len(xs)
    assert (answered == node.blind(sent)).all(axis=1).mean() < 0.05


def test_pairs_leave_the_client_shuffled_and_never_as_plain_hashes(people, key):
    xs, _, values, _ = people
    client = Blinder()
    layout = SumLayout.plan(
        groups=1, max_value=max(values), elements=len(xs), counts=False, key_bits=key.public.bits
    )
    elements, ciphertexts = encrypt_pairs(
        client, key.public, layout, [x.encode() for x in xs], [0] * len(xs), values
    )
    in_order = client.hash_blind([x.encode() for x in xs])
    assert count_common(elements, in_order) == len(xs)
    assert (elements == in_order).all(axis=1).mean() < 0.05
    plain = SUITE.hash_to_group([x.encode() for x in xs], DST)
    assert count_common(elements, plain) == 0
    by_value = dict(zip(map(bytes, in_order), values, strict=True))
    decrypted = key.decrypt_many(ciphertexts)
    assert decrypted == [by_value[bytes(e)] for e in elements]  # pairs stay together
    assert len(set(ciphertexts)) == len(ciphertexts)  # equal values, different ciphertexts


def test_the_sum_is_rerandomised(people, key):
    xs, ys, values, _ = people
    node, client = Blinder(), Blinder()
    layout = SumLayout.plan(
        groups=1, max_value=max(values), elements=len(xs), counts=False, key_bits=key.public.bits
    )
    double_y = ElementSet(node_view(node, client, ys))
    elements, ciphertexts = encrypt_pairs(
        client, key.public, layout, [x.encode() for x in xs], [0] * len(xs), values
    )
    accumulator = SumAccumulator(node, double_y, key.public, 1)
    accumulator.add(elements, key.public.ciphertexts_to_bytes(ciphertexts))
    _, data = accumulator.result()
    [sent] = key.public.ciphertexts_from_bytes(data)
    matched = np.flatnonzero(double_y.contains(node.blind(elements)))
    product = key.public.sum([ciphertexts[i] for i in matched])
    assert sent != product and key.decrypt(sent) == key.decrypt(product)
    empty = SumAccumulator(node, ElementSet(np.empty((0, 32), np.uint8)), key.public, 1)
    empty.add(elements, key.public.ciphertexts_to_bytes(ciphertexts))
    [zero] = key.public.ciphertexts_from_bytes(empty.result()[1])
    assert zero != 1 and key.decrypt(zero) == 0  # not the constant empty product


def test_each_session_blinds_with_a_fresh_scalar():
    ids = [b"150102198001010011"]
    assert (Blinder().hash_blind(ids) != Blinder().hash_blind(ids)).any()
    assert len({tuple(permutation(20)) for _ in range(5)}) == 5


def test_bad_elements_ciphertexts_and_repeats_are_refused(key):
    node = Blinder()
    accumulator = SumAccumulator(node, ElementSet(node.hash_blind([b"y"])), key.public, 1)
    good = Blinder().hash_blind([b"a", b"b"])
    width = key.public.ciphertext_bytes
    with pytest.raises(CryptoError, match="outside"):
        accumulator.add(good, bytes(2 * width))
    with pytest.raises(CryptoError, match="not a multiple"):
        accumulator.add(good, bytes(width + 1))
    with pytest.raises(CryptoError, match="2 ciphertexts for 1 elements"):
        accumulator.add(good[:1], key.public.ciphertexts_to_bytes([2, 3]))
    with pytest.raises(CryptoError, match="canonical"):
        accumulator.add(np.full((1, 32), 0xFF, np.uint8), key.public.ciphertexts_to_bytes([2]))
    assert accumulator.received == 0
    accumulator.add(np.concatenate([good, good[:1]]), key.public.ciphertexts_to_bytes([2, 3, 4]))
    with pytest.raises(CryptoError, match="1 repeated"):
        accumulator.result()
    with pytest.raises(CryptoError, match="repeated"):
        require_distinct(np.concatenate([good, good]), "a set")
