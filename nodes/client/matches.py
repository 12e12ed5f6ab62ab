"""A query's matches as an officer's file: one CSV row, or one JSON object, per matched record,
with where it came from; the record handle is what ``psi disputes raise`` takes."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from nodes.client.client import QueryResult
from psi.labels import REGISTER_COLUMNS

MATCH_COLUMNS = (
    *REGISTER_COLUMNS[:-1],
    "record_handle",
    "node",
    "dataset",
    "key_epoch",
    "table_version",
)


def match_rows(results: Sequence[QueryResult]) -> Iterator[tuple[Any, ...]]:
    """One tuple per matched record, in ``MATCH_COLUMNS`` order (blank where a field is not
    granted or not set)."""
    for result in results:
        for identifier, label in result.matches:
            for r in label.records:
                yield (
                    identifier,
                    r.status,
                    r.start.isoformat() if r.start else "",
                    r.end.isoformat() if r.end else "",
                    r.disability_grade or "",
                    r.disability_kind or "",
                    r.handle.hex() if r.handle else "",
                    result.node,
                    result.dataset,
                    result.epoch,
                    result.table_version,
                )


def write_csv(handle: TextIO, results: Sequence[QueryResult]) -> int:
    """The matches as CSV with a header row; returns the number of records."""
    writer = csv.writer(handle)
    writer.writerow(MATCH_COLUMNS)
    rows = 0
    for row in match_rows(results):
        writer.writerow(row)
        rows += 1
    return rows


def write_json(handle: TextIO, results: Sequence[QueryResult]) -> int:
    """The matches as one JSON document: each dataset asked (version, counts) and the records
    as objects keyed by ``MATCH_COLUMNS``; returns the number of records."""
    records = [dict(zip(MATCH_COLUMNS, row, strict=True)) for row in match_rows(results)]
    document = {
        "datasets": [
            {
                "node": r.node,
                "dataset": r.dataset,
                "key_epoch": r.epoch,
                "table_version": r.table_version,
                "queried": r.queried,
                "matched": len(r.matches),
                "evaluated": r.evaluated,
            }
            for r in results
        ],
        "matches": records,
    }
    json.dump(document, handle, indent=1, ensure_ascii=False)
    handle.write("\n")
    return len(records)
