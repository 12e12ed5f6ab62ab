"""Chinese resident identity numbers: validation, one canonical spelling, masking, bulk reading.

Two departments' copies of a number only match under PSI if they are byte-for-byte equal, yet
real files spell them with lower-case x, full-width digits, spaces, hyphens or the legacy 15-digit
form. So every number is brought to one canonical 18-character form before blinding, and anything
that cannot be a real number is rejected with a reason (and, for files, a line number) instead of
silently never matching. See ``docs/identifiers.md``.

One vectorised implementation (``_normalise_block``) does the work; the scalar functions run it on a
single row, so batch and scalar results cannot disagree. Messages carry only ``mask``-ed numbers.
"""

from __future__ import annotations

import csv
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from enum import IntEnum
from itertools import islice
from operator import itemgetter

import numpy as np

from psi.errors import InputError, Source
from psi.tabular import open_rows

# ISO 7064 MOD 11-2: weight of position i (0-based, of 17) is 2**(17 - i) mod 11; the check
# character is indexed by the weighted digit sum mod 11.
_WEIGHTS = np.array([pow(2, 17 - i, 11) for i in range(17)], dtype=np.uint16)
_CHECK_CHARS = np.frombuffer(b"10X98765432", dtype=np.uint8)

# First two digits of a region code: the provinces, autonomous regions and municipalities
# (71 Taiwan, 81 Hong Kong, 82 Macao).
_PROVINCES = (11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46)
_PROVINCES += (50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82)
_PROVINCE_OK = np.zeros(256, dtype=bool)
_PROVINCE_OK[list(_PROVINCES)] = True

_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int32)

# Spelling variants: full-width digits and X, lower-case x; separators (every Unicode space,
# zero-width space, BOM, hyphens and dashes) are dropped. One table serves ``mask`` (str.translate)
# and ``_normalise_block`` (as a numpy look-up table), so both clean text identically.
_SEPARATORS = (
    "".join(c for c in map(chr, range(0x3001)) if c.isspace())
    + "\u200b\ufeff"
    + "-\u2010\u2011\u2012\u2013\u2014\u2212\uff0d"
)
_TRANSLATION: dict[int, str | None] = {
    **{0xFF10 + i: str(i) for i in range(10)},
    **{ord(c): "X" for c in "xＸｘ"},
    **{ord(c): None for c in _SEPARATORS},
}

_DROP, _BAD = 0, 1


def _clean_table() -> np.ndarray:
    """Look-up table from any code point to a cleaned byte: a digit, X, _DROP or _BAD."""
    table = np.full(0x110000, _BAD, dtype=np.uint8)
    table[[ord(c) for c in "0123456789X"]] = np.frombuffer(b"0123456789X", dtype=np.uint8)
    for code, replacement in _TRANSLATION.items():
        table[code] = _DROP if replacement is None else ord(replacement)
    return table


_CLEAN = _clean_table()

_ZERO = ord("0")
_X = ord("X")

# Values are converted to fixed-width numpy text of this many characters; a value that fills it may
# have been cut short and is redone on its own at full width.
_BLOCK_WIDTH = 24
_CHUNK_ROWS = 1 << 16

# ``mask`` shows at most 6 leading and 4 trailing characters, and caps the asterisks so that a huge
# garbage cell does not produce a huge message.
_MAX_STARS = 12


class Reason(IntEnum):
    """Why a value is not a valid identity number; checks run in this order, first failure wins."""

    OK = 0
    BLANK = 1
    BAD_CHARACTERS = 2
    BAD_LENGTH = 3
    BAD_CHECK = 4
    BAD_REGION = 5
    BAD_DATE = 6
    FUTURE_DATE = 7

    @property
    def message(self) -> str:
        """A short human reason, safe to show (it never includes the value)."""
        return _MESSAGES[self]


