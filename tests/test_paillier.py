"""Paillier with DJN randomness: phe decrypts what the fast path encrypts, the homomorphism and
mixing with phe ciphertexts are unchanged, peer input is validated, packed counters decode."""

import random

import gmpy2
import numpy as np
import phe
import pytest

from psi import paillier
from psi.errors import CryptoError, KinlinkError
from psi.paillier import Packing, PrivateKey, PublicKey


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return paillier.generate(1024)


@pytest.fixture(scope="module")
def pub(key) -> PublicKey:
    return key.public


def key_bytes(n: int, hs: int) -> bytes:
    """A key encoding built by hand, to feed ``from_bytes`` what ``to_bytes`` never writes."""
    n_bytes, width = (n.bit_length() + 7) // 8, ((n * n).bit_length() + 7) // 8
    return b"\x01" + n_bytes.to_bytes(2, "big") + n.to_bytes(n_bytes) + hs.to_bytes(width)


# -- encryption ------------------------------------------------------------------------------------
def test_fast_encryption_decrypts_with_phe(key, pub):
    rng = random.Random(1)
    plaintexts = [0, 1, pub.n - 1, pub.n // 2] + [rng.randrange(pub.n) for _ in range(20)]
    ciphertexts = pub.encrypt(plaintexts)
    raw = key.to_phe()
    assert [raw.raw_decrypt(c) for c in ciphertexts] == plaintexts
    assert key.decrypt_many(ciphertexts) == plaintexts
    # phe's own EncryptedNumber and decrypt, for plaintexts its integer encoding keeps as they are
    assert raw.decrypt(phe.EncryptedNumber(pub.to_phe(), pub.encrypt_one(12345))) == 12345


def test_encryption_is_randomized_and_the_key_is_djn(key, pub):
    first, second = pub.encrypt([7, 7])
    assert first != second and key.decrypt(first) == key.decrypt(second) == 7
    p, q = key.to_phe().p, key.to_phe().q
    assert p % 4 == 3 and q % 4 == 3 and gmpy2.gcd(p - 1, q - 1) == 2
    assert key.decrypt(pub.hs) == 0  # hs is an n-th residue: an encryption of 0


def test_batch_equals_one_by_one(key, pub):
    plaintexts = list(range(0, 5000, 37))
    batch = key.decrypt_many(pub.encrypt(plaintexts))
    one_by_one = [key.decrypt(pub.encrypt_one(m)) for m in plaintexts]
    assert batch == one_by_one == plaintexts


@pytest.mark.parametrize("window", [1, 7, 12])
def test_any_window_gives_the_same_plaintexts(key, pub, window):
    fast = PublicKey(pub.n, pub.hs, window=window)
    plaintexts = [0, 3, pub.n - 2, 2**300 + 5]
    assert key.decrypt_many(fast.encrypt(plaintexts)) == plaintexts


def test_process_pool_path_equals_in_process_path(key, pub, monkeypatch):
    monkeypatch.setattr(paillier, "POOL_MIN", 100)
    monkeypatch.setattr(paillier, "CHUNK", 64)
    rng = random.Random(2)
    plaintexts = [rng.randrange(pub.n) for _ in range(300)]
    done: list[int] = []
    try:
        pooled = pub.encrypt(plaintexts, workers=2, progress=done.append)
        pool = pub._pool
        again = pub.encrypt(plaintexts[:150], workers=2)
        assert pool is not None and pub._pool is pool  # kept for the next batch
    finally:
        pub.close()
    assert pub._pool is None
    in_process = pub.encrypt(plaintexts, workers=1)
    assert done == [64, 64, 64, 64, 44]
    assert key.decrypt_many(pooled) == key.decrypt_many(in_process) == plaintexts
    assert key.decrypt_many(again) == plaintexts[:150]
    assert set(pooled).isdisjoint(in_process)


def test_plaintexts_are_checked(key, pub):
    for bad in (-1, pub.n):
        with pytest.raises(ValueError, match="plaintext 1 is outside"):
            pub.encrypt([0, bad])
    with pytest.raises(TypeError):
        pub.encrypt_one(1.5)
    assert key.decrypt(pub.encrypt_one(np.int64(2**62))) == 2**62


def test_key_of_production_size():
    key = paillier.generate()
    pub = PublicKey.from_bytes(key.public.to_bytes())
    assert (pub.bits, pub.ciphertext_bytes) == (2048, 512) and pub == key.public
    plaintexts = [0, 1, pub.n - 1, 10**600]
    ciphertexts = pub.ciphertexts_from_bytes(pub.ciphertexts_to_bytes(pub.encrypt(plaintexts)))
    assert key.decrypt_many(ciphertexts) == plaintexts
    assert key.decrypt(pub.rerandomize(pub.sum(ciphertexts[:2]))) == 1


def test_generate_refuses_unusable_sizes():
    for bits in (512, 1025, 16384):
        with pytest.raises(ValueError):
            paillier.generate(bits)


# -- homomorphism ----------------------------------------------------------------------------------
def test_sum_add_and_mul_const(key, pub):
    values = [random.Random(3).randrange(10**12) for _ in range(50)]
    ciphertexts = pub.encrypt(values)
    assert key.decrypt(pub.sum(ciphertexts)) == sum(values)
    assert key.decrypt(pub.sum(iter(ciphertexts))) == sum(values)
    assert key.decrypt(pub.add(ciphertexts[0], ciphertexts[1])) == values[0] + values[1]
    assert key.decrypt(pub.mul_const(ciphertexts[2], 1000)) == values[2] * 1000
    assert key.decrypt(pub.mul_const(ciphertexts[2], 0)) == 0
    wrapped = pub.n - 1  # additions are modulo n
    assert key.decrypt(pub.add(pub.encrypt_one(wrapped), pub.encrypt_one(5))) == 4
    with pytest.raises(ValueError):
        pub.mul_const(ciphertexts[0], -1)


def test_fast_and_phe_ciphertexts_mix(key, pub):
    reference = pub.to_phe()
    phe_ciphertexts = [reference.encrypt(v).ciphertext() for v in (10, 20)]
    fast = pub.encrypt([1, 2])
    assert key.decrypt(pub.sum(fast + phe_ciphertexts)) == 33
    total = phe.EncryptedNumber(reference, fast[0]) + reference.encrypt(100)
    assert key.to_phe().decrypt(total) == 101
    assert key.decrypt((total * 3).ciphertext()) == 303


def test_rerandomize_changes_the_ciphertext_not_the_plaintext(key, pub):
    c = pub.encrypt_one(42)
    fresh = pub.rerandomize(c)
    assert fresh != c and pub.rerandomize(c) != fresh
    assert key.decrypt(fresh) == 42
    assert pub.sum([]) == 1  # deterministic: a caller rerandomizes it like any sum
    empty = pub.rerandomize(pub.sum([]))
    assert empty != 1 and key.decrypt(empty) == 0


# -- wire ------------------------------------------------------------------------------------------
def test_ciphertext_bytes_round_trip(pub):
    ciphertexts = pub.encrypt([0, 1, 2, 3])
    data = pub.ciphertexts_to_bytes(ciphertexts)
    assert len(data) == 4 * pub.ciphertext_bytes == 4 * 256
    assert pub.ciphertexts_from_bytes(data) == ciphertexts
    assert pub.ciphertexts_from_bytes(b"") == [] and pub.ciphertexts_to_bytes([]) == b""
    with pytest.raises(ValueError):
        pub.ciphertexts_to_bytes([pub.nsquare])


def test_malformed_ciphertexts_are_rejected(key, pub):
    width, good = pub.ciphertext_bytes, pub.encrypt_one(5)

    def blob(bad: int) -> bytes:
        return good.to_bytes(width, "big") + bad.to_bytes(width, "big")

    with pytest.raises(CryptoError, match="not a multiple"):
        pub.ciphertexts_from_bytes(blob(good)[:-1])
    with pytest.raises(CryptoError, match=r"ciphertext 1 is outside"):
        pub.ciphertexts_from_bytes(blob(0))
    with pytest.raises(CryptoError, match=r"ciphertext 1 is outside"):
        pub.ciphertexts_from_bytes(blob(pub.nsquare))
    with pytest.raises(CryptoError, match=r"ciphertext 1 is outside"):
        pub.ciphertexts_from_bytes(good.to_bytes(width, "big") + b"\xff" * width)
    p, q = key.to_phe().p, key.to_phe().q
    with pytest.raises(CryptoError, match=r"ciphertext 1 is not prime to n"):
        pub.ciphertexts_from_bytes(blob(p * 3))
    with pytest.raises(CryptoError, match=r"ciphertext 2 is not prime to n"):
        pub.ciphertexts_from_bytes(blob(good) + (q * 5).to_bytes(width, "big"))
    with pytest.raises(CryptoError, match=r"ciphertext 1 is not prime to n"):
        pub.ciphertexts_from_bytes(blob(pub.n))
    with pytest.raises(CryptoError):
        key.decrypt(0)


def test_public_key_round_trip(pub):
    data = pub.to_bytes()
    assert len(data) == 3 + 128 + 256
    again = PublicKey.from_bytes(data, min_bits=1024)
    assert again == pub and (again.n, again.hs, again.bits) == (pub.n, pub.hs, 1024)
    assert again.to_phe() == pub.to_phe()
    with pytest.raises(CryptoError, match="outside \\[2048"):
        PublicKey.from_bytes(data)  # production floor


def test_bad_public_keys_are_rejected(key, pub):
    n, hs, p = pub.n, pub.hs, key.to_phe().p
    bad = {
        "version": b"\x02" + pub.to_bytes()[1:],
        "empty": b"",
        "truncated": pub.to_bytes()[:100],
        "trailing byte": pub.to_bytes() + b"\x00",
        "even n": key_bytes(n + 1, hs),
        "hs zero": key_bytes(n, 0),
        "hs not prime to n": key_bytes(n, p),
        "leading zero": b"\x01\x00\x81\x00" + pub.to_bytes()[3:],
        "too small": key_bytes(2**511 + 1, 2),
    }
    for name, data in bad.items():
        try:
            PublicKey.from_bytes(data, min_bits=1024)
        except CryptoError as exc:
            assert str(exc).startswith("Paillier key"), name
        else:
            pytest.fail(f"accepted a key with {name}")
    width = pub.ciphertext_bytes
    too_big = b"\x01\x00\x80" + n.to_bytes(128, "big") + b"\xff" * width
    with pytest.raises(CryptoError, match="hs must lie"):
        PublicKey.from_bytes(too_big, min_bits=1024)


def test_private_key_must_match(key):
    other = paillier.generate(1024)
    with pytest.raises(CryptoError):
        PrivateKey(key.public, other.to_phe())
    assert str(key.to_phe().p) not in repr(key)


# -- packing ---------------------------------------------------------------------------------------
def layout(packing: Packing) -> tuple[int, int, int]:
    return packing.slot_bits, packing.slots_per_plaintext, packing.plaintexts_per_element


def test_packing_bounds():
    eight = Packing.for_bounds(groups=8, max_value=1, max_count=100_000, key_bits=2048)
    assert layout(eight) == (17, 120, 1)
    wide = Packing.for_bounds(groups=300, max_value=2**20, max_count=2**20, key_bits=1024)
    assert layout(wide) == (41, 24, 13)
    assert Packing.for_bounds(1, 0, 1, 1024).slot_bits == 1
    assert Packing.for_bounds(1, 2**8 - 1, 1, 1024).slot_bits == 8  # the bound is exact
    assert Packing.for_bounds(1, 2**8, 1, 1024).slot_bits == 9
    assert Packing.for_bounds(1, 2**1023 - 1, 1, 1024).slots_per_plaintext == 1


@pytest.mark.parametrize(
    "bounds",
    [(1, 2**1023, 1, 1024), (1, 2**600, 2**600, 1024), (0, 1, 1, 1024), (1, -1, 1, 1024)],
)
def test_packing_refuses_impossible_bounds(bounds):
    with pytest.raises(ValueError):
        Packing.for_bounds(*bounds)


@pytest.mark.parametrize("groups", [1, 8, 30])
def test_encrypted_grouped_sums_equal_the_plaintext_totals(key, pub, groups):
    rng = random.Random(groups)
    count = 200
    packing = Packing.for_bounds(groups, max_value=2**32, max_count=count * 10, key_bits=pub.bits)
    assert packing.plaintexts_per_element == (2 if groups == 30 else 1)  # 30 spans two plaintexts
    labels = [rng.randrange(groups) for _ in range(count)]
    values = [rng.randrange(2**32 + 1) for _ in range(count)]
    flat = packing.encode_many(labels, values)
    width = packing.plaintexts_per_element
    assert len(flat) == count * width
    assert flat[width * 5 : width * 6] == packing.encode(labels[5], values[5])
    ciphertexts = pub.encrypt(flat)
    sums = [pub.rerandomize(pub.sum(ciphertexts[j::width])) for j in range(width)]
    totals = [0] * groups
    for label, value in zip(labels, values, strict=True):
        totals[label] += value
    assert packing.decode(key.decrypt_many(sums)) == totals


def test_every_slot_at_its_bound_still_decodes(key, pub):
    # 31-bit slots: 33 of them fill bits 0..1022 of a 1024-bit key's plaintext exactly
    packing = Packing.for_bounds(groups=70, max_value=2**16 - 1, max_count=2**15, key_bits=1024)
    assert layout(packing) == (31, 33, 3)
    # every group's total at the bound, max_count times max_value, by multiplying a ciphertext
    per_group = [pub.encrypt(packing.encode(g, 2**16 - 1)) for g in range(70)]
    sums = [
        pub.sum(pub.mul_const(cs[j], 2**15) for cs in per_group)
        for j in range(packing.plaintexts_per_element)
    ]
    plaintexts = key.decrypt_many(sums)
    assert packing.decode(plaintexts) == [(2**16 - 1) * 2**15] * 70
    assert 2**1022 < plaintexts[0] < 2**1023 <= pub.n  # the top slot reaches bit 1022


def test_packing_input_checks():
    packing = Packing.for_bounds(groups=3, max_value=10, max_count=2, key_bits=1024)
    for group, value in ((3, 1), (-1, 1), (0, 11), (0, -1)):
        with pytest.raises(ValueError):
            packing.encode(group, value)
    with pytest.raises(ValueError, match="differ"):
        packing.encode_many([0, 1], [1])
    with pytest.raises(ValueError, match="max_count"):
        packing.encode_many([0, 1, 2], [1, 1, 1])
    with pytest.raises(ValueError, match="expected 1"):
        packing.decode([0, 0])
    with pytest.raises(CryptoError, match="overflows"):
        packing.decode([1 << (3 * packing.slot_bits)])
    assert packing.decode([packing.encode(2, 10)[0] + 7]) == [7, 0, 10]
    wide = Packing.for_bounds(groups=100, max_value=1000, max_count=1000, key_bits=2048)
    assert wide.encode(np.int64(90), np.int64(1000)) == wide.encode(90, 1000) != [0]


def test_packing_dict_round_trip():
    packing = Packing.for_bounds(groups=30, max_value=5, max_count=1000, key_bits=2048)
    assert Packing.from_dict(packing.to_dict()) == packing
    assert Packing.from_dict({k: np.int64(v) for k, v in packing.to_dict().items()}) == packing
    for broken in (
        {**packing.to_dict(), "slot_bits": 99},
        {k: v for k, v in packing.to_dict().items() if k != "groups"},
        {**packing.to_dict(), "groups": "many"},
        {**packing.to_dict(), "max_value": 2**3000},
    ):
        with pytest.raises(KinlinkError, match="invalid packing"):
            Packing.from_dict(broken)
