"""Civil affairs' roster: the unique, valid parent identifiers to query, and the rows rejected."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date

from psi.ids import Reject, read_ids, summary

PARENT_COLUMNS = ("father_id", "mother_id")


@dataclass(frozen=True)
class Parents:
    ids: list[str]  # canonical, unique, sorted: what is queried
    rejects: list[Reject]  # invalid parent identifiers, with file, line and masked value
    summaries: list[str]


def read_parents(path: str | os.PathLike[str], today: date | None = None) -> Parents:
    unique: set[str] = set()
    rejects: list[Reject] = []
    summaries = []
    for column in PARENT_COLUMNS:
        read = read_ids(path, column, today=today)
        unique.update(x.decode("ascii") for x in read.ids[read.valid].tolist())
        rejects.extend(read.rejects)
        summaries.append(summary(read))
    rejects.sort(key=lambda r: (r.line, r.column))
    return Parents(sorted(unique), rejects, summaries)
