"""Aggregate statistics without identities: PSI-cardinality and intersection-sum(-with-cardinality).

The protocols of Ion et al., "On Deploying Secure Computing: Private Intersection-Sum-with-
Cardinality" (Google's Private Join and Compute), over ristretto255 and Paillier. Identifiers
travel only as H(x) raised to secret per-session scalars (commutative blinding: a·(b·H(x)) =
b·(a·H(x))), each set shuffled by the party that can link it, so equal identifiers meet as equal
doubly-blinded elements that neither party can trace back. docs/statistics.md gives the messages,
who learns what, and the costs.

* **Cardinality.** The node sends b·H(y) shuffled; the client sends a·H(x) shuffled; the node
  returns b·(a·H(x)) re-shuffled; the client computes a·(b·H(y)) and counts equal rows. The client
  learns |X ∩ Y| (and |Y|), the node |X|.
* **Intersection-sum.** The node sends b·H(y) shuffled; the client returns a·b·H(y) re-shuffled
  and pairs (a·H(x), Enc(t_x)) shuffled; the node computes b·a·H(x), keeps the pairs whose element
  is in the re-blinded set, sums their ciphertexts homomorphically and re-randomises the sum. The
  client (the key owner) learns the sum and |X ∩ Y|, the node |X ∩ Y|.
* **Grouped sums.** Intersection-sum with several counters packed into each plaintext
  (``SumLayout``), so one run gives every group's total and count.

Everything here is pure: arrays and bytes in, arrays and bytes out, chunk by chunk, no sockets.
Scalars are fresh per session (``Blinder``), never an OPRF table key, and the hash-to-group domain
separation tag ``DST`` is this protocol's own, so elements of one protocol never equal another's.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from psi.errors import CryptoError
from psi.oprf import Oprf
from psi.paillier import Packing, PrivateKey, PublicKey
from psi.suites import DEFAULT_SUITE, Suite

DST = b"kinlink-stats-v1"

CARDINALITY = "cardinality"
INTERSECTION_SUM = "intersection_sum"
GROUPED_SUM = "grouped_sum"
PROTOCOLS = (CARDINALITY, INTERSECTION_SUM, GROUPED_SUM)
# The largest value one element may add to a sum: 63 bits, so that a million of them (83 bits)
# pack in a slot of any key the protocols allow. Days, yuan and counts stay far below it.
MAX_VALUE = 2**63 - 1


# -- shuffling -----------------------------------------------------------------------------------
def permutation(n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` that no party can predict.

    numpy's ``Generator.permutation`` (Fisher-Yates with unbiased bounded integers) driven by
    Philox keyed with 128 fresh bits from the operating system's CSPRNG (``secrets``), one key per
    shuffle. Nobody ever sees the generator's outputs, only rows in the order they give, and a
    128-bit key leaves no seed to guess; numpy's default ``PCG64`` would do as well, Philox is
    chosen for being a keyed block-cipher-like counter generator.
    """
    return np.random.Generator(np.random.Philox(secrets.randbits(128))).permutation(n)


def shuffled(rows: np.ndarray) -> np.ndarray:
    """``rows`` in a secret random order (a copy)."""
    return rows[permutation(len(rows))]


# -- blinding ------------------------------------------------------------------------------------
class Blinder:
    """One party's secret exponent for one session: k·H(x) and k·E over whole batches.

    The scalar is drawn fresh for each session and lives only in memory: reusing it across
    sessions would let a party link the same person's elements between runs. Batches run on the
    OPRF thread pool (curve operations release the GIL)."""

    def __init__(self, suite: str | Suite = DEFAULT_SUITE, *, workers: int | None = None):
        self._oprf = Oprf(suite, workers=workers)
        self.suite = self._oprf.suite
        self._scalar = self.suite.random_scalars(1)

    def hash_blind(self, inputs: Sequence[bytes]) -> np.ndarray:
        """k·H(x) for each input, in input order: (n, Ne)."""

        def work(lo: int, hi: int) -> np.ndarray:
            elements = self.suite.hash_to_group(inputs[lo:hi], DST)
            return self.suite.scalar_mult(self._scalar, elements)

        return self._oprf.map_rows(work, len(inputs), self.suite.element_size, None)

    def blind(self, elements: np.ndarray) -> np.ndarray:
        """k·E for each received element; a non-canonical encoding or the identity raises
        ``CryptoError`` naming the row, before anything is returned."""
        return self._oprf.blind_evaluate_batch(self._scalar[0].tobytes(), elements)


