"""The label schema: what a department says about one person in one dataset.

A label is the list of a person's records, encoded compactly and deterministically so that the same
records always give the same bytes (tables compare plaintexts to keep unchanged entries across
versions). Fields a client is not granted are removed *before* encryption, so a client can never
decrypt more than it was granted. Each record carries an opaque handle instead of the department's
record reference: the client can quote it in a dispute and only the department can resolve it.

Encoding (format 1, little-endian)::

    u8 format | u8 field mask | u16 record count | records
    record = u8 status | [i32 start] | [i32 end] | [u8 grade] | [u8 kind] | [16-byte handle]

A bracketed part is present only when its field's mask bit is set. Dates are days since
1970-01-01 with ``-2**31`` for "no date"; grade and kind use 0 for "none". Records are sorted by
their encoding.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from psi.errors import InputError

FORMAT = 1

# Stable 1-byte codes: never renumber or reuse one, encoded labels outlive this code.
STATUS_CODES: Mapping[str, int] = MappingProxyType(
    {
        "deceased": 1,
        "declared_missing": 2,
        "severe_disability": 3,
        "serious_illness": 4,
        "imprisoned": 5,
        "compulsory_rehab": 6,
        "liberty_restricted": 7,
        "lost_contact": 8,
        "guardianship_revoked": 9,
        "deported": 10,
        # Civil affairs' own roll of beneficiaries, served back to education and medical
        # insurance (POLICY.md, "both ways").
        "orphan": 11,
        "de_facto_unattended": 12,
    }
)
DISABILITY_KIND_CODES: Mapping[str, int] = MappingProxyType(
    {
        "visual": 1,
        "hearing": 2,
        "speech": 3,
        "physical": 4,
        "intellectual": 5,
        "mental": 6,
        "multiple": 7,
    }
)
DISABILITY_GRADES = range(1, 5)  # China's disability certificate grades, 1 (most severe) to 4

HANDLE_BYTES = 16

# A department register's canonical columns: each row becomes one Record of a label.
REGISTER_COLUMNS = (
    "id_number",
    "status",
    "start_date",
    "end_date",
    "disability_grade",
    "disability_kind",
    "record_ref",
)
# Optional fields in mask-bit order; "status" is always present.
OPTIONAL_FIELDS = ("start", "end", "disability_grade", "disability_kind", "handle")
FIELDS = frozenset(("status", *OPTIONAL_FIELDS))

_EPOCH = date(1970, 1, 1)
_NO_DATE = -(2**31)
_PREFIX = struct.Struct("<BBH")
_FIELD_STRUCTS = {
    "start": struct.Struct("<i"),
    "end": struct.Struct("<i"),
    "disability_grade": struct.Struct("<B"),
    "disability_kind": struct.Struct("<B"),
    "handle": struct.Struct(f"<{HANDLE_BYTES}s"),
}
_STATUS_NAMES = {code: name for name, code in STATUS_CODES.items()}
_KIND_NAMES = {code: name for name, code in DISABILITY_KIND_CODES.items()}
_WORD = re.compile(r"[a-z_]{1,32}")


def _shown(value: object) -> str:
    """Echo a rejected enum value only when it looks like a word, so a shifted column never puts an
    identity number into a message."""
    return repr(value) if isinstance(value, str) and _WORD.fullmatch(value) else "value"


@dataclass(frozen=True, slots=True)
class Record:
    """One status record of one person. Fields other than ``status`` are ``None`` when unknown, and
    in a decoded label also when the client was not granted them (see ``Label.fields``)."""

    status: str
    start: date | None = None
    end: date | None = None
    disability_grade: int | None = None
    disability_kind: str | None = None
    handle: bytes | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUS_CODES:
            raise InputError(
                f"unknown status {_shown(self.status)}; expected one of {', '.join(STATUS_CODES)}"
            )
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, date) or isinstance(value, datetime)):
                raise InputError(f"record {name} must be a date")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise InputError(f"record of status {self.status!r} ends before it starts")
        if self.disability_grade is not None and self.disability_grade not in DISABILITY_GRADES:
            raise InputError("disability grade must be 1, 2, 3 or 4")
        if self.disability_kind is not None and self.disability_kind not in DISABILITY_KIND_CODES:
            raise InputError(
                f"unknown disability kind {_shown(self.disability_kind)}; "
                f"expected one of {', '.join(DISABILITY_KIND_CODES)}"
            )
        if self.handle is not None and (
            not isinstance(self.handle, bytes) or len(self.handle) != HANDLE_BYTES
        ):
            raise InputError(f"record handle must be {HANDLE_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class Label:
    """A decoded label: the granted fields and the person's records in canonical order."""

    fields: frozenset[str]
    records: tuple[Record, ...]


def record_handle(handle_key: bytes, record_ref: str) -> bytes:
    """The opaque handle of a department record reference. The handle key is per dataset and stable
    across epochs, so a handle quoted in a dispute still resolves after the OPRF key rotated."""
    return hmac.new(handle_key, record_ref.encode(), hashlib.sha256).digest()[:HANDLE_BYTES]


def resolve_handles(handle_key: bytes, record_refs: Iterable[str]) -> dict[bytes, str]:
    """Map handles back to record references by recomputing them over the department's register."""
    return {record_handle(handle_key, ref): ref for ref in record_refs}


