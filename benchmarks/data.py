"""Synthetic inputs shared by the matching benchmarks: a roster and a register that overlap.

Identifiers are valid canonical 18-character resident identity numbers (Inner Mongolia region
codes, birth dates 1950-2005, check characters from ``psi.ids.check_characters``), unique within a
draw. Each register person has one ``imprisoned`` record with every label field, so a label is 31
bytes and a table entry 75 bytes (docs/tables.md).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from nodes.department.register import CANONICAL
from psi.ids import check_characters
from psi.labels import Record, encode_label, record_handle

REGIONS = np.array([150102, 150203, 150302, 150402, 150502, 150602, 150702, 150802, 150902])
FIRST_BIRTH = date(1950, 1, 1)
BIRTH_DAYS = (date(2005, 12, 31) - FIRST_BIRTH).days + 1
STATUS = "imprisoned"


def identifiers(n: int, seed: int = 1) -> list[str]:
    """``n`` distinct valid identifiers, in random order."""
    rng = np.random.default_rng(seed)
    bodies = np.empty(0, np.int64)
    while len(bodies) < n:
        births = np.datetime64(FIRST_BIRTH) + rng.integers(0, BIRTH_DAYS, 2 * n)
        ymd = births.astype("datetime64[D]").astype(str)  # YYYY-MM-DD
        ymd = np.char.replace(ymd, "-", "").astype(np.int64)
        drawn = (
            rng.choice(REGIONS, 2 * n) * 10**11 + ymd * 1000 + rng.integers(1, 1000, 2 * n)
        ).astype(np.int64)
        bodies = np.unique(np.concatenate([bodies, drawn]))
    bodies = rng.permutation(bodies)[:n].astype("S17")
    full = np.char.add(bodies, check_characters(bodies))
    return full.astype(str).tolist()


def overlapping(size: int, overlap: float = 0.5, seed: int = 1) -> tuple[list[str], list[str]]:
    """(roster, register) of ``size`` identifiers each, sharing ``round(size * overlap)``; the
    shared ones sit at random places in both."""
    shared = round(size * overlap)
    pool = identifiers(2 * size - shared, seed)
    register = pool[:size]
    roster = pool[size - shared :]
    order = np.random.default_rng(seed + 1).permutation(size)
    return [roster[i] for i in order], register


@dataclass(frozen=True)
class Row:
    """One register row in canonical columns (``nodes.department.register.CANONICAL``)."""

    id_number: str
    record: Record
    record_ref: str


def register_rows(ids: list[str], seed: int = 2) -> Iterator[Row]:
    """One imprisonment record (start, end, handle reference) per identifier, made one at a time
    (a million rows as objects would weigh on the memory measured around them)."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, 3650, len(ids)).tolist()
    lengths = rng.integers(180, 3650, len(ids)).tolist()
    first = date(2015, 1, 1)
    for i, (x, s, d) in enumerate(zip(ids, starts, lengths, strict=True)):
        yield Row(x, Record(STATUS, first + timedelta(s), first + timedelta(s + d)), f"PR{i:08d}")


def labels(rows: list[Row], handle_key: bytes) -> list[bytes]:
    """Encoded labels with every field granted, as a department node seals them."""
    return [
        encode_label([replace(r.record, handle=record_handle(handle_key, r.record_ref))])
        for r in rows
    ]


def write_register(path: Path, rows: Iterable[Row]) -> Path:
    """The rows as a CSV register in canonical columns."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CANONICAL)
        for r in rows:
            rec = r.record
            writer.writerow((r.id_number, rec.status, rec.start, rec.end, "", "", r.record_ref))
    return path
