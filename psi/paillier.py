"""Paillier encryption for the statistics protocols, with the encryption randomness of Damgård,
Jurik and Nielsen (DJN 2010, §4.2) and a fixed-base table, so that encrypting is a few dozen
modular multiplications instead of a full-length exponentiation.

Keys come from ``phe.generate_paillier_keypair`` (no prime generation here) and decryption is
``phe``'s CRT decryption: a ciphertext made here is an ordinary Paillier ciphertext, ``phe`` can
decrypt it and mix it with its own. Plaintexts are non-negative integers below ``n``. The scheme,
its security argument and the measured rates are in docs/paillier.md.
"""

from __future__ import annotations

import multiprocessing
import operator
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import gmpy2
import phe

from psi.errors import CryptoError, KinlinkError
from psi.oprf import cpu_count

DEFAULT_KEY_BITS = 2048
MIN_KEY_BITS = 2048  # production floor (about 112-bit security); tests pass ``min_bits`` lower
MAX_KEY_BITS = 8192  # bounds the work a peer's key can make us do
MIN_GENERATE_BITS = 1024  # smallest key ``generate`` makes: test keys only
DEFAULT_WINDOW = 10  # bits per fixed-base digit: 103 multiplications per 2048-bit encryption
CHUNK = 1024  # plaintexts per worker task: about half a second of work at 2048 bits
POOL_MIN = 2048  # smaller batches run in-process: starting workers costs about 0.5 s
KEY_VERSION = 1

Progress = Callable[[int], None]


class _FixedBase:
    """hs^a for short random a by a fixed-base comb: ``rows[i][d] = hs^(d·2^(w·i)) mod n²``, so
    hs^a is the product of one entry per w-bit digit of a: no squarings at all."""

    def __init__(self, n: int, hs: int, window: int):
        self.n = n
        self.nsquare = gmpy2.mpz(n * n)
        self.window = window
        self.exponent_bits = (n.bit_length() + 1) // 2  # ceil(|n|/2), as in DJN
        self.rows: list[list[Any]] = []
        base = gmpy2.mpz(hs)
        for low in range(0, self.exponent_bits, window):
            row = [gmpy2.mpz(1), base]  # the top row only as long as a's top digit needs
            for _ in range(2, 1 << min(window, self.exponent_bits - low)):
                row.append(row[-1] * base % self.nsquare)
            self.rows.append(row)
            base = row[-1] * base % self.nsquare

    def encrypt(self, m: int) -> int:
        """(1 + m·n) · hs^a mod n² with a uniform in [0, 2^ceil(|n|/2))."""
        acc = gmpy2.mpz(1 + m * self.n)  # (1+n)^m mod n², already reduced for 0 <= m < n
        a, nsquare = secrets.randbits(self.exponent_bits), self.nsquare
        mask = (1 << self.window) - 1
        for row in self.rows:
            digit = a & mask
            if digit:
                acc = acc * row[digit] % nsquare
            a >>= self.window
        return int(acc)


_worker_base: _FixedBase | None = None


def _init_worker(n: int, hs: int, window: int) -> None:
    """Pool initializer: each worker process builds the table once for the whole batch."""
    global _worker_base
    _worker_base = _FixedBase(n, hs, window)


def _encrypt_chunk(plaintexts: list[int]) -> list[int]:
    assert _worker_base is not None, "worker started without its table"
    return [_worker_base.encrypt(m) for m in plaintexts]


