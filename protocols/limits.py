"""Sizes and versions on the wire: how large a gRPC message may be, how many elements one carries,
how a large set is cut into chunks and put back together without being held twice, and which
protocol version two peers speak.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

from psi.errors import KinlinkError
from psi.suites import DEFAULT_SUITE, get_suite

PROTOCOL_VERSION = 1
SUPPORTED_PROTOCOL_VERSIONS: tuple[int, ...] = (PROTOCOL_VERSION,)

# gRPC's receive default, set explicitly on both sides (its send default is unlimited) so that a
# peer learns of an oversized message from its own limit, not from the other side's rejection.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Payload per message: half the limit, so that framing never pushes a chunk over it, while the
# per-message overhead (microseconds) stays negligible next to evaluating a chunk.
CHUNK_BYTES = MAX_MESSAGE_BYTES // 2
TABLE_CHUNK_BYTES = CHUNK_BYTES

# Heads one ProveConsistency call proves: a proof is at most 2 log2(n) hashes of 32 bytes (4 KiB
# for a log of 2**64 entries), so 512 stay within half a message; a client with more asks again.
MAX_CONSISTENCY_SIZES = 512

GRPC_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


class WireError(KinlinkError):
    """A peer sent something that breaks the wire contract (sizes, counts, order)."""


class ProtocolVersionError(WireError):
    """The two peers share no protocol version."""


def elements_per_chunk(element_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Elements of ``element_size`` bytes that fit one chunk's payload."""
    return chunk_bytes // element_size


ELEMENTS_PER_CHUNK = elements_per_chunk(get_suite(DEFAULT_SUITE).element_size)  # 65536


def negotiate(client_versions: Iterable[int], server_versions: Iterable[int]) -> int:
    """The highest protocol version both peers speak."""
    client, server = set(client_versions), set(server_versions)
    common = client & server
    if not common:
        raise ProtocolVersionError(
            f"no protocol version in common: client speaks {_listed(client)}, "
            f"node speaks {_listed(server)}; upgrade the older side"
        )
    return max(common)


def _listed(versions: set[int]) -> str:
    return ", ".join(map(str, sorted(versions))) or "none"


def _spans(total: int, step: int) -> Iterator[tuple[int, int]]:
    if step < 1:
        raise ValueError(f"chunk size must be positive, got {step}")
    for lo in range(0, total, step):
        yield lo, min(lo + step, total)


def chunk_elements(
    elements: np.ndarray, per_chunk: int = ELEMENTS_PER_CHUNK
) -> Iterator[np.ndarray]:
    """Row slices of an (n, Ne) array, ``per_chunk`` rows each: views, so the set is never copied
    whole; only the one chunk being serialised is (``chunk.tobytes()``)."""
    if elements.ndim != 2:
        raise ValueError(f"elements must be an (n, element_size) array, got shape {elements.shape}")
    for lo, hi in _spans(len(elements), per_chunk):
        yield elements[lo:hi]


M = TypeVar("M")


def element_messages(
    message: Callable[..., M], session_id: str, elements: np.ndarray, per_chunk: int
) -> Iterator[M]:
    """The messages of a client's element stream: ``message(session_id, sequence, count,
    elements)`` per chunk, the session id in the first only (psi.proto EvaluateChunk, stats.proto
    ElementChunk)."""
    for sequence, block in enumerate(chunk_elements(elements, per_chunk)):
        yield message(
            session_id=session_id if sequence == 0 else "",
            sequence=sequence,
            count=len(block),
            elements=block.tobytes(),
        )


def chunk_payload(
    payload: bytes | memoryview, chunk_bytes: int = TABLE_CHUNK_BYTES
) -> Iterator[memoryview]:
    """Consecutive slices of a table or delta payload (which may be a memory-mapped file)."""
    view = memoryview(payload).cast("B")
    for lo, hi in _spans(len(view), chunk_bytes):
        yield view[lo:hi]


def unpack(data: bytes, count: int, width: int) -> np.ndarray:
    """A (count, width) read-only view of a chunk's packed elements, after checking its length."""
    if len(data) != count * width:
        raise WireError(
            f"a chunk declares {count} elements of {width} bytes but carries {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(count, width)


class Reassembler:
    """Writes chunks, in order, into one preallocated (rows, width) array: a receiver of a
    10-million-element answer or table holds it once, plus the chunk in flight."""

    def __init__(self, rows: int, width: int, first_sequence: int = 0):
        """``first_sequence``: the sequence number of the first chunk (a resumed session's
        numbering goes on from its earlier streams)."""
        self.array = np.empty((rows, width), dtype=np.uint8)
        self.filled = 0
        self.chunks = first_sequence  # the sequence number due next

    def add(self, data: bytes, count: int | None = None, sequence: int | None = None) -> None:
        """Append one chunk. ``count`` and ``sequence``, where the message carries them, are
        checked; without ``count`` (table data) the chunk is whole rows of ``width`` bytes."""
        rows, width = self.array.shape
        if sequence is not None and sequence != self.chunks:
            raise WireError(f"chunk {sequence} arrived where chunk {self.chunks} was due")
        if count is None:
            count, partial = divmod(len(data), width)
            if partial:
                raise WireError(f"a chunk of {len(data)} bytes is not whole rows of {width}")
        block = unpack(data, count, width)
        if self.filled + count > rows:
            raise WireError(f"chunks carry more than the {rows} rows announced")
        self.array[self.filled : self.filled + count] = block
        self.filled += count
        self.chunks += 1

    def result(self) -> np.ndarray:
        """The completed array; an error if rows are missing."""
        rows = len(self.array)
        if self.filled != rows:
            raise WireError(f"the stream ended after {self.filled} of {rows} rows")
        return self.array