_MESSAGES = {
    Reason.OK: "valid",
    Reason.BLANK: "blank",
    Reason.BAD_CHARACTERS: "characters other than digits, or X not in last place",
    Reason.BAD_LENGTH: "not 18 characters, nor 15 for a legacy number",
    Reason.BAD_CHECK: "wrong check character",
    Reason.BAD_REGION: "region code not well formed",
    Reason.BAD_DATE: "birth date does not exist",
    Reason.FUTURE_DATE: "birth date is after today",
}

MISSING_CELL = "row has no cell in this column"


@dataclass(frozen=True)
class NormalisedBatch:
    """``normalise_many``'s result, row for row: canonical ids, validity and a ``Reason`` code."""

    ids: np.ndarray  # dtype 'S18': canonical ASCII bytes, b"" where invalid or blank
    valid: np.ndarray  # bool
    reasons: np.ndarray  # uint8 ``Reason`` codes, Reason.OK where valid

    @staticmethod
    def describe(code: int) -> str:
        """The human reason for a code of ``reasons``."""
        return Reason(code).message


@dataclass(frozen=True)
class Reject:
    """One bad cell of a file: where it is, the masked value and why it was rejected."""

    file: str
    line: int
    column: str
    masked: str
    reason: str


@dataclass(frozen=True)
class IdColumn:
    """One column of identity numbers read from a CSV file, one entry per data row."""

    file: str
    column: str
    lines: np.ndarray  # int64: the 1-based file line on which each data row starts
    ids: np.ndarray  # 'S18': canonical ids, b"" for blank or rejected rows
    valid: np.ndarray  # bool
    blank: np.ndarray  # bool: empty (or all-space) cells, not errors by themselves
    rejects: tuple[Reject, ...]  # every non-blank invalid row, in file order

    def values(self) -> list[str | None]:
        """The canonical id of every data row, None where not valid."""
        return [v.decode("ascii") or None for v in self.ids.tolist()]  # b"": not valid

    def rows(self) -> Iterator[tuple[int, str | None]]:
        """(line, canonical id or None) for every data row."""
        return zip(self.lines.tolist(), self.values(), strict=True)


