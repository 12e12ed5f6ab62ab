"""``psi stats``: how many of a file's identifiers a node's dataset holds, and the sums or
per-group totals of the file's own values over them, without either side learning who matched
(docs/statistics.md).

    psi stats --federation F --node prison --dataset prison --ids parents.csv --purpose statistics
    psi stats ... --values days_supported --group-by county --out totals.csv --json totals.json

Only ids: PSI-cardinality (the node learns only how many ids were sent). With ``--values``: the
intersection-sum. With ``--group-by``: a count per group, and with ``--values`` a sum per group
too, in one run.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from nodes.cli.inputs import encoding_option, read_id_file
from nodes.cli.output import STDOUT, status_stream, writing
from nodes.cli.query import EXIT_NO_MATCHES, EXIT_NODE_FAILED
from nodes.client.client import Client, DatasetNotOffered, NodeError
from nodes.client.statistics import StatsClient, StatsResult
from nodes.shared.config import STATISTICS_PURPOSE, load_federation
from psi.errors import InputError, Source
from psi.ids import Canonical, IdColumn, contains_identifier, mask
from psi.stats import MAX_VALUE

MAX_PROBLEMS = 5  # cells listed in one error message


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "stats",
        help="count (and sum) a file's identifiers in a node's dataset without learning who",
        description="Exit status: 0 a result, 1 an empty intersection, 2 bad input, "
        "3 node failure.",
    )
    parser.add_argument("--federation", type=Path, required=True, help="federation.toml")
    parser.add_argument("--node", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--ids", type=Path, required=True, help="CSV file of identity numbers")
    parser.add_argument("--column", default="id_number", help="column of --ids (default id_number)")
    parser.add_argument("--values", metavar="COLUMN", help="sum this column (integers >= 0)")
    parser.add_argument("--group-by", metavar="COLUMN", help="one total per value of this column")
    parser.add_argument(
        "--purpose",
        required=True,
        help=f"a statistics purpose granted by the node (e.g. {STATISTICS_PURPOSE})",
    )
    parser.add_argument("--legal-basis", default="", help="reference recorded with the query")
    parser.add_argument("--out", type=Path, help=f"CSV of the totals to write ({STDOUT}: stdout)")
    parser.add_argument("--json", type=Path, help=f"JSON of the result to write ({STDOUT}: stdout)")
    parser.add_argument(
        "--rejects", type=Path, help="invalid identifiers, masked (default: beside --out)"
    )
    encoding_option(parser, "--ids")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    federation = load_federation(args.federation)
    wanted = [c for c in (args.values, args.group_by) if c]
    out = args.out or args.json
    column, cells = read_id_file(
        args.ids, args.column, out, args.rejects, wanted, encoding=args.encoding
    )
    rows = np.flatnonzero(column.valid)
    if not len(rows):
        raise InputError(
            f"no valid identifier in column {args.column!r}: nothing to count",
            Source(str(args.ids)),
        )
    values = _values(args, column, rows, cells) if args.values else None
    groups = _groups(args, column, rows, cells) if args.group_by else None
    ids = _distinct(column, rows, keyed=values is not None or groups is not None)
    with Client(federation) as client:
        try:
            result = StatsClient(client).run(
                args.node,
                args.dataset,
                ids,
                purpose=args.purpose,
                values=values,
                groups=groups,
                legal_basis_ref=args.legal_basis,
            )
        except DatasetNotOffered as exc:
            raise InputError(str(exc)) from None
        except NodeError as exc:
            print(f"psi stats: node failed: {exc}", file=sys.stderr)
            return EXIT_NODE_FAILED
    print(_report(result, args.values), file=status_stream(args.out) if args.out else sys.stdout)
    if args.out:
        with writing(args.out) as handle:
            _write_csv(handle, result)
    if args.json:
        with writing(args.json) as handle:
            _write_json(handle, result, args.values, args.group_by)
    return 0 if result.intersection else EXIT_NO_MATCHES


Cells = dict[str, list[str | None]]


def _cells(args: argparse.Namespace, column: IdColumn, rows: np.ndarray, name: str, read: Cells):
    """The cells of column ``name`` on the rows with a valid identifier; a row without one is an
    error (never echoing a cell: it may hold anything)."""
    picked = [read[name][i] for i in rows.tolist()]
    missing = [
        column.lines[i] for i, c in zip(rows.tolist(), picked, strict=True) if not (c and c.strip())
    ]
    _fail(args.ids, name, missing, "blank or missing")
    return [c.strip() for c in picked]


def _values(args: argparse.Namespace, column: IdColumn, rows: np.ndarray, read: Cells) -> list[int]:
    cells = _cells(args, column, rows, args.values, read)
    bad = [
        column.lines[i]
        for i, c in zip(rows.tolist(), cells, strict=True)
        if not (c.isascii() and c.isdigit())
    ]
    _fail(args.ids, args.values, bad, "not a whole number of 0 or more")
    values = [int(c) for c in cells]
    large = [column.lines[i] for i, v in zip(rows.tolist(), values, strict=True) if v > MAX_VALUE]
    _fail(args.ids, args.values, large, f"over the largest value a sum takes ({MAX_VALUE})")
    return values


def _groups(args: argparse.Namespace, column: IdColumn, rows: np.ndarray, read: Cells) -> list[str]:
    cells = _cells(args, column, rows, args.group_by, read)
    looks = [
        column.lines[i] for i, c in zip(rows.tolist(), cells, strict=True) if contains_identifier(c)
    ]
    _fail(args.ids, args.group_by, looks, "looks like an identity number (groups are printed)")
    return cells


def _fail(file: Path, name: str, lines: Sequence[int], reason: str) -> None:
    if not lines:
        return
    shown = ", ".join(map(str, lines[:MAX_PROBLEMS])) + (
        " ..." if len(lines) > MAX_PROBLEMS else ""
    )
    if len(lines) == 1:
        raise InputError(reason, Source(str(file), int(lines[0]), name))
    raise InputError(f"{len(lines)} rows {reason} (lines {shown})", Source(str(file), column=name))


def _distinct(column: IdColumn, rows: np.ndarray, *, keyed: bool) -> Canonical:
    """The valid identifiers, each once. A repeat is dropped when only identifiers count, and an
    error when it carries a value or group (which of its rows would count?)."""
    ids = [column.ids[i].decode() for i in rows.tolist()]
    first: dict[str, int] = {}
    for i, x in zip(rows.tolist(), ids, strict=True):
        if x in first and keyed:
            raise InputError(
                f"identifier {mask(x)} repeats line {first[x]}; each person once",
                Source(column.file, int(column.lines[i]), column.column),
            )
        first.setdefault(x, int(column.lines[i]))
    if len(first) < len(ids):
        print(f"{len(ids) - len(first)} repeated identifiers counted once", file=sys.stderr)
    return Canonical(first)


def _report(result: StatsResult, values: str | None) -> str:
    head = (
        f"{result.intersection} of {result.queried} identifiers are in "
        f"{result.node}/{result.dataset} (its set: {result.node_set_size}; {result.protocol})"
    )
    if result.groups is None:
        return head + (f"; sum of {values}: {result.total}" if result.total is not None else "")
    width = max([len("group"), *map(len, result.groups)])
    lines = [head, f"{'group':<{width}}  {'count':>8}" + (f"  {'sum':>12}" if values else "")]
    for label, total in result.groups.items():
        lines.append(
            f"{label:<{width}}  {total.count:>8}" + (f"  {total.sum:>12}" if values else "")
        )
    return "\n".join(lines)


def _rows(result: StatsResult) -> list[tuple[str, int, int | None]]:
    if result.groups is None:
        return [("all", result.intersection, result.total)]
    return [(label, t.count, t.sum) for label, t in result.groups.items()]


def _write_csv(handle: TextIO, result: StatsResult) -> None:
    writer = csv.writer(handle)
    writer.writerow(("group", "count", "sum"))
    writer.writerows((g, c, "" if s is None else s) for g, c, s in _rows(result))


def _write_json(
    handle: TextIO, result: StatsResult, values: str | None, group_by: str | None
) -> None:
    document = {
        "node": result.node,
        "dataset": result.dataset,
        "protocol": result.protocol,
        "queried": result.queried,
        "node_set_size": result.node_set_size,
        "intersection": result.intersection,
        "values": values,
        "sum": result.total,
        "group_by": group_by,
        "groups": None
        if result.groups is None
        else {g: {"count": t.count, "sum": t.sum} for g, t in result.groups.items()},
    }
    handle.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
