"""``expand_message_xmd`` of RFC 9380 §5.3.1, the hashing step every suite's HashToGroup and
HashToScalar build on. The padded prefix is hashed once per DST and copied per message, so batches
pay only for the bytes that differ; ``expand_message_xmd_batch`` runs many messages with everything
they share prepared once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from functools import lru_cache

from psi.errors import CryptoError

HashFactory = Callable[[], "hashlib._Hash"]


def _i2osp(value: int, length: int) -> bytes:
    return value.to_bytes(length, "big")


@lru_cache(maxsize=64)
def _prepared(hash_name: str, dst: bytes, length: int) -> tuple[object, bytes, int]:
    """The hash state after Z_pad, the DST' suffix and ell for one (hash, DST, length)."""
    if len(dst) > 255:
        raise CryptoError("expand_message_xmd: DST longer than 255 bytes")
    proto = hashlib.new(hash_name)
    digest_size, block_size = proto.digest_size, proto.block_size
    ell = -(-length // digest_size)
    if ell > 255 or length > 65535:
        raise CryptoError("expand_message_xmd: requested output too long")
    dst_prime = dst + _i2osp(len(dst), 1)
    proto.update(bytes(block_size))
    return proto, dst_prime, ell


def expand_message_xmd(msg: bytes, dst: bytes, length: int, hash_name: str = "sha512") -> bytes:
    """RFC 9380 §5.3.1: ``length`` uniform bytes from ``msg`` under the tag ``dst``."""
    proto, dst_prime, ell = _prepared(hash_name, dst, length)
    h0 = proto.copy()  # type: ignore[attr-defined]
    h0.update(msg + _i2osp(length, 2) + b"\x00" + dst_prime)
    b0 = h0.digest()
    out = b_i = hashlib.new(hash_name, b0 + b"\x01" + dst_prime).digest()
    for i in range(2, ell + 1):
        b_i = hashlib.new(
            hash_name, bytes(x ^ y for x, y in zip(b0, b_i, strict=True)) + _i2osp(i, 1) + dst_prime
        ).digest()
        out += b_i
    return out[:length]


def expand_message_xmd_batch(
    msgs: Sequence[bytes], dst: bytes, length: int, hash_name: str = "sha512"
) -> bytes:
    """``expand_message_xmd`` of each message, concatenated (``length`` bytes per message).

    When one digest covers ``length`` (ell = 1: 64 bytes from SHA-512, what hash_to_ristretto255
    asks for) the loop is the two hashes of the RFC with all constant parts bound once; otherwise it
    is the element-by-element function."""
    proto, dst_prime, ell = _prepared(hash_name, dst, length)
    if ell != 1:
        return b"".join(expand_message_xmd(m, dst, length, hash_name) for m in msgs)
    copy = proto.copy  # type: ignore[attr-defined]
    new = getattr(hashlib, hash_name, None) or (lambda data: hashlib.new(hash_name, data))
    suffix = _i2osp(length, 2) + b"\x00" + dst_prime  # after msg in b_0
    tail = b"\x01" + dst_prime  # after b_0 in b_1

    def one(msg: bytes) -> bytes:
        h0 = copy()
        h0.update(msg + suffix)
        return new(h0.digest() + tail).digest()[:length]

    return b"".join(map(one, msgs))