# -- comparing sets of elements ------------------------------------------------------------------
def _keys(rows: np.ndarray) -> np.ndarray:
    """Each row as one opaque numpy scalar, so that sorting and search run in C."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    if rows.ndim != 2:
        raise CryptoError(f"expected rows of elements, got an array of shape {rows.shape}")
    return rows.view(np.dtype((np.void, rows.shape[1]))).ravel()


class ElementSet:
    """A set of group elements, sorted once; membership of a batch by binary search."""

    def __init__(self, rows: np.ndarray):
        self._sorted = np.sort(_keys(rows))

    def __len__(self) -> int:
        return len(self._sorted)

    def contains(self, rows: np.ndarray) -> np.ndarray:
        """A bool per row: is it in the set?"""
        keys = _keys(rows)
        if not len(self._sorted):
            return np.zeros(len(keys), dtype=bool)
        at = np.minimum(np.searchsorted(self._sorted, keys), len(self._sorted) - 1)
        return self._sorted[at] == keys

    def duplicates(self) -> int:
        """Rows equal to the row before them in sorted order."""
        return int((self._sorted[1:] == self._sorted[:-1]).sum())


def require_distinct(rows: np.ndarray, whose: str) -> None:
    """Refuse a set with repeated elements: a repeat would count twice in a sum and could pad a
    set up to a minimum size without adding people."""
    repeated = ElementSet(rows).duplicates()
    if repeated:
        raise CryptoError(f"{whose} holds {repeated} repeated elements; each must be distinct")


def count_common(mine: np.ndarray, theirs: np.ndarray) -> int:
    """|mine ∩ theirs| for doubly-blinded elements (the client's last step of cardinality)."""
    return int(ElementSet(theirs).contains(mine).sum())


def node_set_chunks(
    blinder: Blinder, people: Sequence[str], per_chunk: int
) -> Iterator[np.ndarray]:
    """The node's first message, b·H(y) for its whole set, in a secret order, ``per_chunk`` rows
    at a time: the identifiers are shuffled before hashing, so each chunk streams as soon as it
    is blinded and the order says nothing about the register's."""
    order = permutation(len(people))
    for lo in range(0, len(people), per_chunk):
        yield blinder.hash_blind([people[i].encode() for i in order[lo : lo + per_chunk]])


# -- sums ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SumLayout:
    """What one element's plaintexts hold in an intersection-sum: its value, or a 1 that counts
    it, or both, in the slot of its group, packed (``psi.paillier.Packing``) so that several
    counters share one plaintext and one run gives every group's totals.

    Slots: with values and counts, group g's sum is slot 2g and its count slot 2g + 1; with only
    one of them, slot g. Every slot is sized for ``max_value`` times the number of elements, so a
    sum over any subset of the client's elements cannot overflow into its neighbour.
    """

    groups: int
    values: bool  # each element adds its value to its group's sum
    counts: bool  # each element adds 1 to its group's count
    packing: Packing

    @classmethod
    def plan(
        cls, *, groups: int, max_value: int | None, elements: int, counts: bool, key_bits: int
    ) -> SumLayout:
        """``max_value`` None: counts only. Plain intersection-sum is one group without counts
        (the node reports the intersection size itself)."""
        values = max_value is not None
        if not (values or counts):
            raise CryptoError("a sum needs values, counts or both")
        slots = groups * (values + counts)
        bound = max(max_value or 0, 1)
        packing = Packing.for_bounds(slots, bound, max(elements, 1), key_bits)
        return cls(groups, values, counts, packing)

    @property
    def per_element(self) -> int:
        """Ciphertexts per element."""
        return self.packing.plaintexts_per_element

    def encode(self, groups: Sequence[int], values: Sequence[int] | None) -> list[int]:
        """The plaintexts of every element, element-major (``per_element`` each)."""
        width = self.values + self.counts
        parts = []
        if self.values:
            if values is None:
                raise CryptoError("this layout sums values, and none were given")
            parts.append(self.packing.encode_many([width * g for g in groups], values))
        if self.counts:
            slots = [width * g + self.values for g in groups]
            parts.append(self.packing.encode_many(slots, [1] * len(groups)))
        return [sum(p) for p in zip(*parts, strict=True)]

    def decode(self, plaintexts: Sequence[int]) -> tuple[list[int] | None, list[int] | None]:
        """(per-group sums or None, per-group counts or None) from the decrypted totals."""
        slots = self.packing.decode(plaintexts)
        width = self.values + self.counts
        sums = slots[0::width] if self.values else None
        counts = slots[self.values :: width] if self.counts else None
        return sums, counts


def encrypt_pairs(
    blinder: Blinder,
    public: PublicKey,
    layout: SumLayout,
    ids: Sequence[bytes],
    groups: Sequence[int],
    values: Sequence[int] | None,
) -> tuple[np.ndarray, list[int]]:
    """The client's pairs (a·H(x), Enc(t_x)), shuffled together: (n, Ne) elements and
    ``n * layout.per_element`` ciphertexts, element-major. Shuffling before encrypting costs
    nothing and means no ciphertext ever exists in input order."""
    order = permutation(len(ids))
    plaintexts = layout.encode(
        [groups[i] for i in order], None if values is None else [values[i] for i in order]
    )
    elements = blinder.hash_blind([ids[i] for i in order])
    return elements, public.encrypt(plaintexts)


def pair_size(public: PublicKey, per_element: int, element_size: int) -> int:
    """Bytes of one pair on the wire."""
    return element_size + per_element * public.ciphertext_bytes


def pair_chunks(
    elements: np.ndarray,
    ciphertexts: Sequence[int],
    public: PublicKey,
    per_element: int,
    per_chunk: int,
) -> Iterator[tuple[np.ndarray, bytes]]:
    """The pairs ``per_chunk`` at a time: (elements, their ciphertexts as fixed-width bytes)."""
    for lo in range(0, len(elements), per_chunk):
        hi = min(lo + per_chunk, len(elements))
        yield (
            elements[lo:hi],
            public.ciphertexts_to_bytes(ciphertexts[lo * per_element : hi * per_element]),
        )


class SumAccumulator:
    """The node's side of intersection-sum, one chunk of pairs at a time: b·(a·H(x)), membership
    in the client's re-blinded copy of the node's set, and the homomorphic sum of the matching
    ciphertexts. It keeps one running sum per plaintext position, never the client's ciphertexts.
    """

    def __init__(self, blinder: Blinder, node_set: ElementSet, public: PublicKey, per_element: int):
        self.blinder, self.node_set, self.public = blinder, node_set, public
        self.per_element = per_element
        self.sums = [public.sum([])] * per_element  # encryptions of 0 (randomness 1)
        self.matched = 0
        self.received = 0
        self._seen: list[np.ndarray] = []

    def add(self, elements: np.ndarray, ciphertexts: bytes) -> None:
        """Fold one chunk of pairs in; ``CryptoError`` (naming the row or ciphertext) for an
        invalid element or ciphertext, before anything of the chunk counts."""
        values = self.public.ciphertexts_from_bytes(ciphertexts)
        if len(values) != len(elements) * self.per_element:
            raise CryptoError(
                f"{len(values)} ciphertexts for {len(elements)} elements of {self.per_element} each"
            )
        doubled = self.blinder.blind(elements)
        hits = np.flatnonzero(self.node_set.contains(doubled))
        rows = hits.tolist()
        self.sums = [
            self.public.sum([total, *(values[i * self.per_element + k] for i in rows)])
            for k, total in enumerate(self.sums)
        ]
        self.matched += len(hits)
        self.received += len(elements)
        self._seen.append(doubled)

    def result(self) -> tuple[int, bytes]:
        """(|X ∩ Y|, the sums re-randomised, as fixed-width bytes). Without re-randomisation the
        client, who knows every ciphertext it sent, could find which subset was multiplied (and
        an empty sum would be the constant 1)."""
        if self._seen:
            require_distinct(np.concatenate(self._seen), "the client's set")
        return self.matched, self.public.ciphertexts_to_bytes(
            [self.public.rerandomize(s) for s in self.sums]
        )


def decrypt_sums(
    private: PrivateKey, layout: SumLayout, data: bytes
) -> tuple[list[int] | None, list[int] | None]:
    """The client's last step: (per-group sums, per-group counts) from the node's answer."""
    ciphertexts = private.public.ciphertexts_from_bytes(data)
    if len(ciphertexts) != layout.per_element:
        raise CryptoError(f"{len(ciphertexts)} sums received; {layout.per_element} expected")
    return layout.decode(private.decrypt_many(ciphertexts))
