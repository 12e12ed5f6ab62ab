"""``psi demo``: a federation on this machine, end to end.

Generates a synthetic city (or takes ``--data DIR``: ``roster.csv`` and one ``<department>.csv``
per department in the canonical register columns), issues certificates, starts one node process
per department on loopback, builds their tables, runs civil affairs' queries for the roster's
parents against every node at once, prints what civil affairs learned and where the outputs are,
and stops the nodes.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from nodes.client import Client, NodeError, QueryResult, write_matches
from nodes.commands import parse_date
from nodes.config import load_federation
from nodes.federation import PURPOSES, LocalFederation
from nodes.roster import parent_ids, read_roster
from psi.errors import InputError
from psi.ids import write_rejects
from psi.synth import expected_matches, generate_city, write_city

EXIT_MISMATCH = 1


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run a demo federation on synthetic (or your) data")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    parser.add_argument(
        "--data", type=Path, help="folder with roster.csv and <department>.csv registers"
    )
    parser.add_argument("--children", type=int, default=2000, help="synthetic city size")
    parser.add_argument("--as-of", default=None, help="reference date (default: today)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic city")
    parser.set_defaults(func=run)


def _user_data(folder: Path) -> tuple[Path, dict[str, Path]]:
    roster = folder / "roster.csv"
    if not roster.is_file():
        raise InputError(
            f"{folder} has no roster.csv (child_id,child_name,father_id,mother_id,region_code)"
        )
    registers = {
        p.stem: p for p in sorted(folder.glob("*.csv")) if p.stem not in ("roster", "truth")
    }
    if not registers:
        raise InputError(
            f"{folder} has no register: add <department>.csv files with columns "
            "id_number,status,start_date,end_date,disability_grade,"
            "disability_kind,record_ref"
        )
    return roster, registers


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    as_of = parse_date(args.as_of)
    expected = None
    if args.data:
        roster, registers = _user_data(args.data)
        print(f"your data: {roster} and {len(registers)} registers ({', '.join(registers)})")
    else:
        if args.children < 1:
            raise InputError("--children must be at least 1")
        city = generate_city(children=args.children, as_of=as_of, seed=args.seed)
        paths = write_city(city, args.out / "data")
        roster = paths["roster"]
        registers = {d: paths[d] for d in city.registers}
        expected = expected_matches(city)
        print(
            f"synthetic city: {len(city.roster)} children as of {as_of}, "
            f"data in {args.out / 'data'}"
        )

    read = read_roster(roster, as_of)
    parents = parent_ids(read)
    write_rejects(args.out / "rejects.csv", read.rejects)
    print(
        f"civil affairs: {len(parents)} distinct valid parent identifiers; "
        f"{len(read.rejects)} bad roster cells listed in {args.out / 'rejects.csv'}"
    )

    with LocalFederation(args.out / "federation", registers) as federation:
        federation.setup()
        print(f"certificates for {len(registers)} nodes and civil affairs in {federation.certs}")
        built = federation.build()
        federation.start()
        print("nodes: " + ", ".join(f"{d} on 127.0.0.1:{p}" for d, p in federation.ports.items()))
        with Client(load_federation(federation.federation_file)) as client:
            results = client.query_many(
                [(d, d) for d in registers],
                parents,
                purpose=PURPOSES[0],
                legal_basis_ref="demo",
            )
    failed = {node: r for (node, _), r in results.items() if isinstance(r, NodeError)}
    ok: list[QueryResult] = [r for r in results.values() if not isinstance(r, NodeError)]
    matches_path = args.out / "matches.csv"
    write_matches(matches_path, ok)

    print(
        f"\n{'node':<12} {'table':>7} {'queried':>8} {'matched':>8} {'KiB in':>7}  "
        "statuses civil affairs learned"
    )
    for result in ok:
        statuses = Counter(r.status for _, label in result.matches for r in label.records)
        entries = sum(b.entries for b in built[result.node])
        learned = ", ".join(f"{s} {n}" for s, n in sorted(statuses.items())) or "-"
        print(
            f"{result.node:<12} {entries:>7} {result.queried:>8} {len(result.matches):>8} "
            f"{result.bytes_received / 1024:>7.0f}  {learned}"
        )
    for node, error in failed.items():
        print(f"{node:<12} FAILED: {error}")
    verdict = 0
    if expected is not None:
        equal = not failed and all({x for x, _ in r.matches} == expected[r.node] for r in ok)
        print(
            f"\nmatches {'equal' if equal else 'DO NOT EQUAL'} the plaintext join of the "
            "synthetic data (which no party needed)"
        )
        verdict = 0 if equal else EXIT_MISMATCH
    print(f"\nwhat civil affairs learned: {matches_path}")
    print(f"node state and logs: {args.out / 'federation'}/<node>/state")
    print(f"done in {time.perf_counter() - started:.1f} s; nodes stopped")
    return 3 if failed else verdict