class PublicKey:
    """A Paillier public key ``n`` (generator ``1 + n``) with the DJN base ``hs = h^n mod n²``.

    ``encrypt`` trusts ``hs``, so only the key's owner (or whoever trusts it) should use it;
    ``rerandomize`` does not, and is what a party that did not make the key applies before it
    returns a ciphertext. The homomorphic helpers do not validate their inputs: ciphertexts from a
    peer go through ``ciphertexts_from_bytes`` first.
    """

    def __init__(self, n: int, hs: int, *, window: int = DEFAULT_WINDOW):
        if n < 3 or n % 2 == 0:
            raise CryptoError("Paillier key: n must be an odd integer greater than 2")
        if n.bit_length() > MAX_KEY_BITS:
            raise CryptoError(f"Paillier key: n has {n.bit_length()} bits, over {MAX_KEY_BITS}")
        if not 0 < hs < n * n or gmpy2.gcd(hs, n) != 1:
            raise CryptoError("Paillier key: hs must lie in (0, n²) and be prime to n")
        if not 1 <= window <= 12:
            raise ValueError("window must be between 1 and 12 bits")
        self.n = n
        self.nsquare = n * n
        self.hs = hs
        self.bits = n.bit_length()
        self.ciphertext_bytes = (self.nsquare.bit_length() + 7) // 8
        self.window = window
        self._pool: ProcessPoolExecutor | None = None
        self._pool_workers = 0

    def __repr__(self) -> str:
        return f"PublicKey(bits={self.bits}, n=0x{self.n:x}"[:48] + "...)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and (self.n, self.hs) == (other.n, other.hs)

    def __hash__(self) -> int:
        return hash((self.n, self.hs))

    @cached_property
    def _base(self) -> _FixedBase:
        return _FixedBase(self.n, self.hs, self.window)

    @cached_property
    def _phe(self) -> phe.PaillierPublicKey:
        return phe.PaillierPublicKey(self.n)

    # -- encryption ------------------------------------------------------------------------------
    def encrypt(
        self,
        plaintexts: Sequence[int],
        *,
        workers: int | None = None,
        progress: Progress | None = None,
    ) -> list[int]:
        """Encrypt a batch (0 <= m < n each, else ValueError). Batches of ``POOL_MIN`` or more
        run in a pool of ``workers`` processes (gmpy2 holds the GIL), which is kept for later
        batches under this key until ``close``; ``progress`` is told each chunk's size."""
        values = [self._plaintext(m, i) for i, m in enumerate(plaintexts)]
        workers = max(1, workers or cpu_count())
        if workers == 1 or len(values) < POOL_MIN:
            result = [self._base.encrypt(m) for m in values]
            if progress and values:
                progress(len(values))
            return result
        result = []
        chunks = [values[lo : lo + CHUNK] for lo in range(0, len(values), CHUNK)]
        for part in self._executor(workers).map(_encrypt_chunk, chunks):
            result.extend(part)
            if progress:
                progress(len(part))
        return result

    def encrypt_one(self, m: int) -> int:
        return self._base.encrypt(self._plaintext(m, 0))

    def close(self) -> None:
        """Stop the worker processes of earlier batches (they also stop with the interpreter)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool, self._pool_workers = None, 0

    def _executor(self, workers: int) -> ProcessPoolExecutor:
        if self._pool is None or self._pool_workers != workers:
            self.close()
            # spawn, not fork: the callers run gRPC and thread pools, which fork does not survive.
            self._pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.n, self.hs, self.window),
            )
            self._pool_workers = workers
        return self._pool

    def _plaintext(self, m: int, index: int) -> int:
        m = operator.index(m)  # a numpy integer would overflow in 1 + m·n
        if not 0 <= m < self.n:
            raise ValueError(f"plaintext {index} is outside [0, n)")
        return m

    # -- homomorphism ----------------------------------------------------------------------------
    def rerandomize(self, c: int) -> int:
        """c · r^n mod n² for a fresh uniform r in Z_n^*: the same plaintext, and a ciphertext
        distributed independently of how c was made. A full-length r, not hs^a: the party that
        rerandomizes must not rely on hs, which the key holder chose and nobody else can check."""
        while True:
            r = secrets.randbelow(self.n - 1) + 1
            if gmpy2.gcd(r, self.n) == 1:
                return int(c * gmpy2.powmod(r, self.n, self.nsquare) % self.nsquare)

    def add(self, a: int, b: int) -> int:
        """A ciphertext of the sum of the two plaintexts (mod n)."""
        return int(gmpy2.mpz(a) * b % self.nsquare)

    def sum(self, cs: Iterable[int]) -> int:
        """A ciphertext of the sum of all plaintexts (mod n). The empty sum is 1, the encryption
        of 0 with randomness 1: like every sum it must be rerandomized before it is sent, or its
        randomness tells the key holder which of its ciphertexts went into it."""
        nsquare = gmpy2.mpz(self.nsquare)
        acc = gmpy2.mpz(1)
        for c in cs:
            acc = acc * c % nsquare
        return int(acc)

    def mul_const(self, c: int, k: int) -> int:
        """A ciphertext of k times the plaintext (mod n), for 0 <= k < n."""
        k = operator.index(k)
        if not 0 <= k < self.n:
            raise ValueError("constant is outside [0, n)")
        return int(gmpy2.powmod(c, k, self.nsquare))

    # -- wire ------------------------------------------------------------------------------------
    def ciphertexts_to_bytes(self, cs: Sequence[int]) -> bytes:
        """Fixed-width (``ciphertext_bytes``) big-endian concatenation."""
        width, nsquare = self.ciphertext_bytes, self.nsquare
        if any(not 0 < c < nsquare for c in cs):
            raise ValueError("a ciphertext is outside (0, n²)")
        return b"".join(int(c).to_bytes(width, "big") for c in cs)

    def ciphertexts_from_bytes(self, data: bytes) -> list[int]:
        """Parse and validate ciphertexts from a peer: each must be a unit modulo n²."""
        width = self.ciphertext_bytes
        if len(data) % width:
            raise CryptoError(
                f"ciphertexts: {len(data)} bytes is not a multiple of {width} bytes per ciphertext"
            )
        view, n, result = memoryview(data), gmpy2.mpz(self.n), []
        product = gmpy2.mpz(1)  # one gcd for all: a prime factor of n divides it iff it divides a c
        for i in range(len(data) // width):
            c = int.from_bytes(view[i * width : (i + 1) * width], "big")
            if not 0 < c < self.nsquare:
                raise CryptoError(f"ciphertext {i} is outside (0, n²)")
            product = product * (c % n) % n
            result.append(c)
        if gmpy2.gcd(product, n) != 1:
            bad = next(i for i, c in enumerate(result) if gmpy2.gcd(c, n) != 1)
            raise CryptoError(f"ciphertext {bad} is not prime to n")
        return result

    def to_bytes(self) -> bytes:
        """``version (1) | len(n) (2, big-endian) | n | hs (ciphertext_bytes)``."""
        n_bytes = (self.bits + 7) // 8
        return (
            bytes([KEY_VERSION])
            + n_bytes.to_bytes(2, "big")
            + self.n.to_bytes(n_bytes, "big")
            + self.hs.to_bytes(self.ciphertext_bytes, "big")
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, min_bits: int = MIN_KEY_BITS) -> PublicKey:
        """Parse a peer's key. Checks what can be checked without the factors: the encoding, n odd
        and of ``min_bits`` to ``MAX_KEY_BITS`` bits, hs a unit below n²."""
        if len(data) < 3 or data[0] != KEY_VERSION:
            raise CryptoError("Paillier key: unknown encoding or version")
        n_bytes = int.from_bytes(data[1:3], "big")
        if n_bytes == 0 or len(data) < 3 + n_bytes:
            raise CryptoError("Paillier key: truncated")
        n = int.from_bytes(data[3 : 3 + n_bytes], "big")
        if n.bit_length() <= 8 * (n_bytes - 1):
            raise CryptoError("Paillier key: n has leading zero bytes")
        if not min_bits <= n.bit_length() <= MAX_KEY_BITS:
            raise CryptoError(
                f"Paillier key: n has {n.bit_length()} bits, outside [{min_bits}, {MAX_KEY_BITS}]"
            )
        width = ((n * n).bit_length() + 7) // 8
        if len(data) != 3 + n_bytes + width:
            raise CryptoError(f"Paillier key: {len(data)} bytes, expected {3 + n_bytes + width}")
        return cls(n, int.from_bytes(data[3 + n_bytes :], "big"))

    def to_phe(self) -> phe.PaillierPublicKey:
        """The same key for ``phe`` (whose ``encrypt`` uses a full-length r^n: the reference)."""
        return self._phe


class PrivateKey:
    """The key holder's side: ``phe``'s private key (p, q) and the public key with its hs."""

    def __init__(self, public: PublicKey, private: phe.PaillierPrivateKey):
        if private.public_key.n != public.n:
            raise CryptoError("Paillier private key does not match the public key")
        self.public = public
        self._private = private

    def __repr__(self) -> str:
        return f"PrivateKey(public={self.public!r})"

    def decrypt(self, c: int) -> int:
        """The plaintext in [0, n), by ``phe``'s CRT decryption."""
        if not 0 < c < self.public.nsquare:
            raise CryptoError("ciphertext is outside (0, n²)")
        return self._private.raw_decrypt(int(c))

    def decrypt_many(self, cs: Sequence[int]) -> list[int]:
        return [self.decrypt(c) for c in cs]

    def to_phe(self) -> phe.PaillierPrivateKey:
        return self._private


