"""Civil affairs' roster (from the household-registration base): children, their parents'
identifiers, and every bad cell, masked. Columns: ``child_id,child_name,father_id,mother_id,
region_code``; the child's name is never read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import NamedTuple

from psi.ids import Reject, mask, read_columns

CHILD_COLUMN = "child_id"
PARENT_COLUMNS = ("father_id", "mother_id")
REGION_COLUMN = "region_code"


@dataclass(frozen=True)
class Unknown:
    """A parent whose roster identifier is blank or invalid, so nobody could be asked."""

    why: str  # "blank", or why the identifier is invalid (psi.ids.Reason message)


class RosterChild(NamedTuple):
    """A roster row with a valid child identifier: what the run needs of it, nothing more (the
    child's name is never read). A tuple: a province's million are made in a fraction of the
    time frozen dataclasses take."""

    child_id: str  # canonical
    region_code: str
    father: str | Unknown  # canonical identifier, or why there is none
    mother: str | Unknown


@dataclass(frozen=True)
class Roster:
    """The usable rows of a roster file and every bad cell, masked."""

    path: Path
    children: tuple[RosterChild, ...]
    rejects: tuple[Reject, ...]


def read_roster(path: str | os.PathLike[str], as_of: date) -> Roster:
    """Children with canonical identifiers and their parents' identifiers or why they are
    unusable. Invalid, blank or repeated child identifiers and invalid parent identifiers are
    rejects; identifiers are checked as of ``as_of`` (a child born later is not yet one)."""
    path = Path(path)
    columns, plain = read_columns(
        path, (CHILD_COLUMN, *PARENT_COLUMNS), (REGION_COLUMN,), today=as_of
    )
    regions = [(cell or "").strip() for cell in plain[REGION_COLUMN]]
    rejects = [r for column in columns.values() for r in column.rejects]
    why = {(r.line, r.column): r.reason for r in rejects}
    kids, fathers, mothers = (columns[c] for c in (CHILD_COLUMN, *PARENT_COLUMNS))

    def unknown(column: str, line: int, blank: bool) -> Unknown:
        return Unknown("blank" if blank else f"invalid ({why[line, column]})")

    children, first_line = [], {}
    for i, (line, child, father, mother, region) in enumerate(
        zip(
            kids.lines.tolist(),
            kids.values(),
            fathers.values(),
            mothers.values(),
            regions,
            strict=True,
        )
    ):
        if child is None:  # invalid ones are rejects already; an empty row is nothing
            empty = fathers.blank[i] and mothers.blank[i] and not region
            if kids.blank[i] and not empty:
                rejects.append(Reject(str(path), line, CHILD_COLUMN, "", "blank"))
            continue
        if child in first_line:
            reason = f"repeats the child of line {first_line[child]}"
            rejects.append(Reject(str(path), line, CHILD_COLUMN, mask(child), reason))
            continue
        first_line[child] = line
        children.append(
            RosterChild(
                child,
                region,
                father or unknown(PARENT_COLUMNS[0], line, bool(fathers.blank[i])),
                mother or unknown(PARENT_COLUMNS[1], line, bool(mothers.blank[i])),
            )
        )
    order = (CHILD_COLUMN, *PARENT_COLUMNS)
    rejects.sort(key=lambda r: (r.line, order.index(r.column)))
    return Roster(path, tuple(children), tuple(rejects))


def parent_ids(roster: Roster) -> list[str]:
    """The distinct valid parent identifiers of a roster, sorted: what a plain query sends."""
    return sorted({p for c in roster.children for p in (c.father, c.mother) if isinstance(p, str)})
