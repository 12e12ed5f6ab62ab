"""RFC 9497 OPRF mode (0x00): DeriveKeyPair, Blind, BlindEvaluate, Finalize and Evaluate.

Each function exists element by element, exactly as the RFC writes it, and in batch over numpy
arrays, where inputs are split into chunks that run on all cores (suite operations release the GIL)
and the blinds of a chunk are inverted together by Montgomery's trick. Batch and element-by-element
results are identical; the tests hold them to each other and to the RFC's vectors.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from psi.errors import CryptoError
from psi.suites import DEFAULT_SUITE, Suite, get_suite

MODE_OPRF = 0x00
CHUNK = 1024  # rows per task; 256 and 512 measured no faster on 2 cores (docs/oprf.md)

Progress = Callable[[int], None]


def _i2osp(value: int, length: int) -> bytes:
    return value.to_bytes(length, "big")


def cpu_count() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kinlink-oprf")


@dataclass(frozen=True)
class KeyPair:
    """An OPRF server key; ``repr`` never shows the secret."""

    sk: bytes = field(repr=False)
    pk: bytes


class Oprf:
    """One ciphersuite in OPRF mode. ``workers`` bounds the cores used by batch calls."""

    def __init__(self, suite: str | Suite = DEFAULT_SUITE, *, workers: int | None = None):
        self.suite: Suite = get_suite(suite) if isinstance(suite, str) else suite
        self.workers = max(1, workers or cpu_count())
        self.context = b"OPRFV1-" + _i2osp(MODE_OPRF, 1) + b"-" + self.suite.name.encode()
        self._dst_group = b"HashToGroup-" + self.context
        self._dst_derive = b"DeriveKeyPair" + self.context
        self._hash = getattr(hashlib, self.suite.hash_name)

    # -- RFC 9497 §3.2.1 -------------------------------------------------------------------------
    def derive_key_pair(self, seed: bytes, info: bytes) -> KeyPair:
        """Deterministic key from a 32-byte seed and public info (dataset and epoch, for us)."""
        if len(seed) != 32:
            raise CryptoError("DeriveKeyPair needs a 32-byte seed")
        derive_input = seed + _i2osp(len(info), 2) + info
        for counter in range(256):
            sk = self.suite.hash_to_scalar(derive_input + _i2osp(counter, 1), self._dst_derive)
            if not self.suite.scalar_is_zero(sk):
                return KeyPair(sk, self.suite.scalar_mult_base(sk))
        raise CryptoError("DeriveKeyPairError: no non-zero scalar in 256 attempts")

    # -- RFC 9497 §3.3.1, one element -----------------------------------------------------------
    def blind(self, input: bytes, blind: bytes | None = None) -> tuple[bytes, bytes]:
        """(blind, blindedElement); ``blind`` is only given by tests reproducing the vectors."""
        scalar = self._one(blind) if blind is not None else self.suite.random_scalars(1)
        element = self.suite.hash_to_group([input], self._dst_group)
        return scalar[0].tobytes(), self.suite.scalar_mult(scalar, element)[0].tobytes()

    def blind_evaluate(self, sk: bytes, blinded: bytes) -> bytes:
        return self.suite.scalar_mult(self._one(sk), self._one(blinded))[0].tobytes()

    def finalize(self, input: bytes, blind: bytes, evaluated: bytes) -> bytes:
        inverse = self.suite.invert_scalars(self._one(blind))
        unblinded = self.suite.scalar_mult(inverse, self._one(evaluated))[0].tobytes()
        return self._finalize_hash(input, unblinded)

    def evaluate(self, sk: bytes, input: bytes) -> bytes:
        """The server computing F(sk, input) itself (RFC 9497 §3.3.1 Evaluate): table building."""
        element = self.suite.hash_to_group([input], self._dst_group)
        issued = self.suite.scalar_mult(self._one(sk), element)[0].tobytes()
        return self._finalize_hash(input, issued)

    # -- batches ---------------------------------------------------------------------------------
    def blind_batch(
        self, inputs: Sequence[bytes], *, progress: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Random blinds (n, Ns) and blinded elements (n, Ne) for many inputs."""
        blinds = np.empty((len(inputs), self.suite.scalar_size), dtype=np.uint8)

        def work(lo: int, hi: int) -> np.ndarray:
            blinds[lo:hi] = self.suite.random_scalars(hi - lo)  # drawn on the worker, too
            elements = self.suite.hash_to_group(inputs[lo:hi], self._dst_group)
            return self.suite.scalar_mult(blinds[lo:hi], elements)

        return blinds, self.map_rows(work, len(inputs), self.suite.element_size, progress)

    def blind_evaluate_batch(
        self, sk: bytes, blinded: np.ndarray, *, progress: Progress | None = None
    ) -> np.ndarray:
        """The node's side: sk·B per blinded element; bad encodings are rejected unevaluated."""
        key = self._one(sk)
        blinded = np.ascontiguousarray(blinded, dtype=np.uint8)
        return self.map_rows(
            lambda lo, hi: self.suite.scalar_mult(key, blinded[lo:hi]),
            len(blinded),
            self.suite.element_size,
            progress,
        )

    def finalize_batch(
        self,
        inputs: Sequence[bytes],
        blinds: np.ndarray,
        evaluated: np.ndarray,
        *,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """OPRF outputs (n, Nh) from the node's evaluations; one scalar inversion per chunk."""
        return self._finalize(inputs, blinds, evaluated, True, progress)

    def invert_blinds(self, blinds: np.ndarray) -> np.ndarray:
        """The blinds' inverses, for ``finalize_inverted`` when one set of blinds serves several
        nodes: inverting once instead of once per node."""
        return self.map_rows(
            lambda lo, hi: self.suite.invert_scalars(blinds[lo:hi]),
            len(blinds),
            self.suite.scalar_size,
            None,
        )

    def finalize_inverted(
        self,
        inputs: Sequence[bytes],
        inverses: np.ndarray,
        evaluated: np.ndarray,
        *,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """``finalize_batch`` given ``invert_blinds(blinds)``; identical outputs."""
        return self._finalize(inputs, inverses, evaluated, False, progress)

    def _finalize(
        self,
        inputs: Sequence[bytes],
        scalars: np.ndarray,
        evaluated: np.ndarray,
        invert: bool,
        progress: Progress | None,
    ) -> np.ndarray:
        if not len(inputs) == len(scalars) == len(evaluated):
            raise CryptoError("finalize: inputs, blinds and evaluated elements differ in number")
        evaluated = np.ascontiguousarray(evaluated, dtype=np.uint8)

        def work(lo: int, hi: int) -> np.ndarray:
            inverses = self.suite.invert_scalars(scalars[lo:hi]) if invert else scalars[lo:hi]
            unblinded = self.suite.scalar_mult(inverses, evaluated[lo:hi])
            return self._finalize_hashes(inputs[lo:hi], unblinded)

        return self.map_rows(work, len(inputs), self.suite.output_size, progress)

    def evaluate_batch(
        self, sk: bytes, inputs: Sequence[bytes], *, progress: Progress | None = None
    ) -> np.ndarray:
        """F(sk, x) for many inputs held by the server itself (building a labelled table)."""
        key = self._one(sk)

        def work(lo: int, hi: int) -> np.ndarray:
            chunk = inputs[lo:hi]
            issued = self.suite.scalar_mult(key, self.suite.hash_to_group(chunk, self._dst_group))
            return self._finalize_hashes(chunk, issued)

        return self.map_rows(work, len(inputs), self.suite.output_size, progress)

    # -- helpers ---------------------------------------------------------------------------------
    def _finalize_hash(self, input: bytes, element: bytes) -> bytes:
        if len(input) > 0xFFFF:
            raise CryptoError("OPRF input longer than 65535 bytes")
        data = _i2osp(len(input), 2) + input + _i2osp(len(element), 2) + element + b"Finalize"
        return hashlib.new(self.suite.hash_name, data).digest()

    def _finalize_hashes(self, inputs: Sequence[bytes], elements: np.ndarray) -> np.ndarray:
        """``_finalize_hash`` over a chunk, written for speed. Inputs of one length (identity
        numbers) are laid out as rows of one array, every row ``I2OSP(len(x), 2) || x ||
        I2OSP(Ne, 2) || element || "Finalize"``, so the loop is only the hash of each row."""
        n = len(inputs)
        if n != len(elements):
            raise CryptoError("finalize: inputs and elements differ in number")
        lengths = set(map(len, inputs))
        if lengths and max(lengths) > 0xFFFF:
            raise CryptoError("OPRF input longer than 65535 bytes")
        width, new = self.suite.element_size, self._hash
        middle, end = _i2osp(width, 2), b"Finalize"
        if len(lengths) != 1:
            raw = elements.tobytes()
            digests = b"".join(
                [
                    new(
                        _i2osp(len(x), 2) + x + middle + raw[i * width : (i + 1) * width] + end
                    ).digest()
                    for i, x in enumerate(inputs)
                ]
            )
        else:
            (size,) = lengths
            row = 2 + size + 2 + width + len(end)
            rows = np.empty((n, row), dtype=np.uint8)
            rows[:, :2] = np.frombuffer(_i2osp(size, 2), np.uint8)
            rows[:, 2 : 2 + size] = np.frombuffer(b"".join(inputs), np.uint8).reshape(n, size)
            rows[:, 2 + size : 4 + size] = np.frombuffer(middle, np.uint8)
            rows[:, 4 + size : 4 + size + width] = elements
            rows[:, 4 + size + width :] = np.frombuffer(end, np.uint8)
            blob = rows.tobytes()
            digests = b"".join([new(blob[i : i + row]).digest() for i in range(0, n * row, row)])
        return np.frombuffer(digests, dtype=np.uint8).reshape(n, self.suite.output_size).copy()

    @staticmethod
    def _one(value: bytes) -> np.ndarray:
        return np.frombuffer(value, dtype=np.uint8).reshape(1, -1)

    def map_rows(
        self,
        work: Callable[[int, int], np.ndarray],
        n: int,
        width: int,
        progress: Progress | None,
    ) -> np.ndarray:
        """Run ``work`` over row ranges, in parallel when it pays, preserving order: the batch
        machinery of this class, for other protocols over the same suite (``psi.stats``). A row
        error is re-raised with its absolute index."""
        bounds = [(lo, min(lo + CHUNK, n)) for lo in range(0, n, CHUNK)]

        def run(lo: int, hi: int) -> np.ndarray:
            try:
                result = work(lo, hi)
            except CryptoError as exc:
                raise CryptoError(f"rows {lo}..{hi - 1}: {exc}") from None
            if progress:
                progress(hi - lo)
            return result

        if self.workers == 1 or len(bounds) <= 1:
            parts = [run(lo, hi) for lo, hi in bounds]
        else:
            parts = list(_pool(self.workers).map(lambda b: run(*b), bounds))
        return np.concatenate(parts) if parts else np.empty((0, width), dtype=np.uint8)
