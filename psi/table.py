"""Labelled tables: what a department publishes so a client can look up its own OPRF outputs.

Each person's 64-byte OPRF output yields, through a hash bound to the dataset and epoch, an 8-byte
tag (to find the entry) and a 32-byte key (to open the label). Only someone holding the output, that
is, someone who knows the identifier and ran the OPRF with the department, can find or open an
entry. Labels are padded to one length and sealed with ChaCha20-Poly1305 under associated data that
binds dataset, epoch and the version the entry was written in, so rows cannot be moved between
tables. Unchanged entries keep their ciphertext across versions, which keeps deltas small.
See docs/tables.md for the construction, file layout and what a client learns.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Generic, Self, TypeVar

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from psi.errors import CryptoError, InputError, Source

FORMAT = 1
OUTPUT_BYTES = 64  # an RFC 9497 ristretto255-SHA512 OPRF output
TAG_BYTES = 8
KEY_BYTES = 32
NONCE_BYTES = 12
AEAD_TAG_BYTES = 16
LENGTH_BYTES = 4  # u32 label length in front of the padded label
ROW_OVERHEAD = NONCE_BYTES + LENGTH_BYTES + AEAD_TAG_BYTES
MAX_LABEL_SIZE = 1 << 21  # above the largest encodable label (65535 records of 27 bytes)
ALIGN = 64
TABLE_MAGIC = b"KINLINKT"
DELTA_MAGIC = b"KINLINKD"
MAX_HEADER_BYTES = 1 << 16

_DERIVE_DOMAIN = b"kinlink-table-v1"
_AD_DOMAIN = b"kinlink-label-v1"
_DATASET = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PREFIX = struct.Struct("<8sI")  # magic, header length
_U32 = 2**32


def check_dataset(dataset: str) -> bytes:
    """Validate a dataset id (bound into every derivation and file) and return its UTF-8 bytes."""
    if not isinstance(dataset, str) or not _DATASET.fullmatch(dataset):
        raise InputError("a dataset id is 1 to 64 letters, digits, '.', '_' or '-'")
    return dataset.encode()


def _check_u32(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _U32:
        raise InputError(f"{what} must be an integer from 0 to 2**32-1")
    return value


def _lp(data: bytes) -> bytes:
    """Length-prefixed bytes (u16 big-endian, as RFC 9497's I2OSP)."""
    return struct.pack(">H", len(data)) + data


def atomic_write(
    path: str | os.PathLike[str], chunks: Iterable[bytes], *, private: bool = False
) -> None:
    """Write ``chunks`` to a temporary file beside ``path`` and rename it into place, so readers
    never see a half-written file. ``private`` creates it owner-only (0600) for secrets."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _check_outputs(outputs: np.ndarray) -> np.ndarray:
    if not isinstance(outputs, np.ndarray) or outputs.dtype != np.uint8 or outputs.ndim != 2:
        raise InputError(f"OPRF outputs must be a uint8 array of shape (n, {OUTPUT_BYTES})")
    if outputs.shape[1] != OUTPUT_BYTES:
        raise InputError(f"OPRF outputs must be {OUTPUT_BYTES} bytes, got {outputs.shape[1]}")
    return np.ascontiguousarray(outputs)


def derive(dataset: str, epoch: int, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output: its tag (uint64, little-endian of digest[0:8]) and AEAD key (digest[8:40]), with
    digest = SHA-512("kinlink-table-v1" || lp(dataset) || u32be(epoch) || output). Binding the
    dataset and epoch makes tags of different tables unlinkable even for equal outputs."""
    outputs = _check_outputs(outputs)
    prefix = hashlib.sha512(
        _DERIVE_DOMAIN + _lp(check_dataset(dataset)) + struct.pack(">I", _check_u32(epoch, "epoch"))
    )
    rows = memoryview(outputs.reshape(-1))
    digests = bytearray()
    for start in range(0, len(rows), OUTPUT_BYTES):
        state = prefix.copy()
        state.update(rows[start : start + OUTPUT_BYTES])
        digests += state.digest()
    digest_rows = np.frombuffer(digests, np.uint8).reshape(-1, prefix.digest_size)
    tags = np.ascontiguousarray(digest_rows[:, :TAG_BYTES]).view("<u8").reshape(-1)
    return tags, np.ascontiguousarray(digest_rows[:, TAG_BYTES : TAG_BYTES + KEY_BYTES])


def _ad_prefix(dataset: str, epoch: int) -> bytes:
    return _AD_DOMAIN + _lp(dataset.encode()) + struct.pack(">I", epoch)


def _pad(label: bytes, label_size: int) -> bytes:
    return struct.pack("<I", len(label)) + label.ljust(label_size, b"\0")


def _unpad(plaintext: bytes, label_size: int) -> bytes:
    (length,) = struct.unpack_from("<I", plaintext)
    if length > label_size or any(plaintext[LENGTH_BYTES + length :]):
        raise CryptoError("an entry authenticated but its padding is malformed")
    return plaintext[LENGTH_BYTES : LENGTH_BYTES + length]


def _tie_groups(sorted_tags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of equal tags in a sorted array: 64-bit collisions, expect none."""
    groups: list[list[int]] = []
    for i in np.flatnonzero(sorted_tags[1:] == sorted_tags[:-1]).tolist():
        if groups and groups[-1][1] == i + 1:
            groups[-1][1] = i + 2
        else:
            groups.append([i, i + 2])
    return [(start, stop) for start, stop in groups]


def _canonical_order(tags: np.ndarray, nonces: np.ndarray) -> np.ndarray:
    """Sort entries by (tag, nonce): a function of the entry set alone, so a table rebuilt from a
    delta is byte-identical to the original."""
    order = np.argsort(tags, kind="stable")
    for start, stop in _tie_groups(tags[order]):
        order[start:stop] = sorted(order[start:stop], key=lambda i: nonces[i].tobytes())
    return order


# ---------------------------------------------------------------------------------------------
# Container: magic | u32 header length | JSON header | arrays, each starting 64-byte aligned.


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


@dataclass(frozen=True)
class _Header:
    dataset: str
    epoch: int
    suite: str
    label_size: int
    count: int  # entries of the (resulting) table
    created: str  # ISO 8601 UTC of the table

    def __post_init__(self) -> None:
        check_dataset(self.dataset)
        for name in ("epoch", "count", *self._versions()):
            _check_u32(getattr(self, name), name)
        if not 0 < len(self.suite) <= 64 or not self.suite.isprintable():
            raise InputError("a suite name is 1 to 64 printable characters")
        if not 0 <= self.label_size <= MAX_LABEL_SIZE:
            raise InputError(f"label size must be at most {MAX_LABEL_SIZE} bytes")

    def _versions(self) -> tuple[str, ...]:
        return ()

    @property
    def row_size(self) -> int:
        """Bytes of one sealed row: nonce || ChaCha20-Poly1305(u32 length || padded label)."""
        return ROW_OVERHEAD + self.label_size


@dataclass(frozen=True)
class TableHeader(_Header):
    version: int

    def _versions(self) -> tuple[str, ...]:
        return ("version",)


@dataclass(frozen=True)
class DeltaHeader(_Header):
    from_version: int
    to_version: int
    removed: int
    added: int

    def _versions(self) -> tuple[str, ...]:
        return ("from_version", "to_version", "removed", "added")


def _header_from_json(header_type: type[_Header], raw: object) -> _Header:
    expected = {field.name for field in fields(header_type)}
    if not isinstance(raw, dict) or set(raw) != expected | {"format"}:
        raise InputError("corrupt header: unexpected fields")
    for field in fields(header_type):
        value = raw[field.name]
        if field.type == "str" and not isinstance(value, str):
            raise InputError(f"corrupt header: {field.name} must be text")
        if field.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise InputError(f"corrupt header: {field.name} must be an integer")
    return header_type(**{name: raw[name] for name in expected})


def _prefix_size(head: bytes, magic: bytes, kind: str, source: Source) -> int | None:
    """Bytes of magic, length and JSON header, once ``head`` holds enough to tell; else None."""
    if head[: len(magic)] != magic[: len(head)]:
        raise InputError(f"not a kinlink {kind} file (bad magic)", source)
    if len(head) < _PREFIX.size:
        return None
    length = _PREFIX.unpack_from(head)[1]
    if length > MAX_HEADER_BYTES:
        raise InputError(f"corrupt {kind} header (length {length})", source)
    return _PREFIX.size + length


T = TypeVar("T", bound="_Stored")


class _Stored:
    """Serialisation shared by tables and deltas: one byte layout for files, streams and bytes."""

    MAGIC: ClassVar[bytes]
    KIND: ClassVar[str]
    HEADER: ClassVar[type[_Header]]
    ARRAYS: ClassVar[tuple[str, ...]]
    header: _Header

    @classmethod
    def _shapes(cls, header: _Header) -> list[tuple[str, tuple[int, ...]]]:
        raise NotImplementedError

    def _validate(self) -> None:
        raise NotImplementedError

    @classmethod
    def _layout(cls, header: _Header, start: int) -> tuple[list[int], int]:
        """Offsets of the arrays and total size, arrays from ``start``, each 64-byte aligned."""
        offsets = []
        position = start
        for dtype, shape in cls._shapes(header):
            offsets.append(position)
            position = _aligned(position + int(np.prod(shape)) * np.dtype(dtype).itemsize)
        return offsets, position

    def _prefix(self) -> bytes:
        header = json.dumps(
            {"format": FORMAT, **asdict(self.header)}, sort_keys=True, separators=(",", ":")
        ).encode()
        prefix = _PREFIX.pack(self.MAGIC, len(header)) + header
        return prefix + bytes(_aligned(len(prefix)) - len(prefix))

    def _segments(self) -> Iterator[memoryview | bytes]:
        yield self._prefix()
        for name in self.ARRAYS:
            data = memoryview(getattr(self, name).reshape(-1).view(np.uint8))
            yield data
            yield bytes(_aligned(data.nbytes) - data.nbytes)

    def iter_chunks(self, max_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The serialised form in chunks of ``max_bytes`` (the last may be shorter), copying one
        chunk at a time, for streaming a large (even memory-mapped) object."""
        if max_bytes < 1:
            raise InputError("chunk size must be positive")
        buffer = bytearray()
        for segment in self._segments():
            view = memoryview(segment)
            while view:
                take = max_bytes - len(buffer)
                buffer += view[:take]
                view = view[take:]
                if len(buffer) == max_bytes:
                    yield bytes(buffer)
                    buffer.clear()
        if buffer:
            yield bytes(buffer)

    def to_bytes(self) -> bytes:
        return b"".join(self._segments())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temporary file, then rename)."""
        atomic_write(path, self.iter_chunks())

    @classmethod
    def _parse(cls, prefix: bytes, source: Source) -> tuple[_Header, list[int], int]:
        """Header, array offsets and total size from the complete prefix."""
        try:
            raw = json.loads(prefix[_PREFIX.size :])
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"corrupt {cls.KIND} header", source) from None
        if isinstance(raw, dict) and raw.get("format") != FORMAT:
            raise InputError(
                f"unsupported {cls.KIND} format {raw.get('format')!r} (this build reads {FORMAT})",
                source,
            )
        try:
            header = _header_from_json(cls.HEADER, raw)
        except InputError as error:
            raise InputError(str(error), source) from None
        offsets, total = cls._layout(header, _aligned(len(prefix)))
        return header, offsets, total

    @classmethod
    def _from_buffer(cls, buffer: np.ndarray, source: Source) -> Self:
        """Views into ``buffer`` (uint8: bytes, a file read or a memory map); no copy."""
        size = _prefix_size(bytes(buffer[: _PREFIX.size]), cls.MAGIC, cls.KIND, source)
        if size is None or len(buffer) < size:
            raise InputError(f"truncated {cls.KIND}: header incomplete", source)
        header, offsets, total = cls._parse(bytes(buffer[:size]), source)
        if len(buffer) != total:
            problem = "truncated" if len(buffer) < total else "trailing bytes after"
            raise InputError(
                f"{problem} {cls.KIND}: {len(buffer)} bytes, header says {total}", source
            )
        arrays = [
            buffer[offset : offset + int(np.prod(shape)) * np.dtype(dtype).itemsize]
            .view(dtype)
            .reshape(shape)
            for (dtype, shape), offset in zip(cls._shapes(header), offsets, strict=True)
        ]
        stored = cls(header, *arrays)
        try:
            stored._validate()
        except InputError as error:
            raise InputError(str(error), source) from None
        return stored

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<bytes>") -> Self:
        return cls._from_buffer(np.frombuffer(data, np.uint8), Source(name))

    @classmethod
    def load(cls, path: str | os.PathLike[str], mmap: bool = True) -> Self:
        """Read a file; with ``mmap`` the arrays are read-only views of the mapped file, so a large
        table costs no memory until it is touched."""
        source = Source(str(path))
        try:
            if mmap and os.path.getsize(path):
                buffer = np.memmap(path, np.uint8, mode="r")
            else:
                buffer = np.fromfile(path, np.uint8)
        except OSError as error:
            raise InputError(f"cannot read {cls.KIND}: {error.strerror}", source) from None
        return cls._from_buffer(buffer, source)

    @classmethod
    def assembler(cls, name: str = "<stream>", max_bytes: int | None = None) -> Assembler[Self]:
        """An incremental reader for chunks of the serialised form (see ``iter_chunks``)."""
        return Assembler(cls, name, max_bytes)


class Assembler(Generic[T]):
    """Rebuilds a table or delta from chunks split anywhere, into a single buffer allocated once the
    header announces the size; ``max_bytes`` refuses a stream announcing more."""

    def __init__(self, kind: type[T], name: str = "<stream>", max_bytes: int | None = None):
        self._kind = kind
        self._source = Source(name)
        self._max_bytes = max_bytes
        self._head = b""
        self._buffer: bytearray | None = None
        self._filled = 0

    def feed(self, chunk: bytes) -> None:
        if self._buffer is None:
            self._head += chunk
            kind = self._kind
            size = _prefix_size(self._head, kind.MAGIC, kind.KIND, self._source)
            if size is None or len(self._head) < size:
                return
            total = kind._parse(self._head[:size], self._source)[2]
            if self._max_bytes is not None and total > self._max_bytes:
                raise InputError(
                    f"{kind.KIND} of {total} bytes exceeds the limit of {self._max_bytes}",
                    self._source,
                )
            self._buffer = bytearray(total)
            chunk, self._head = self._head, b""
        end = self._filled + len(chunk)
        if end > len(self._buffer):
            raise InputError(f"more bytes than the {self._kind.KIND} header says", self._source)
        self._buffer[self._filled : end] = chunk
        self._filled = end

    def finish(self) -> T:
        if self._buffer is None or self._filled < len(self._buffer):
            raise InputError(f"truncated {self._kind.KIND}: stream ended early", self._source)
        return self._kind._from_buffer(np.frombuffer(self._buffer, np.uint8), self._source)


# ---------------------------------------------------------------------------------------------
# Tables


@dataclass(frozen=True, eq=False)
class Table(_Stored):
    """One (dataset, epoch, version) table: tags sorted (ties by nonce), the version each entry was
    written in, and sealed rows nonce || ciphertext || Poly1305 tag, all of one size."""

    MAGIC: ClassVar[bytes] = TABLE_MAGIC
    KIND: ClassVar[str] = "table"
    HEADER: ClassVar[type[_Header]] = TableHeader
    ARRAYS: ClassVar[tuple[str, ...]] = ("tags", "written", "sealed")

    header: TableHeader
    tags: np.ndarray
    written: np.ndarray
    sealed: np.ndarray

    @classmethod
    def _shapes(cls, header: TableHeader) -> list[tuple[str, tuple[int, ...]]]:
        n = header.count
        return [("<u8", (n,)), ("<u4", (n,)), ("u1", (n, header.row_size))]

    def _validate(self) -> None:
        if np.any(self.tags[1:] < self.tags[:-1]):
            raise InputError("corrupt table: tags are not sorted")
        if len(self.written) and int(self.written.max()) > self.header.version:
            raise InputError("corrupt table: an entry is written after the table's version")

    @property
    def nonces(self) -> np.ndarray:
        return self.sealed[:, :NONCE_BYTES]

    def __len__(self) -> int:
        return self.header.count

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Table):
            return NotImplemented
        return self.header == other.header and all(
            np.array_equal(getattr(self, name), getattr(other, name)) for name in self.ARRAYS
        )

    __hash__ = None  # type: ignore[assignment]


def _opener(table: Table) -> Callable[[int, bytes], bytes | None]:
    """A function opening entry ``index`` of ``table`` under a key: the label, or None when the key
    does not open it. Shares the per-table work across the rows of a batch."""
    header = table.header
    associated = _ad_prefix(header.dataset, header.epoch)
    rows = memoryview(table.sealed.reshape(-1))
    size = header.row_size

    def open_(index: int, key: bytes, written: int | None = None) -> bytes | None:
        row = rows[index * size : (index + 1) * size]
        if written is None:
            written = int(table.written[index])
        try:
            plaintext = ChaCha20Poly1305(key).decrypt(
                row[:NONCE_BYTES], row[NONCE_BYTES:], associated + struct.pack(">I", written)
            )
        except InvalidTag:
            return None
        return _unpad(plaintext, header.label_size)

    return open_


def open_entry(table: Table, index: int, key: bytes) -> bytes | None:
    """The label of entry ``index`` under ``key``, or None when the key does not open it."""
    return _opener(table)(range(len(table))[index], key)


def _open_rows(table: Table, entries: list[int], keys: list[bytes]) -> list[bytes | None]:
    """``open_entry`` of many (entry, key) pairs."""
    written = table.written[entries].tolist() if entries else []
    return list(map(_opener(table), entries, keys, written))


def _hits(
    table: Table, tags: np.ndarray, keys: np.ndarray
) -> tuple[list[tuple[int, int, bytes]], int]:
    """(query, entry, label) for each query whose tag finds an entry its key opens, in query order,
    and the count of tag hits that did not open (another person's entry with a colliding tag).

    A query's candidates are the run of entries with its tag: nearly always one, opened in one
    batch; runs of several (64-bit tag collisions, expect none) are walked until one opens."""
    low = np.searchsorted(table.tags, tags, side="left")
    high = np.searchsorted(table.tags, tags, side="right")
    count = high - low
    single = np.flatnonzero(count == 1)
    all_keys = keys.tobytes()
    queries = single.tolist()
    entries = low[single].tolist()
    labels = _open_rows(
        table, entries, [all_keys[q * KEY_BYTES : (q + 1) * KEY_BYTES] for q in queries]
    )
    found = [
        (query, entry, label)
        for query, entry, label in zip(queries, entries, labels, strict=True)
        if label is not None
    ]
    false_hits = len(queries) - len(found)
    several = np.flatnonzero(count > 1).tolist()
    if several:
        open_ = _opener(table)
        for query in several:
            key = all_keys[query * KEY_BYTES : (query + 1) * KEY_BYTES]
            for entry in range(int(low[query]), int(high[query])):
                label = open_(entry, key)
                if label is not None:
                    found.append((query, entry, label))
                    break
                false_hits += 1
        found.sort()
    return found, false_hits


def _check_series(a: _Header, b: _Header) -> None:
    """Tables, deltas and previous versions must be of one dataset, epoch and suite."""
    for name in ("dataset", "epoch", "suite"):
        if getattr(a, name) != getattr(b, name):
            raise InputError(
                f"{name} differs ({getattr(a, name)!r} vs {getattr(b, name)!r}): "
                "not the same table series"
            )


def _check_unique(outputs: np.ndarray, tags: np.ndarray, order: np.ndarray) -> None:
    """One entry per person: equal outputs have equal tags, so only tag runs need comparing."""
    for start, stop in _tie_groups(tags[order]):
        rows = {outputs[i].tobytes() for i in order[start:stop]}
        if len(rows) < stop - start:
            raise InputError(
                "the same OPRF output appears twice: give each person one entry whose label "
                "holds all their records"
            )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_table(
    dataset: str,
    epoch: int,
    version: int,
    outputs: np.ndarray,
    labels: Sequence[bytes],
    suite: str,
    *,
    previous: Table | None = None,
    label_size: int = 0,
) -> Table:
    """Seal one encoded label per person (row i of ``outputs`` is person i's OPRF output).

    Labels are padded to the largest of: the longest label, ``label_size`` (set it to hide how many
    records the busiest person has) and ``previous``'s size. With ``previous`` (an earlier version
    of the same dataset and epoch) an unchanged entry keeps its sealed row and written-version, so
    ``diff`` ships only what changed; growing the label size re-seals everything.
    """
    outputs = _check_outputs(outputs)
    if len(labels) != len(outputs):
        raise InputError(f"{len(outputs)} OPRF outputs but {len(labels)} labels")
    size = max((len(label) for label in labels), default=0)
    size = max(size, label_size, previous.header.label_size if previous else 0)
    header = TableHeader(dataset, epoch, suite, size, len(outputs), _now(), version)
    tags, keys = derive(dataset, epoch, outputs)
    nonces = np.frombuffer(os.urandom(NONCE_BYTES * len(outputs)), np.uint8).reshape(
        -1, NONCE_BYTES
    )
    nonces = nonces.copy()
    written = np.full(len(outputs), version, "<u4")
    reused = np.full(len(outputs), -1, np.int64)
    if previous is not None:
        _check_series(previous.header, header)
        if version <= previous.header.version:
            raise InputError(f"version {version} does not follow {previous.header.version}")
        if previous.header.label_size == size:
            for query, entry, label in _hits(previous, tags, keys)[0]:
                if label == labels[query]:
                    reused[query] = entry
                    nonces[query] = previous.nonces[entry]
                    written[query] = previous.written[entry]
    order = _canonical_order(tags, nonces)
    _check_unique(outputs, tags, order)
    sealed = np.empty((len(outputs), header.row_size), np.uint8)
    sealed[:, :NONCE_BYTES] = nonces[order]
    kept = reused[order]
    if previous is not None and (kept >= 0).any():
        sealed[kept >= 0] = previous.sealed[kept[kept >= 0]]
    fresh = order[kept < 0].tolist()
    associated = _ad_prefix(dataset, epoch) + struct.pack(">I", version)
    # Plain bytes and lists in the loop: indexing numpy per row costs more than the encryption.
    all_keys, all_nonces = keys.tobytes(), nonces.tobytes()

    ciphertexts = [
        ChaCha20Poly1305(all_keys[person * KEY_BYTES : (person + 1) * KEY_BYTES]).encrypt(
            all_nonces[person * NONCE_BYTES : (person + 1) * NONCE_BYTES],
            _pad(labels[person], size),
            associated,
        )
        for person in fresh
    ]
    if fresh:
        sealed[kept < 0, NONCE_BYTES:] = np.frombuffer(b"".join(ciphertexts), np.uint8).reshape(
            len(fresh), -1
        )
    return Table(header, tags[order], written[order], sealed)


def entry_fingerprints(table: Table, tags: np.ndarray) -> np.ndarray:
    """Per tag (uint64 array), a 64-bit fingerprint of the entries it finds in ``table``: 0 for
    none, else the last 8 bytes of their Poly1305 tags (XORed for a run of equal tags). An entry
    keeps its sealed row while its label is unchanged (``build_table``), and a new or changed one
    is sealed under a fresh nonce, so a client can tell which of its matches changed between two
    versions without opening any."""
    found = np.zeros(len(tags), np.uint64)
    n = len(table)
    if not n or not len(tags):
        return found
    order = np.argsort(tags)  # sorted needles: one pass of cache-friendly binary searches
    low = np.empty(len(tags), np.intp)
    low[order] = np.searchsorted(table.tags, tags[order])
    low = np.minimum(low, n - 1)
    hit = table.tags[low] == tags
    macs = np.ascontiguousarray(table.sealed[:, -8:]).view("<u8").reshape(-1)
    found[hit] = macs[low[hit]]
    runs = hit & (low + 1 < n) & (table.tags[np.minimum(low + 1, n - 1)] == tags)
    for query in np.flatnonzero(runs).tolist():  # 64-bit tag collisions: expect none
        high = int(np.searchsorted(table.tags, tags[query], side="right"))
        found[query] = np.bitwise_xor.reduce(macs[low[query] : high])
    return found


@dataclass(frozen=True)
class Match:
    """Query ``query`` found its entry: ``label`` is the encoded label (decode it with
    ``psi.labels.decode_label``), written in table version ``written``."""

    query: int
    label: bytes
    written: int


@dataclass(frozen=True)
class MatchResult:
    matches: list[Match]
    false_hits: int  # tag collisions with other persons' entries, filtered out by the AEAD


def match(table: Table, outputs: np.ndarray) -> MatchResult:
    """Look up the client's own OPRF outputs: find tags with a binary search, open only the hits."""
    return match_tags(table, *derive(table.header.dataset, table.header.epoch, outputs))


def match_tags(table: Table, tags: np.ndarray, keys: np.ndarray) -> MatchResult:
    """``match`` on ``derive``'s tags and keys, which a client may keep per (dataset, epoch):
    they do not change with the table version."""
    found, false_hits = _hits(table, tags, keys)
    written = table.written[[entry for _, entry, _ in found]].tolist()
    matches = [
        Match(query, label, version)
        for (query, _, label), version in zip(found, written, strict=True)
    ]
    return MatchResult(matches, false_hits)


# ---------------------------------------------------------------------------------------------
# Deltas


@dataclass(frozen=True, eq=False)
class Delta(_Stored):
    """From one table version to the next: entries removed, named by (tag, nonce), and entries
    added in full. A changed label is a removal plus an addition."""

    MAGIC: ClassVar[bytes] = DELTA_MAGIC
    KIND: ClassVar[str] = "delta"
    HEADER: ClassVar[type[_Header]] = DeltaHeader
    ARRAYS: ClassVar[tuple[str, ...]] = (
        "removed_tags",
        "removed_nonces",
        "added_tags",
        "added_written",
        "added_sealed",
    )

    header: DeltaHeader
    removed_tags: np.ndarray
    removed_nonces: np.ndarray
    added_tags: np.ndarray
    added_written: np.ndarray
    added_sealed: np.ndarray

    @classmethod
    def _shapes(cls, header: DeltaHeader) -> list[tuple[str, tuple[int, ...]]]:
        removed, added = header.removed, header.added
        return [
            ("<u8", (removed,)),
            ("u1", (removed, NONCE_BYTES)),
            ("<u8", (added,)),
            ("<u4", (added,)),
            ("u1", (added, header.row_size)),
        ]

    def _validate(self) -> None:
        header = self.header
        if header.to_version <= header.from_version:
            raise InputError("corrupt delta: versions do not increase")
        if len(self.added_written) and int(self.added_written.max()) > header.to_version:
            raise InputError("corrupt delta: an entry is written after the delta's version")


def _locate(table: Table, tags: np.ndarray, nonces: np.ndarray) -> np.ndarray:
    """Index in ``table`` of each entry named by (tag, nonce), or -1."""
    low = np.searchsorted(table.tags, tags, side="left")
    high = np.searchsorted(table.tags, tags, side="right")
    where = np.full(len(tags), -1, np.int64)
    single = np.flatnonzero(high - low == 1)
    same = np.all(table.nonces[low[single]] == nonces[single], axis=1)
    where[single[same]] = low[single[same]]
    for query in np.flatnonzero(high - low > 1).tolist():
        for entry in range(int(low[query]), int(high[query])):
            if np.array_equal(table.nonces[entry], nonces[query]):
                where[query] = entry
                break
    return where


def diff(old: Table, new: Table) -> Delta:
    """The delta taking ``old`` to ``new`` (a later version of the same dataset and epoch)."""
    _check_series(old.header, new.header)
    if new.header.version <= old.header.version:
        raise InputError(f"version {new.header.version} does not follow {old.header.version}")
    if old.header.label_size == new.header.label_size:
        in_new = _locate(new, old.tags, old.nonces)
        in_old = _locate(old, new.tags, new.nonces)
        kept = in_new >= 0
        if not (
            np.array_equal(old.written[kept], new.written[in_new[kept]])
            and np.array_equal(old.sealed[kept], new.sealed[in_new[kept]])
        ):
            raise InputError("the tables disagree about an entry they share")
    else:  # every row was re-sealed at the new size
        in_new = np.full(len(old), -1)
        in_old = np.full(len(new), -1)
    removed = in_new < 0
    added = in_old < 0
    h = new.header
    header = DeltaHeader(
        h.dataset,
        h.epoch,
        h.suite,
        h.label_size,
        h.count,
        h.created,
        from_version=old.header.version,
        to_version=h.version,
        removed=int(removed.sum()),
        added=int(added.sum()),
    )
    return Delta(
        header,
        old.tags[removed],
        old.nonces[removed],
        new.tags[added],
        new.written[added],
        new.sealed[added],
    )


def apply(old: Table, delta: Delta) -> Table:
    """The table ``delta`` leads to; it must start at ``old``'s version."""
    h = delta.header
    _check_series(old.header, h)
    if old.header.version != h.from_version:
        raise InputError(
            f"delta goes from version {h.from_version} to {h.to_version} "
            f"but the table is at version {old.header.version}"
        )
    where = _locate(old, delta.removed_tags, delta.removed_nonces)
    if np.any(where < 0) or len(np.unique(where)) != len(where):
        raise InputError("delta removes entries the table does not have")
    keep = np.ones(len(old), bool)
    keep[where] = False
    if keep.any() and old.header.label_size != h.label_size:
        raise InputError("delta changes the label size but keeps entries of the old size")
    kept_sealed = old.sealed[keep] if keep.any() else np.empty((0, h.row_size), np.uint8)
    tags = np.concatenate([old.tags[keep], delta.added_tags])
    written = np.concatenate([old.written[keep], delta.added_written])
    sealed = np.concatenate([kept_sealed, delta.added_sealed])
    if len(tags) != h.count:
        raise InputError(f"delta yields {len(tags)} entries but says {h.count}")
    order = _canonical_order(tags, sealed[:, :NONCE_BYTES])
    header = TableHeader(
        h.dataset, h.epoch, h.suite, h.label_size, h.count, h.created, h.to_version
    )
    return Table(header, tags[order], written[order], sealed[order])
