"""``psi demo``: a federation on this machine, end to end.

Generates a synthetic city (or takes ``--data DIR``: ``roster.csv`` and one ``<department>.csv``
per department in the canonical register columns), issues certificates, starts one node process
per department on loopback, builds their tables, runs civil affairs' queries for the roster's
parents against every node at once, runs the monthly screening (``OUT/results.csv``,
``OUT/report.html``), serves civil affairs' roll back as a dataset and lets education query it,
prints what each party learned and where the outputs are, and stops the nodes.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from nodes.cli.inputs import parse_date
from nodes.cli.output import writing
from nodes.cli.screen import summary
from nodes.client.client import Client, NodeError, QueryResult
from nodes.client.matches import write_csv
from nodes.client.roster import parent_ids, read_roster
from nodes.client.screening import ScreeningResult, roll_register, screen
from nodes.client.statistics import StatsClient, StatsResult
from nodes.demo.federation import PURPOSES, ROLL, LocalFederation, demo_limits
from nodes.demo.synth import expected_matches, generate_city, write_city
from nodes.shared.config import load_federation
from psi.errors import InputError

EXIT_MISMATCH = 1
STATISTICS_NODE = "prison"


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
    print(
        f"civil affairs: {len(parents)} distinct valid parent identifiers, "
        f"{len(read.rejects)} bad roster cells (listed by the screening below)"
    )

    limits = demo_limits(len(parents))
    with LocalFederation(args.out / "federation", registers, limits=limits) as federation:
        federation.setup()
        print(f"certificates for {len(registers)} nodes and civil affairs in {federation.certs}")
        print(
            f"budgets granted to civil affairs, sized to its {len(parents)} parents: "
            f"{limits.per_session} elements per session, {limits.per_day} per day, "
            f"{limits.per_epoch} per key epoch"
        )
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
            counted = _count(client, federation, parents)
        screening = screen(
            federation.federation_file, roster, as_of, args.out, history_dir=args.out / "history"
        )
    failed = {node: r for (node, _), r in results.items() if isinstance(r, NodeError)}
    ok: list[QueryResult] = [r for r in results.values() if not isinstance(r, NodeError)]
    matches_path = args.out / "matches.csv"
    with writing(matches_path) as handle:
        write_csv(handle, ok)

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
    if counted is not None:
        agrees = (
            ""
            if expected is None
            else (
                " (equal to the plaintext join)"
                if counted.intersection == len(expected[counted.node])
                else " (DIFFERS FROM the plaintext join)"
            )
        )
        print(
            f"\nstatistics: {counted.intersection} of {counted.queried} parents are in the "
            f"{counted.node} register{agrees}; by PSI-cardinality civil affairs learned the "
            f"count, not who, and the {counted.node} node only that {counted.queried} were asked"
        )
    print(f"\n{summary(screening)}\nHTML report: {args.out / 'report.html'}")
    if expected is not None:
        truth = {t.child_id: t.classification for t in city.truth}
        wrong = sum(
            c.verdict.classification != truth[c.verdict.child_id] for c in screening.children
        )
        print(
            f"screening {'equals' if not wrong else 'DIFFERS FROM'} the planted truth for "
            f"{len(screening.children) - wrong} of {len(screening.children)} children"
        )
        verdict = verdict or (EXIT_MISMATCH if wrong else 0)
    _reverse_query(args.out, screening)
    print(f"\nwhat civil affairs learned: {matches_path}")
    print(f"node state and logs: {args.out / 'federation'}/<node>/state")
    print(f"done in {time.perf_counter() - started:.1f} s; nodes stopped")
    return 3 if failed else verdict


def _count(client: Client, federation: LocalFederation, parents: list[str]) -> StatsResult | None:
    """How many parents the prison holds, by PSI-cardinality, where the demo prison offers it."""
    policy = federation.statistics.get(STATISTICS_NODE)
    if (
        STATISTICS_NODE not in federation.registers
        or not policy
        or len(parents) < policy.min_elements
    ):
        return None
    return StatsClient(client).run(
        STATISTICS_NODE, STATISTICS_NODE, parents, purpose=policy.purposes[0]
    )


def _reverse_query(out: Path, screening: ScreeningResult) -> None:
    """Both ways: civil affairs serves its roll as a dataset, and education asks which of its
    pupils are on it (tuition aid), civil affairs never learning which pupils were asked about."""
    roll = out / "roll.csv"
    if not roll_register(screening, roll):
        print("\nthe roll is empty: no reverse query to show")
        return
    pupils = [c.verdict.child_id for c in screening.children][:500]
    with LocalFederation(out / "federation-roll", {ROLL: roll}, clients=("education",)) as fed:
        fed.setup()
        fed.build()
        fed.start()
        with Client(load_federation(fed.federation_file_of("education"))) as client:
            result = client.query(ROLL, ROLL, pupils, purpose=PURPOSES[1])
    kinds = Counter(r.status for _, label in result.matches for r in label.records)
    print(
        f"\nreverse query: education asked civil affairs' roll node about {len(pupils)} pupils; "
        f"{len(result.matches)} are on the roll ("
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        + ")"
    )
