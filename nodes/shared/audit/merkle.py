"""The Merkle tree of RFC 9162 §2.1 (Certificate Transparency 2.0), SHA-256.

A log commits to its entries with one 32-byte root; a signed root (tree head) then pins every
entry before it. Inclusion proofs (§2.1.3) show one entry is in a tree of a given size; consistency
proofs (§2.1.4) show a larger tree only appends to a smaller one, so a log cannot rewrite its past
without the old and new heads disagreeing.

Functions take *leaf hashes* (``leaf_hash(data)``), not entries, so that callers hash each entry
once. Generation follows the RFC's recursive definitions; ``MerkleTree`` keeps every complete
subtree so that the MTH of each aligned power-of-two range the recursion asks for is a look-up
and a proof for any earlier size costs O(log² n), not O(n). Verification follows §2.1.3.2 and
§2.1.4.2 step by step. ``Frontier`` is the O(log n) right edge a writer needs to sign the current
root without reading the whole log.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) = HASH()


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = HASH(0x00 || d): the prefix keeps a leaf from passing for an inner node."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """HASH(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1): where the RFC splits D[n]."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """Leaf hashes and every complete subtree above them; grows by ``append``."""

    def __init__(self, leaves: Iterable[bytes] = ()):
        # levels[h] holds the hashes of the complete subtrees of 2**h leaves, concatenated.
        self._levels: list[bytearray] = [bytearray()]
        for leaf in leaves:
            self.append(leaf)

    def __len__(self) -> int:
        return len(self._levels[0]) // HASH_SIZE

    def append(self, leaf: bytes) -> None:
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf)}")
        index, height = len(self), 0
        self._levels[0] += leaf
        while index & 1:  # this leaf completed a subtree one level up
            if height + 1 == len(self._levels):
                self._levels.append(bytearray())
            self._levels[height + 1] += node_hash(
                self._node(height, index - 1), self._node(height, index)
            )
            index >>= 1
            height += 1

    def _node(self, height: int, index: int) -> bytes:
        return bytes(self._levels[height][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _mth(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]). The RFC's recursion only ever splits at powers of two, so every range it
        reaches starts at a multiple of its left part's size and complete ones are stored."""
        n = hi - lo
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0:
            return self._node(n.bit_length() - 1, lo // n)
        k = _split(n)
        return node_hash(self._mth(lo, lo + k), self._mth(lo + k, hi))

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= len(self):
            raise ValueError(f"tree size {size} is outside 0..{len(self)}")

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        size = len(self) if size is None else size
        self._check_size(size)
        return self._mth(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(m, D[n]) of RFC 9162 §2.1.3.1, for leaf ``index`` in the tree of ``size``."""
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of size {size}")
        return self._path(index, 0, size)

    def _path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*self._path(m, lo, lo + k), self._mth(lo + k, hi)]
        return [*self._path(m - k, lo + k, hi), self._mth(lo, lo + k)]

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """PROOF(m, D[n]) of RFC 9162 §2.1.4.1 from size ``old`` to ``new``; empty when
        ``old`` is 0 or equals ``new`` (the RFC defines proofs for 0 < m < n)."""
        self._check_size(new)
        if not 0 <= old <= new:
            raise ValueError(f"no consistency proof from size {old} to size {new}")
        if old == 0:
            return []
        return self._subproof(old, 0, new, True)

    def _subproof(self, m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if whole else [self._mth(lo, hi)]
        k = _split(n)
        if m <= k:
            return [*self._subproof(m, lo, lo + k, whole), self._mth(lo + k, hi)]
        return [*self._subproof(m - k, lo + k, hi, False), self._mth(lo, lo + k)]


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` show ``leaf`` at ``index`` in the tree ``root``?"""
    if index >= size:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and hmac.compare_digest(r, root)


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: does ``proof`` show the tree ``new_root`` of ``new`` leaves appends
    to the tree ``old_root`` of ``old`` leaves? Equal sizes need equal roots and no proof; the
    empty tree (whose root is ``EMPTY_ROOT``) is a prefix of every tree."""
    if old > new:
        return False
    if old == new:
        return not proof and hmac.compare_digest(old_root, new_root)
    if old == 0:
        return not proof and hmac.compare_digest(old_root, EMPTY_ROOT)
    if not proof:
        return False
    path = [old_root, *proof] if old & (old - 1) == 0 else list(proof)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return hmac.compare_digest(fr, old_root) and hmac.compare_digest(sr, new_root) and sn == 0


class Frontier:
    """The roots of the complete subtrees that cover leaves [0, size), left to right: one per
    set bit of ``size``. Enough to append and to compute the root, in O(log n) space."""

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()):
        if size < 0 or len(hashes) != size.bit_count():
            raise ValueError(f"a frontier of size {size} has {size.bit_count()} hashes")
        self.size = size
        self.hashes = list(hashes)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> Frontier:
        hashes = [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]
        if len(data) % HASH_SIZE:
            raise ValueError("a frontier is a whole number of hashes")
        return cls(size, hashes)

    def to_bytes(self) -> bytes:
        return b"".join(self.hashes)

    def append(self, leaf: bytes) -> None:
        node, carry = leaf, self.size
        while carry & 1:  # merge with each complete subtree of the same height
            node = node_hash(self.hashes.pop(), node)
            carry >>= 1
        self.hashes.append(node)
        self.size += 1

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        root = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            root = node_hash(left, root)
        return root
