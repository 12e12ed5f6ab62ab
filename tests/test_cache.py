"""The output cache: batch lookups, durable appends, and what survives a crash mid-write."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from nodes.shared.atrest import DamagedFile
from nodes.shared.cache import FAMILY, GCM_TAG, MAGIC, SEGMENT, OutputCache, cache_keys
from psi.errors import InputError


def ids(n: int, start: int = 0) -> list[str]:
    return [f"15010219800101{i:04d}" for i in range(start, start + n)]


def cache_at(path, secret: bytes, width: int = 64) -> OutputCache:
    return OutputCache(path, secret, width, context="test", remedy="delete it")


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 64), dtype=np.uint8)


def test_put_then_lookup_across_instances(tmp_path):
    secret = os.urandom(32)
    cache = cache_at(tmp_path / "o.bin", secret)
    outputs = rows(700, 1)
    cache.put(cache.keys(ids(500)), outputs[:500])
    cache.put(cache.keys(ids(300, 400)), outputs[400:700])  # 400..499 again, as a race would
    again = cache_at(tmp_path / "o.bin", secret)
    asked = [*ids(800), "15010219800101999X"]
    found, got = again.lookup(again.keys(asked[::-1]))  # any order
    found, got = found[::-1], got[::-1]
    assert found[:700].all() and not found[700:].any()
    assert np.array_equal(got[:700], outputs) and not got[700:].any()


def test_empty_cache_and_empty_batches(tmp_path):
    cache = cache_at(tmp_path / "o.bin", os.urandom(32))
    found, outputs = cache.lookup(cache.keys(ids(3)))
    assert not found.any() and outputs.shape == (3, 64)
    cache.put(cache.keys([]), np.empty((0, 64), np.uint8))
    assert not (tmp_path / "o.bin").exists()


def test_torn_last_record_is_dropped_and_appends_stay_aligned(tmp_path):
    secret, path = os.urandom(32), tmp_path / "o.bin"
    cache = cache_at(path, secret)
    cache.put(cache.keys(ids(10)), rows(10, 1))
    with open(path, "ab") as handle:  # a crash in the middle of the next record
        handle.write(b"\x01" * 37)
    found, _ = cache_at(path, secret).lookup(cache.keys(ids(10)))
    assert found.all()
    cache.put(cache.keys(ids(5, 10)), rows(5, 2))
    found, outputs = cache_at(path, secret).lookup(cache.keys(ids(15)))
    assert found.all() and np.array_equal(outputs[10:], rows(5, 2))


def test_torn_header_starts_afresh(tmp_path):
    path = tmp_path / "o.bin"
    path.write_bytes(MAGIC[:3])
    cache = cache_at(path, os.urandom(32))
    assert not cache.lookup(cache.keys(ids(2)))[0].any()
    cache.put(cache.keys(ids(2)), rows(2, 1))
    assert cache.lookup(cache.keys(ids(2)))[0].all()


def test_a_foreign_file_is_a_clear_error(tmp_path):
    path = tmp_path / "o.bin"
    path.write_bytes(b"SQLite format 3\x00" + bytes(100))
    with pytest.raises(InputError, match="not an output cache") as caught:
        cache_at(path, os.urandom(32)).lookup(cache_keys(b"k" * 32, ids(1)))
    assert str(path) in str(caught.value)


def test_keys_depend_on_the_secret_and_name_nobody(tmp_path):
    one, two = cache_keys(b"a" * 32, ids(50)), cache_keys(b"b" * 32, ids(50))
    one_set, two_set = set(map(tuple, one.tolist())), set(map(tuple, two.tolist()))
    assert len(one_set) == 50 and not one_set & two_set
    cache = cache_at(tmp_path / "o.bin", b"a" * 32)
    cache.put(one, rows(50, 1))
    data = (tmp_path / "o.bin").read_bytes()
    assert not any(x.encode() in data for x in ids(50))


def test_keys_sharing_their_first_word_are_told_apart(tmp_path):
    """Lookups search the first 64 bits and check the second: equal first words (a chance of
    about 1e-7 in a cache of two million) must still find the right record or none."""
    cache = cache_at(tmp_path / "o.bin", b"k" * 32)
    keys = np.array([[7, 1], [7, 3], [7, 2], [9, 1], [2, 5]], dtype="<u8")
    cache.put(keys, rows(5, 1))
    asked = np.array([[7, 2], [7, 3], [7, 1], [7, 4], [9, 1], [9, 2], [1, 1], [10, 0]], "<u8")
    found, outputs = cache_at(tmp_path / "o.bin", b"k" * 32).lookup(asked)
    assert found.tolist() == [True, True, True, False, True, False, False, False]
    expected = rows(5, 1)
    for i, j in ((0, 2), (1, 1), (2, 0), (4, 3)):
        assert np.array_equal(outputs[i], expected[j])


def test_keys_are_the_cbc_mac_of_the_padded_identifier():
    """Checked against OpenSSL's own CBC mode (zero IV: its last block is the CBC-MAC), one
    identifier at a time, for text, arrays and mixed lengths."""
    secret = os.urandom(32)
    aes_key = hashlib.blake2b(key=secret, digest_size=32, person=b"kinlink-out-v2").digest()

    def reference(identifier: str) -> bytes:
        raw = identifier.encode()
        message = raw + bytes(31 - len(raw)) + bytes([len(raw)])
        cbc = Cipher(algorithms.AES(aes_key), modes.CBC(bytes(16))).encryptor()
        return (cbc.update(message) + cbc.finalize())[16:]

    mixed = [*ids(3), "a", "", "x" * 31, "150102198001010000"[:15]]
    for batch in (ids(20), mixed, [""]):
        keys = cache_keys(secret, batch)
        assert [k.tobytes() for k in keys] == [reference(i) for i in batch]
    same = ids(20)
    assert np.array_equal(cache_keys(secret, np.array(same, "S18")), cache_keys(secret, same))
    assert cache_keys(secret, []).shape == (0, 2)


@pytest.mark.parametrize(
    "bad", [["x" * 32], ["15010219800101000\uff18"], ["ab\0"], np.array([1, 2])]
)
def test_keys_refuse_what_they_cannot_key_one_to_one(bad):
    with pytest.raises(ValueError):
        cache_keys(b"k" * 32, bad)


def test_a_cache_of_an_older_format_starts_afresh(tmp_path):
    path = tmp_path / "o.bin"
    path.write_bytes(FAMILY + b"\x00\x02" + (64).to_bytes(2, "big") + bytes(80 * 5))
    cache = cache_at(path, os.urandom(32))
    assert not cache.lookup(cache.keys(ids(2)))[0].any()
    cache.put(cache.keys(ids(2)), rows(2, 1))
    assert path.read_bytes().startswith(MAGIC)
    assert path.stat().st_size == 8 + SEGMENT.size + 2 * 80 + GCM_TAG  # the clear rows are gone
    assert cache_at(path, cache.secret).lookup(cache.keys(ids(2)))[0].all()


def test_rows_are_sealed_and_a_flipped_byte_names_the_file(tmp_path):
    secret, path = os.urandom(32), tmp_path / "o.bin"
    cache = cache_at(path, secret)
    cache.put(cache.keys(ids(10)), rows(10, 1))
    cache.put(cache.keys(ids(10, 10)), rows(10, 2))
    data = path.read_bytes()
    assert not any(row.tobytes()[:16] in data for row in np.vstack([rows(10, 1), rows(10, 2)]))
    for offset in (len(MAGIC) + 2, len(data) // 3, len(data) - 1):  # a count, a row, a GCM tag
        damaged = bytearray(data)
        damaged[offset] ^= 1
        path.write_bytes(bytes(damaged))
        with pytest.raises(DamagedFile, match="delete it") as caught:
            cache_at(path, secret).lookup(cache.keys(ids(1)))
        assert str(path) in str(caught.value)


def test_a_segment_of_another_cache_does_not_open(tmp_path):
    """Outputs of one (dataset, epoch) copied into another's file would be wrong outputs."""
    secret = os.urandom(32)
    one = OutputCache(tmp_path / "a.bin", secret, context="outputs/prison/e1", remedy="x")
    one.put(one.keys(ids(3)), rows(3, 1))
    (tmp_path / "b.bin").write_bytes((tmp_path / "a.bin").read_bytes())
    other = OutputCache(tmp_path / "b.bin", secret, context="outputs/prison/e2", remedy="x")
    with pytest.raises(DamagedFile):
        other.lookup(other.keys(ids(3)))
