"""Civil affairs' roster (from the household-registration base): children, their parents'
identifiers, and every bad cell, masked. Columns: ``child_id,child_name,father_id,mother_id,
region_code``; the child's name and region go to the officer's results (they are civil affairs'
own), never to a node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import NamedTuple

import numpy as np

from psi.ids import Canonical, IdColumn, Reject, id_numbers, mask, read_columns

CHILD_COLUMN = "child_id"
PARENT_COLUMNS = ("father_id", "mother_id")
REGION_COLUMN = "region_code"
NAME_COLUMN = "child_name"


@dataclass(frozen=True)
class Unknown:
    """A parent whose roster identifier is blank or invalid, so nobody could be asked."""

    why: str  # "blank", or why the identifier is invalid (psi.ids.Reason message)


class RosterChild(NamedTuple):
    """A roster row with a valid child identifier: what the run needs of it, nothing more. A
    tuple: a province's million are made in a fraction of the time frozen dataclasses take."""

    child_id: str  # canonical
    region_code: str
    father: str | Unknown  # canonical identifier, or why there is none
    mother: str | Unknown
    name: str  # for the officer's results only


@dataclass(frozen=True)
class Roster:
    """The usable rows of a roster file and every bad cell, masked. ``child_ids``, ``fathers``
    and ``mothers`` hold the children's and their parents' canonical identifiers as bytes
    ('S18', b"" where unknown), for work done on arrays."""

    path: Path
    children: tuple[RosterChild, ...]
    rejects: tuple[Reject, ...]
    child_ids: np.ndarray
    fathers: np.ndarray
    mothers: np.ndarray


def read_roster(path: str | os.PathLike[str], as_of: date, encoding: str | None = None) -> Roster:
    """Children with canonical identifiers and their parents' identifiers or why they are
    unusable. Invalid, blank or repeated child identifiers and invalid parent identifiers are
    rejects; identifiers are checked as of ``as_of`` (a child born later is not yet one). The
    file is CSV in ``encoding`` (``psi.tabular``), or a workbook."""
    path = Path(path)
    columns, plain = read_columns(
        path,
        (CHILD_COLUMN, *PARENT_COLUMNS),
        (REGION_COLUMN, NAME_COLUMN),
        today=as_of,
        encoding=encoding,
    )
    regions = [(cell or "").strip() for cell in plain[REGION_COLUMN]]
    names = plain[NAME_COLUMN]
    rejects = [r for column in columns.values() for r in column.rejects]
    kids, fathers, mothers = (columns[c] for c in (CHILD_COLUMN, *PARENT_COLUMNS))
    lines = kids.lines

    # A child's first row counts; a repeat is a reject naming that row.
    valid = np.flatnonzero(kids.valid)
    _, first, which = np.unique(id_numbers(kids.ids[valid]), return_index=True, return_inverse=True)
    kept = np.zeros(len(lines), bool)
    kept[valid[first]] = True
    for row, earlier in zip(
        np.flatnonzero(kids.valid & ~kept).tolist(),
        lines[valid[first[which]]][~kept[valid]].tolist(),
        strict=True,
    ):
        child = kids.ids[row].decode("ascii")
        reason = f"repeats the child of line {earlier}"
        rejects.append(Reject(str(path), int(lines[row]), CHILD_COLUMN, mask(child), reason))
    # A blank child identifier is a reject unless the whole row is empty (invalid ones are
    # rejects already).
    region_blank = np.array([not region for region in regions], bool)
    empty = fathers.blank & mothers.blank & region_blank
    for row in np.flatnonzero(kids.blank & ~empty).tolist():
        rejects.append(Reject(str(path), int(lines[row]), CHILD_COLUMN, "", "blank"))

    rows = np.flatnonzero(kept)
    why = {(r.line, r.column): r.reason for r in rejects}

    def parents(column: IdColumn) -> list[str | Unknown]:
        found: list[str | Unknown] = [v.decode("ascii") for v in column.ids[rows].tolist()]
        for i in np.flatnonzero(~column.valid[rows]).tolist():
            row = rows[i]
            blank = bool(column.blank[row])
            found[i] = Unknown(
                "blank" if blank else f"invalid ({why[int(lines[row]), column.column]})"
            )
        return found

    child_ids = kids.ids[rows]
    children = tuple(
        map(
            RosterChild,
            [v.decode("ascii") for v in child_ids.tolist()],
            [regions[row] for row in rows.tolist()],
            parents(fathers),
            parents(mothers),
            [(names[row] or "").strip() for row in rows.tolist()],
        )
    )
    order = (CHILD_COLUMN, *PARENT_COLUMNS)
    rejects.sort(key=lambda r: (r.line, order.index(r.column)))
    return Roster(path, children, tuple(rejects), child_ids, fathers.ids[rows], mothers.ids[rows])


def parents_of(
    fathers: np.ndarray, mothers: np.ndarray
) -> tuple[Canonical, np.ndarray, np.ndarray]:
    """The distinct valid identifiers among ``fathers`` and ``mothers`` ('S18', b"": unknown,
    as ``Roster`` holds them), sorted, and each child's father and mother as rows of that list
    (-1: unknown), by one sort of ``psi.ids.id_numbers``."""
    cells = np.stack([fathers, mothers], axis=1).reshape(-1)
    distinct, first, inverse = np.unique(id_numbers(cells), return_index=True, return_inverse=True)
    if len(distinct) and distinct[0] == 0:
        first, inverse = first[1:], inverse - 1
    pairs = inverse.reshape(-1, 2).astype(np.intp)
    distinct_ids = Canonical(v.decode("ascii") for v in cells[first].tolist())
    return distinct_ids, pairs[:, 0], pairs[:, 1]


def parent_ids(roster: Roster) -> Canonical:
    """The distinct valid parent identifiers of a roster, sorted: what a plain query sends."""
    return parents_of(roster.fathers, roster.mothers)[0]