def generate(bits: int = DEFAULT_KEY_BITS, *, window: int = DEFAULT_WINDOW) -> PrivateKey:
    """A fresh key pair: ``phe`` key pairs are drawn until n is admissible for DJN (p ≡ q ≡ 3
    mod 4, gcd(p-1, q-1) = 2, so that h = -x² generates the Jacobi-symbol-1 subgroup), then
    hs = h^n mod n² for a random unit x. About six draws on average."""
    if bits % 2 or not MIN_GENERATE_BITS <= bits <= MAX_KEY_BITS:
        raise ValueError(f"key size must be even and within [{MIN_GENERATE_BITS}, {MAX_KEY_BITS}]")
    while True:
        public, private = phe.generate_paillier_keypair(n_length=bits)
        p, q = private.p, private.q
        if p % 4 == 3 and q % 4 == 3 and gmpy2.gcd(p - 1, q - 1) == 2:
            break
    n = public.n
    while True:
        x = secrets.randbelow(n - 1) + 1
        if gmpy2.gcd(x, n) == 1:
            break
    hs = int(gmpy2.powmod(-x * x % n, n, n * n))
    return PrivateKey(PublicKey(n, hs, window=window), private)


# -- packing ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Packing:
    """Several non-negative counters in one plaintext. Slot ``s`` of plaintext ``j`` (bits
    ``s·slot_bits`` upward) holds group ``j·slots_per_plaintext + s``. With every value at most
    ``max_value`` and at most ``max_count`` elements summed, a slot's total is at most
    ``max_value·max_count < 2^slot_bits``, so no slot carries into the next, and the top slot
    ends below bit ``key_bits - 1``, so a plaintext never reaches n."""

    groups: int
    max_value: int
    max_count: int
    key_bits: int
    slot_bits: int = field(init=False)
    slots_per_plaintext: int = field(init=False)
    plaintexts_per_element: int = field(init=False)

    def __post_init__(self) -> None:
        for name in ("groups", "max_value", "max_count", "key_bits"):
            try:
                object.__setattr__(self, name, operator.index(getattr(self, name)))
            except TypeError:
                raise ValueError(f"packing: {name} must be an integer") from None
        if self.groups < 1 or self.max_count < 1 or self.max_value < 0:
            raise ValueError("packing: need groups >= 1, max_count >= 1 and max_value >= 0")
        slot_bits = max(1, (self.max_value * self.max_count).bit_length())
        slots = (self.key_bits - 1) // slot_bits
        if slots < 1:
            raise ValueError(
                f"packing: a total up to {self.max_value}·{self.max_count} needs {slot_bits} bits,"
                f" more than a {self.key_bits}-bit key's plaintext holds"
            )
        object.__setattr__(self, "slot_bits", slot_bits)
        object.__setattr__(self, "slots_per_plaintext", slots)
        object.__setattr__(self, "plaintexts_per_element", -(-self.groups // slots))

    @classmethod
    def for_bounds(cls, groups: int, max_value: int, max_count: int, key_bits: int) -> Packing:
        """The layout for ``groups`` counters, each summing at most ``max_count`` values in
        [0, max_value], under a key of ``key_bits`` (``PublicKey.bits``). ValueError if a
        single slot cannot fit."""
        return cls(groups, max_value, max_count, key_bits)

    def encode(self, group: int, value: int) -> list[int]:
        """One element's plaintexts: ``value`` in its group's slot, zero elsewhere."""
        group, value = operator.index(group), operator.index(value)  # numpy shifts would wrap
        if not 0 <= group < self.groups:
            raise ValueError(f"group {group} is outside [0, {self.groups})")
        if not 0 <= value <= self.max_value:
            raise ValueError(f"value {value} is outside [0, {self.max_value}]")
        plaintexts = [0] * self.plaintexts_per_element
        index, slot = divmod(group, self.slots_per_plaintext)
        plaintexts[index] = value << (slot * self.slot_bits)
        return plaintexts

    def encode_many(self, groups: Sequence[int], values: Sequence[int]) -> list[int]:
        """All elements' plaintexts in one flat list, element-major: element e's plaintext j is
        at ``e·plaintexts_per_element + j``. At most ``max_count`` elements."""
        if len(groups) != len(values):
            raise ValueError("packing: groups and values differ in number")
        if len(values) > self.max_count:
            raise ValueError(f"packing: {len(values)} elements, over max_count {self.max_count}")
        flat: list[int] = []
        for group, value in zip(groups, values, strict=True):
            flat.extend(self.encode(group, value))
        return flat

    def decode(self, plaintexts: Sequence[int]) -> list[int]:
        """Per-group totals from the decrypted sums, one per plaintext position. A set bit above
        the used slots (bounds violated, or a sum not made as agreed) raises CryptoError."""
        if len(plaintexts) != self.plaintexts_per_element:
            raise ValueError(
                f"packing: {len(plaintexts)} plaintexts, expected {self.plaintexts_per_element}"
            )
        mask, totals = (1 << self.slot_bits) - 1, []
        for j, plaintext in enumerate(plaintexts):
            used = min(self.slots_per_plaintext, self.groups - j * self.slots_per_plaintext)
            if not 0 <= plaintext < 1 << (used * self.slot_bits):
                raise CryptoError(f"decrypted sum {j} overflows its {used} slots")
            totals.extend((plaintext >> (s * self.slot_bits)) & mask for s in range(used))
        return totals

    def to_dict(self) -> dict[str, int]:
        return {
            "groups": self.groups,
            "max_value": self.max_value,
            "max_count": self.max_count,
            "key_bits": self.key_bits,
            "slot_bits": self.slot_bits,
            "slots_per_plaintext": self.slots_per_plaintext,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Packing:
        """Rebuild from ``to_dict``; the derived fields, if present, must agree."""
        try:
            packing = cls(data["groups"], data["max_value"], data["max_count"], data["key_bits"])
        except (KeyError, ValueError) as exc:
            raise KinlinkError(f"invalid packing: {exc}") from None
        for name in ("slot_bits", "slots_per_plaintext"):
            if name in data and data[name] != getattr(packing, name):
                raise KinlinkError(f"invalid packing: {name} does not follow from the bounds")
        return packing
