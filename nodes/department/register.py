"""A department's register, read from a CSV file or a SQL query into canonical records.

Canonical columns: ``id_number,status,start_date,end_date,disability_grade,disability_kind,
record_ref``. A node config may map them to the source's own column names. Every bad row is
reported with its line (or result-row number) and column, identifiers masked; good rows are kept.
People with several records (two statuses, two terms) are grouped into one entry.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from itertools import islice
from typing import Any

from psi.errors import InputError, KinlinkError, Source
from psi.ids import Reject, mask, normalise_many
from psi.labels import REGISTER_COLUMNS as CANONICAL
from psi.labels import Record
from psi.tabular import open_rows

REQUIRED = ("id_number", "status", "record_ref")
_CHUNK = 65_536

Row = tuple[int, Mapping[str, str]]


@dataclass(frozen=True)
class Entry:
    """One record of the register with the department's own reference (never sent anywhere)."""

    record: Record
    ref: str


@dataclass
class Register:
    """Canonical ids in first-seen order, the entries of each, and every rejected row."""

    source: str
    rows: int = 0
    people: dict[str, list[Entry]] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)
    undeclared: Counter[str] = field(default_factory=Counter)  # status -> rows left out

    def summary(self) -> str:
        records = sum(len(e) for e in self.people.values())
        return (
            f"{self.source}: {self.rows} rows, {records} records of {len(self.people)} people, "
            f"{len(self.rejects)} rejected"
        )


class _CellError(ValueError):
    def __init__(self, column: str, reason: str):
        self.column, self.reason = column, reason
        super().__init__(reason)


def _parse(
    cells: Mapping[str, str], column: str, parse: Callable[[str], Any], expected: str
) -> Any:
    text = cells.get(column, "")
    try:
        return parse(text) if text else None
    except ValueError:
        raise _CellError(column, f"{column} is not {expected}") from None


# Which cell a Record validation message is about (psi.labels words its messages this way).
_RECORD_COLUMNS = (
    ("ends before", "end_date"),
    ("grade", "disability_grade"),
    ("kind", "disability_kind"),
    ("status", "status"),
)


def _record(cells: Mapping[str, str]) -> Record:
    """A Record from the non-identifier cells. Messages never echo a cell: a shifted column could
    put an identity number where a date should be."""
    start = _parse(cells, "start_date", date.fromisoformat, "an ISO date (YYYY-MM-DD)")
    end = _parse(cells, "end_date", date.fromisoformat, "an ISO date (YYYY-MM-DD)")
    grade = _parse(cells, "disability_grade", int, "a whole number")
    try:
        return Record(
            status=cells["status"],
            start=start,
            end=end,
            disability_grade=grade,
            disability_kind=cells.get("disability_kind") or None,
        )
    except InputError as exc:
        column = next((c for word, c in _RECORD_COLUMNS if word in str(exc)), "status")
        raise _CellError(column, str(exc)) from None


def read_rows(
    rows: Iterator[Row],
    source: str,
    today: date | None = None,
    statuses: Collection[str] | None = None,
) -> Register:
    """Canonical register from (line, canonical-column cells) rows, in chunks. A row whose status
    is not among ``statuses`` (the dataset's declared ones) is rejected: a dataset publishes only
    what its catalogue entry, and its legal basis, say it holds."""
    register = Register(source)
    declared = ", ".join(statuses or ())
    while chunk := list(islice(rows, _CHUNK)):
        register.rows += len(chunk)
        batch = normalise_many([cells.get("id_number", "") for _, cells in chunk], today=today)
        for (line, cells), ok, canon, code in zip(
            chunk, batch.valid, batch.ids, batch.reasons, strict=True
        ):
            raw_id = cells.get("id_number", "")
            if not ok:
                register.rejects.append(
                    Reject(source, line, "id_number", mask(raw_id), batch.describe(code))
                )
                continue
            ref = cells.get("record_ref", "").strip()
            if not ref:
                register.rejects.append(
                    Reject(source, line, "record_ref", mask(raw_id), "record_ref is blank")
                )
                continue
            try:
                record = _record(cells)
            except _CellError as exc:
                register.rejects.append(Reject(source, line, exc.column, mask(raw_id), exc.reason))
                continue
            if statuses is not None and record.status not in statuses:
                register.undeclared[record.status] += 1
                register.rejects.append(
                    Reject(
                        source,
                        line,
                        "status",
                        mask(raw_id),
                        f"{record.status} is not among the dataset's statuses ({declared})",
                    )
                )
                continue
            register.people.setdefault(canon.decode("ascii"), []).append(Entry(record, ref))
    return register


def _mapped(header: list[str], columns: Mapping[str, str], source: str) -> dict[str, int]:
    """Position of each canonical column in the source header; a missing required one is an
    error naming the columns the source does have."""
    positions = {}
    for canonical in CANONICAL:
        name = columns.get(canonical, canonical)
        if name in header:
            positions[canonical] = header.index(name)
        elif canonical in REQUIRED:
            raise InputError(
                f"no column {name!r} (for {canonical}); the header has: {', '.join(header)}",
                Source(source, 1),
            )
    return positions


def csv_rows(
    path: str | os.PathLike[str], columns: Mapping[str, str], encoding: str | None = None
) -> Iterator[Row]:
    """Rows of a CSV register (UTF-8 by default, or GB18030/GBK) or of a workbook's first sheet
    (``psi.tabular``), with their 1-based line numbers."""
    source = os.fspath(path)
    with open_rows(path, encoding) as reader:
        header = next(reader, None)
        if header is None:
            raise InputError("the file is empty (no header row)", Source(source))
        positions = _mapped([h.strip() for h in header], columns, source)
        line = reader.line_num + 1
        for row in reader:
            if any(cell.strip() for cell in row):
                yield (
                    line,
                    {c: row[i].strip() if i < len(row) else "" for c, i in positions.items()},
                )
            line = reader.line_num + 1


def sql_rows(url: str, query: str, columns: Mapping[str, str]) -> Iterator[Row]:
    """Rows of a SQL query; the 'line' is the 1-based result row. ``sqlite:///path`` runs on the
    standard library; any other URL (PostgreSQL, ...) goes through SQLAlchemy if installed."""
    source = f"{url.split('://')[0]} query"
    if url.startswith("sqlite:///"):
        try:
            connection = sqlite3.connect(f"file:{url[len('sqlite:///') :]}?mode=ro", uri=True)
            cursor = connection.execute(query)
        except sqlite3.Error as exc:
            raise InputError(f"the query failed: {exc}", Source(source)) from exc
        header = [d[0] for d in cursor.description]
        fetch = cursor.fetchmany
    else:
        try:
            import sqlalchemy
        except ImportError as exc:
            raise KinlinkError(
                f"{url.split('://')[0]} sources need SQLAlchemy and a driver: "
                "pip install 'kinlink[sql]'"
            ) from exc
        try:
            engine = sqlalchemy.create_engine(url)
            connection = engine.connect()
            result = connection.execute(sqlalchemy.text(query))
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise InputError(f"the query failed: {exc.__class__.__name__}", Source(source)) from exc
        header = list(result.keys())
        fetch = result.fetchmany
    positions = _mapped(header, columns, source)
    number = 0
    try:
        while batch := fetch(_CHUNK):
            for row in batch:
                number += 1
                yield (
                    number,
                    {
                        c: "" if row[i] is None else str(row[i]).strip()
                        for c, i in positions.items()
                    },
                )
    finally:
        connection.close()