def _check_fields(fields: Iterable[str] | None) -> tuple[str, ...]:
    """The granted optional fields, in mask-bit order."""
    if fields is None:
        return OPTIONAL_FIELDS
    unknown = set(fields) - FIELDS
    if unknown:
        raise InputError(
            f"unknown label field(s) {', '.join(sorted(map(_shown, unknown)))}; "
            f"expected some of {', '.join(sorted(FIELDS))}"
        )
    return tuple(name for name in OPTIONAL_FIELDS if name in fields)


def profile_name(fields: Iterable[str]) -> str:
    """The canonical name of a field profile, a set of granted label fields (status always
    among them), e.g. ``end+start+status``: it names the profile's tables and is bound into its
    OPRF key (docs/tables.md)."""
    return "+".join(sorted(("status", *_check_fields(fields))))


_EPOCH_ORDINAL = _EPOCH.toordinal()


def _days(value: date | None) -> int:
    return _NO_DATE if value is None else value.toordinal() - _EPOCH_ORDINAL


@lru_cache(maxsize=1 << 16)  # labels repeat a few thousand distinct days
def _date(days: int) -> date | None:
    if days == _NO_DATE:
        return None
    try:
        return _EPOCH + timedelta(days=days)
    except OverflowError:
        raise InputError("malformed label: date out of range") from None


def _handle(record: Record) -> bytes:
    if record.handle is None:
        raise InputError("record has no handle but the handle field is granted")
    return record.handle


# Per optional field: its value in a record, as packed.
_ENCODERS: Mapping[str, Callable[[Record], int | bytes]] = MappingProxyType(
    {
        "start": lambda r: _days(r.start),
        "end": lambda r: _days(r.end),
        "disability_grade": lambda r: r.disability_grade or 0,
        "disability_kind": lambda r: (
            DISABILITY_KIND_CODES[r.disability_kind] if r.disability_kind else 0
        ),
        "handle": _handle,
    }
)


def _check_grade(raw: int) -> int | None:
    if raw and raw not in DISABILITY_GRADES:
        raise InputError("malformed label: bad disability grade")
    return raw or None


def _kind_name(raw: int) -> str | None:
    if raw and raw not in _KIND_NAMES:
        raise InputError("malformed label: unknown disability kind code")
    return _KIND_NAMES.get(raw)


# Per optional field: the record value from the packed one.
_DECODERS: Mapping[str, Callable[[Any], object]] = MappingProxyType(
    {
        "start": _date,
        "end": _date,
        "disability_grade": _check_grade,
        "disability_kind": _kind_name,
        "handle": lambda raw: raw,
    }
)


@dataclass(frozen=True)
class _Layout:
    """Everything about one field mask, built once: a decoded label per matched person, a million
    at a time, should not each rebuild a struct or carry a new frozenset."""

    mask: int
    granted: tuple[str, ...]  # the optional fields, in mask-bit order
    fields: frozenset[str]
    record: struct.Struct  # u8 status then the granted fields
    encoders: tuple[Callable[[Record], int | bytes], ...]
    decoders: tuple[tuple[int, Callable[[Any], object]], ...]  # (Record argument, decoder)


def _layout(mask: int) -> _Layout:
    granted = tuple(n for i, n in enumerate(OPTIONAL_FIELDS) if mask >> i & 1)
    packed = "".join(_FIELD_STRUCTS[name].format.lstrip("<") for name in granted)
    return _Layout(
        mask,
        granted,
        frozenset(("status", *granted)),
        struct.Struct("<B" + packed),
        tuple(_ENCODERS[name] for name in granted),
        tuple((OPTIONAL_FIELDS.index(name), _DECODERS[name]) for name in granted),
    )


_LAYOUTS = tuple(_layout(mask) for mask in range(1 << len(OPTIONAL_FIELDS)))
_BY_GRANTED = {layout.granted: layout for layout in _LAYOUTS}


def encode_label(records: Sequence[Record], fields: Iterable[str] | None = None) -> bytes:
    """Encode a person's records, keeping only ``fields`` (all when ``None``; status always)."""
    if not records:
        raise InputError("a label needs at least one record")
    if len(records) > 0xFFFF:
        raise InputError("a label holds at most 65535 records")
    granted = _check_fields(fields)
    layout = _BY_GRANTED[granted]
    pack, encoders = layout.record.pack, layout.encoders
    encoded = sorted(
        pack(STATUS_CODES[r.status], *[encode(r) for encode in encoders]) for r in records
    )
    return _PREFIX.pack(FORMAT, layout.mask, len(records)) + b"".join(encoded)


def decode_label(data: bytes) -> Label:
    """Decode a label; anything but an exact format-1 encoding is an ``InputError``."""
    if len(data) < _PREFIX.size:
        raise InputError("malformed label: too short")
    version, mask, count = _PREFIX.unpack_from(data)
    if version != FORMAT:
        raise InputError(f"unsupported label format {version} (this build reads {FORMAT})")
    if mask >> len(OPTIONAL_FIELDS):
        raise InputError("malformed label: unknown field bits")
    layout = _LAYOUTS[mask]
    if count == 0 or len(data) != _PREFIX.size + count * layout.record.size:
        raise InputError("malformed label: length does not match its record count")
    records = []
    decoders = layout.decoders
    for status_code, *values in layout.record.iter_unpack(memoryview(data)[_PREFIX.size :]):
        status = _STATUS_NAMES.get(status_code)
        if status is None:
            raise InputError("malformed label: unknown status code")
        arguments: list[object] = [None] * len(OPTIONAL_FIELDS)
        for (position, decode), raw in zip(decoders, values, strict=True):
            arguments[position] = decode(raw)
        records.append(Record(status, *arguments))  # type: ignore[arg-type]
    return Label(layout.fields, tuple(records))