def mask(raw: str) -> str:
    """A form of ``raw`` safe for messages and logs: e.g. ``150802********123X``.

    Cleaned as ``normalise`` cleans, then at most the first 6 and last 4 characters are shown (fewer
    for short values: a third and a quarter of the length), so never more than 10 characters of any
    input; unprintable characters become ``?``. Works on any string.
    """
    text = raw.translate(_TRANSLATION)
    n = len(text)
    head, tail = min(6, n // 3), min(4, n // 4)
    shown = text[:head] + "*" * min(n - head - tail, _MAX_STARS) + text[n - tail :]
    return shown if shown.isprintable() else "".join(c if c.isprintable() else "?" for c in shown)


def _check_bytes(body: np.ndarray) -> np.ndarray:
    """MOD 11-2 check characters (uint8) for rows of 17 ASCII digits (uint8, shape (n, 17))."""
    return _CHECK_CHARS[((body - _ZERO) @ _WEIGHTS) % 11]


def check_characters(bodies: np.ndarray) -> np.ndarray:
    """Vectorised ``check_character``, to generate or enumerate numbers in bulk: the check
    characters (dtype 'S1') of a 1-D array of 17-digit bodies (dtype 'S17')."""
    if bodies.dtype != np.dtype("S17") or bodies.ndim != 1:
        raise TypeError(
            f"check_characters takes a 1-D 'S17' array, not {bodies.dtype} {bodies.shape}"
        )
    digits = bodies.view(np.uint8).reshape(-1, 17)
    if not ((digits >= _ZERO) & (digits <= ord("9"))).all():
        raise ValueError("check_characters takes bodies of 17 ASCII digits")
    return _check_bytes(digits).view("S1")


def check_character(body17: str) -> str:
    """The ISO 7064 MOD 11-2 check character ('0'-'9' or 'X') for a number's first 17 digits."""
    if len(body17) != 17 or not (body17.isascii() and body17.isdigit()):
        raise InputError(f"identity number body {mask(body17)!r}: not 17 ASCII digits")
    return check_characters(np.array([body17], dtype="S17"))[0].decode("ascii")


def id_numbers(ids: np.ndarray) -> np.ndarray:
    """Canonical identifiers ('S18', b"" for none) as uint64: the first 17 digits, which decide
    the check character, as a number. Equal and ordered as the identifiers are, and 0 (below
    every region code) for none; sorting a million of them is a fraction of sorting the bytes."""
    digits = ids.view(np.uint8).reshape(-1, 18)
    numbers = np.zeros(len(ids), np.uint64)
    for k in range(17):
        numbers = numbers * np.uint64(10) + (digits[:, k] - np.uint8(_ZERO))
    numbers[digits[:, 0] == 0] = 0
    return numbers


def _number(digits: np.ndarray) -> np.ndarray:
    """The decimal value (int32) of each row of ASCII digits."""
    value = np.zeros(len(digits), dtype=np.int32)
    for k in range(digits.shape[1]):
        value = value * 10 + digits[:, k].astype(np.int32) - _ZERO
    return value


def _normalise_block(text: np.ndarray, today: date) -> tuple[np.ndarray, np.ndarray]:
    """Canonical ids (uint8, shape (n, 18), zero rows where invalid) and ``Reason`` codes (uint8)
    for a 1-D numpy text array (dtype 'U')."""
    n = len(text)
    width = max(text.dtype.itemsize // 4, 1)
    chars = _CLEAN[np.ascontiguousarray(text, dtype=f"U{width}").view(np.uint32).reshape(n, width)]
    position = np.arange(width)
    chars[position >= np.char.str_len(text)[:, None]] = _DROP  # numpy's trailing NUL padding
    keep = chars != _DROP
    length = keep.sum(axis=1)
    bad_chars = (chars == _BAD).any(axis=1)

    # Rows with separators: move the kept characters to the front, in order.
    loose = np.flatnonzero((keep & (position >= length[:, None])).any(axis=1))
    if len(loose):
        row, col = np.nonzero(keep[loose])
        packed = np.zeros((len(loose), width), dtype=np.uint8)
        packed[row, np.cumsum(keep[loose], axis=1)[row, col] - 1] = chars[loose][row, col]
        chars[loose] = packed

    canon = np.zeros((n, 18), dtype=np.uint8)
    canon[:, : min(width, 18)] = chars[:, :18]
    is15, is18 = length == 15, length == 18
    bad_chars |= (is15 | is18) & (canon[:, :17] == _X).any(axis=1)

    # Legacy 15-digit numbers: region + "19" + YYMMDD + sequence, then the check character.
    legacy = np.flatnonzero(is15)
    canon[legacy, 8:17] = canon[legacy, 6:15]
    canon[legacy, 6:8] = (ord("1"), ord("9"))
    check = _check_bytes(canon[:, :17])
    canon[legacy, 17] = check[legacy]

    province = (canon[:, 0] - _ZERO) * 10 + (canon[:, 1] - _ZERO)  # uint8; garbage wraps harmlessly
    bad_region = ~_PROVINCE_OK[province] | (canon[:, 2:6] == _ZERO).all(axis=1)

    year, month, day = _number(canon[:, 6:10]), _number(canon[:, 10:12]), _number(canon[:, 12:14])
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _DAYS_IN_MONTH[np.clip(month, 0, 12)] + (leap & (month == 2))
    bad_date = (year < 1) | (month < 1) | (month > 12) | (day < 1) | (day > month_days)
    future = year * 10000 + month * 100 + day > today.year * 10000 + today.month * 100 + today.day

    checks = [
        (length == 0, Reason.BLANK),
        (bad_chars, Reason.BAD_CHARACTERS),
        (~(is15 | is18), Reason.BAD_LENGTH),
        (canon[:, 17] != check, Reason.BAD_CHECK),
        (bad_region, Reason.BAD_REGION),
        (bad_date, Reason.BAD_DATE),
        (future, Reason.FUTURE_DATE),
    ]
    conditions, codes = zip(*checks, strict=True)
    reasons = np.select(conditions, codes, default=Reason.OK).astype(np.uint8)
    canon[reasons != Reason.OK] = 0
    return canon, reasons


def normalise_many(
    values: Sequence[str] | np.ndarray, *, today: date | None = None
) -> NormalisedBatch:
    """Normalise many values at once, exactly as ``normalise`` does one, without raising.

    Fixed-width numpy text and uint8 arithmetic, in chunks; only values too long for the block width
    (rare: heavily spaced or garbage cells) are redone one by one.
    """
    today = today or date.today()
    text = np.asarray(values, dtype=f"U{_BLOCK_WIDTH}")
    if text.ndim != 1:
        raise ValueError(f"normalise_many takes a 1-D sequence of strings, not {text.ndim}-D")
    text = np.ascontiguousarray(text)
    n = len(text)
    canon = np.zeros((n, 18), dtype=np.uint8)
    reasons = np.empty(n, dtype=np.uint8)
    for start in range(0, n, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, n)
        canon[start:stop], reasons[start:stop] = _normalise_block(text[start:stop], today)
    for i in np.flatnonzero(text.view(np.uint32).reshape(n, _BLOCK_WIDTH)[:, -1]):
        canon[i : i + 1], reasons[i : i + 1] = _normalise_block(
            np.array([values[i]], dtype=str), today
        )
    return NormalisedBatch(
        ids=canon.view("S18").reshape(n), valid=reasons == Reason.OK, reasons=reasons
    )


class Canonical(list[str]):
    """Identifiers known to be canonical: what ``canonical`` returns, and what code that read them
    through ``normalise_many`` may wrap its own in (a screening's millions of parents), so that
    the client does not check them twice."""


def canonical(values: Iterable[str], *, today: date | None = None) -> Canonical:
    """``values`` in canonical form, in order, exactly as the command line reads a file (every
    spelling ``normalise`` accepts). Raises ``InputError`` saying how many values are not identity
    numbers, why, and which comes first (masked), rather than let one silently never match."""
    if isinstance(values, Canonical):
        return values
    values = list(values)
    batch = normalise_many(values, today=today)
    bad = np.flatnonzero(~batch.valid)
    if len(bad):
        why = Counter(batch.describe(code) for code in batch.reasons[bad].tolist()).most_common()
        first = int(bad[0])
        raise InputError(
            f"{len(bad)} of {len(values)} identifiers are not identity numbers ("
            + "; ".join(f"{reason}: {n}" for reason, n in why)
            + f"), the first at index {first} ({mask(str(values[first]))!r}); correct or drop "
            "them (psi.ids.normalise_many says which, with why)"
        )
    return Canonical(value.decode("ascii") for value in batch.ids.tolist())


def normalise(raw: str, *, today: date | None = None, source: Source | None = None) -> str:
    """The canonical 18-character upper-case form of an identity number.

    Accepts full-width digits and X, lower-case x, spaces and hyphens, and legacy 15-digit numbers.
    Raises ``InputError`` (with the masked number and ``source``) for wrong characters or length,
    a wrong check character, a region code that is not well formed, or a birth date that does not
    exist or is after ``today`` (default: the system date).
    """
    batch = normalise_many([raw], today=today)
    code = batch.reasons[0]
    if code == Reason.BLANK:
        raise InputError("identity number is blank", source)
    if code != Reason.OK:
        raise InputError(f"identity number {mask(raw)!r}: {batch.describe(code)}", source)
    return batch.ids[0].decode("ascii")


def birth_date(id18: str) -> date:
    """The birth date encoded in an identity number (any spelling ``normalise`` accepts)."""
    canonical = normalise(id18)
    return date(int(canonical[6:10]), int(canonical[10:12]), int(canonical[12:14]))


def sex(id18: str) -> str:
    """ "M" or "F": the sequence number (digits 15-17) is odd for men, even for women."""
    return "M" if int(normalise(id18)[16]) % 2 else "F"


def age_on(id18: str, on: date) -> int:
    """Completed years of age on the date ``on``.

    A birthday is complete on the day itself; someone born on 29 February becomes a year older on
    1 March in non-leap years (28 February is still the day before the birthday). Raises
    ``InputError`` if ``on`` is before the birth date, rather than return a negative age.
    """
    born = birth_date(id18)
    if on < born:
        raise InputError(f"identity number {mask(id18)!r}: born after {on.isoformat()}")
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def _column_index(header: list[str], column: str, file: str) -> int:
    """Position of ``column`` in a header row (names compared without surrounding spaces)."""
    names = [name.strip() for name in header]
    found = [i for i, name in enumerate(names) if name == column.strip()]
    if len(found) == 1:
        return found[0]
    if found:
        raise InputError(
            f"column {column!r} appears {len(found)} times in the header", Source(file)
        )
    # A file without a header row has data in its first row: never echo a number from it.
    looks_like_data = [sum(c.isdigit() for c in name) >= 7 for name in names]
    shown = ", ".join(
        repr(mask(name) if data else name)
        for name, data in zip(names, looks_like_data, strict=True)
    )
    hint = " (the first row looks like data: does the file have a header row?)"
    raise InputError(
        f"no column {column!r}; the columns are: {shown}" + (hint if any(looks_like_data) else ""),
        Source(file),
    )


_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what ends a line in a file read with newline=""


def _cells(rows: list[list[str]], index: int) -> list[str | None]:
    """The rows' cells in a column: None for a row that has fields but too few to reach the
    column (an empty line is a row of blank cells). Most rows are full: one pass takes them."""
    width = index + 1
    if not rows or min(map(len, rows)) >= width:
        return list(map(itemgetter(index), rows))
    return [row[index] if index < len(row) else None if row else "" for row in rows]


def _id_column(file: str, column: str, starts: list[int], found: list[str | None], today: date):
    """One chunk of an identifier column through ``normalise_many``: its arrays and rejects."""
    missing = np.array([cell is None for cell in found], dtype=bool)
    cells = [cell or "" for cell in found]
    batch = normalise_many(cells, today=today)
    empty = (batch.reasons == Reason.BLANK) & ~missing
    rejects = [
        Reject(
            file,
            starts[i],
            column,
            mask(cells[i]),
            MISSING_CELL if missing[i] else batch.describe(batch.reasons[i]),
        )
        for i in np.flatnonzero(~batch.valid & ~empty)
    ]
    return batch.ids, batch.valid, empty, rejects


def _read_columns(
    reader: Iterator[list[str]], file: str, ids: Sequence[str], cells: Sequence[str], today: date
) -> tuple[dict[str, IdColumn], dict[str, list[str | None]]]:
    """``read_columns`` on an open CSV reader: chunks of rows through ``normalise_many``."""
    header = next(reader, None)
    if header is None:
        raise InputError("the file is empty (no header row)", Source(file))
    id_at = {c: _column_index(header, c, file) for c in ids}
    cell_at = {c: _column_index(header, c, file) for c in cells}
    lines: list[np.ndarray] = []
    parts: dict[str, list] = {c: [] for c in ids}
    plain: dict[str, list[str | None]] = {c: [] for c in cells}
    start = reader.line_num + 1
    while True:
        rows = list(islice(reader, _CHUNK_ROWS))
        if not rows:
            break
        end = reader.line_num  # the last line of the chunk's last row
        if end - start + 1 == len(rows):  # every row on one line: the common case
            starts = list(range(start, end + 1))
        else:  # quoted cells spanning lines: a row starts after the line breaks inside earlier ones
            starts, line = [], start
            for row in rows:
                starts.append(line)
                line += 1 + sum(len(_LINE_BREAK.findall(cell)) for cell in row)
        start = end + 1
        lines.append(np.array(starts, dtype=np.int64))
        for column, index in id_at.items():
            found = _cells(rows, index)
            parts[column].append(_id_column(file, column, starts, found, today))
        for column, index in cell_at.items():
            plain[column] += _cells(rows, index)
    every = np.concatenate(lines or [np.zeros(0, dtype=np.int64)])

    def joined(column: str, part: int, empty: np.ndarray) -> np.ndarray:
        return np.concatenate([p[part] for p in parts[column]] or [empty])

    columns = {
        column: IdColumn(
            file=file,
            column=column,
            lines=every,
            ids=joined(column, 0, np.zeros(0, dtype="S18")),
            valid=joined(column, 1, np.zeros(0, dtype=bool)),
            blank=joined(column, 2, np.zeros(0, dtype=bool)),
            rejects=tuple(r for p in parts[column] for r in p[3]),
        )
        for column in ids
    }
    return columns, plain


def read_ids(
    path: str | os.PathLike[str],
    column: str,
    *,
    today: date | None = None,
    encoding: str | None = None,
) -> IdColumn:
    """Read and normalise one column of a file with a header row: CSV in ``encoding`` (UTF-8,
    with or without BOM, by default; GB18030 or GBK) or a workbook (``psi.tabular``).

    Every data row is kept with its line number; blank cells are counted apart; every other bad cell
    becomes a ``Reject``. Rows stream through ``normalise_many`` in chunks. A file that cannot be
    read, is not in the encoding or lacks the column is an ``InputError`` naming the file.
    """
    return read_columns(path, [column], today=today, encoding=encoding)[0][column]


def read_columns(
    path: str | os.PathLike[str],
    ids: Sequence[str],
    cells: Sequence[str] = (),
    *,
    today: date | None = None,
    encoding: str | None = None,
) -> tuple[dict[str, IdColumn], dict[str, list[str | None]]]:
    """``read_ids`` of several identifier columns, and the raw cells of others (one per data row,
    aligned with ``IdColumn.lines``; None where a row has no cell in the column), in one pass over
    the file: a million-row roster is parsed once, not once a column."""
    with open_rows(path, encoding) as reader:
        return _read_columns(reader, os.fspath(path), ids, cells, today or date.today())


def write_rejects(path: str | os.PathLike[str], rejects: Iterable[Reject]) -> None:
    """Write rejects as CSV ``file,line,column,masked_value,reason`` for the data owner to fix."""
    try:
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "line", "column", "masked_value", "reason"])
            writer.writerows((r.file, r.line, r.column, r.masked, r.reason) for r in rejects)
    except OSError as exc:
        raise InputError(f"cannot write the file: {exc.strerror}", Source(os.fspath(path))) from exc


def summary(result: IdColumn) -> str:
    """One paragraph of counts for a column read by ``read_ids``: rows, valid, blank, rejected."""
    by_reason = Counter(reject.reason for reject in result.rejects).most_common()
    details = "; ".join(f"{reason}: {count}" for reason, count in by_reason)
    return (
        f"{result.file}, column {result.column!r}: {len(result.lines)} data rows, "
        f"{int(result.valid.sum())} valid, {int(result.blank.sum())} blank, "
        f"{len(result.rejects)} rejected" + (f" ({details})" if details else "") + "."
    )


# 15 or more digits (any script: \d matches full-width and other decimal digits), separated by
# anything but letters, however much of it: spaces, double spaces, hyphens, dots, slashes,
# underscores, commas. Where a full (17 digits + check) or legacy (15 digits) number may hide.
_LOOKALIKE = re.compile(r"\d(?:[\W_]*\d){14}")


def contains_identifier(text: str) -> bool:
    """Whether free text may hold an identity number, so that logs and messages can refuse it.

    NFKC first folds the look-alike spellings of digits and separators (full-width forms,
    circled and superscript digits, ideographic and other spaces) into plain ones. Digits
    separated by letters are not a number; digits separated by anything else are counted
    together, so that ``150102_19800517_1237`` and ``150102.19800517.123X`` are caught as well
    as ``150102 19800517 1237``. A price list or two dates in a row may be caught too: the cost of
    never letting a number through is that such text must be reworded."""
    return _LOOKALIKE.search(unicodedata.normalize("NFKC", text)) is not None
