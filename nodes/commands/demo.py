"""``psi demo``: a synthetic city, one labelled table per department, civil affairs' queries.

Each department builds its table from its own register with its own key; civil affairs blinds its
roster's parent identifiers, each department evaluates the blinded elements, and civil affairs
finalizes, matches against the department's table and opens only its matched labels. The demo then
checks the result against the plaintext join it is not supposed to need.
"""

from __future__ import annotations

import argparse
import csv
import time
from datetime import date
from pathlib import Path

from nodes.department import build_dataset_table, server_key
from nodes.progress import progress
from nodes.register import csv_rows, read_rows
from nodes.roster import read_parents
from psi.errors import InputError
from psi.ids import write_rejects
from psi.keys import KeyRing
from psi.matching import labelled_query
from psi.oprf import Oprf
from psi.synth import expected_matches, generate_city, write_city

MATCH_COLUMNS = (
    "department",
    "id_number",
    "status",
    "start_date",
    "end_date",
    "disability_grade",
    "disability_kind",
    "record_handle",
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run a labelled match on a synthetic city")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    parser.add_argument("--children", type=int, default=2000, help="children in the city")
    parser.add_argument("--as-of", default=None, help="reference date (default: today)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic city")
    parser.set_defaults(func=run)


def _as_of(text: str | None) -> date:
    try:
        return date.fromisoformat(text) if text else date.today()
    except ValueError:
        raise InputError(f"--as-of {text!r} is not a date (YYYY-MM-DD)") from None


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    as_of = _as_of(args.as_of)
    city = generate_city(children=args.children, as_of=as_of, seed=args.seed)
    paths = write_city(city, args.out / "data")
    print(f"synthetic city: {len(city.roster)} children, data in {args.out / 'data'}")

    oprf = Oprf()
    parents = read_parents(paths["roster"], today=as_of)
    write_rejects(args.out / "rejects.csv", parents.rejects)
    print(
        f"civil affairs: {len(parents.ids)} distinct valid parent identifiers to query, "
        f"{len(parents.rejects)} invalid ones reported in {args.out / 'rejects.csv'}"
    )
    inputs = [x.encode() for x in parents.ids]

    matches_path = args.out / "matches.csv"
    expected = expected_matches(city)
    all_equal = True
    with open(matches_path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MATCH_COLUMNS)
        print(
            f"\n{'department':<12} {'register':>9} {'table':>7} {'queried':>8} {'matched':>8}  "
            "statuses civil affairs learned"
        )
        for department in city.registers:
            # The department's node: its register, its key ring, its table.
            reg = read_rows(csv_rows(paths[department], {}), str(paths[department]), today=as_of)
            keyring = KeyRing()
            keyring.add_dataset(department)
            with progress(len(reg.people), f"{department}: building table") as advance:
                table, _ = build_dataset_table(
                    reg, keyring, department, oprf=oprf, progress=advance
                )
            epoch, _ = keyring.current(department)
            key = server_key(oprf, keyring, department, epoch)

            # Civil affairs: blinded elements out, evaluated elements back, then its own lookup.
            with progress(2 * len(inputs), f"{department}: querying") as advance:
                result = labelled_query(
                    oprf,
                    inputs,
                    lambda blinded, sk=key.sk: oprf.blind_evaluate_batch(sk, blinded),
                    table,
                    progress=advance,
                )
            statuses: dict[str, int] = {}
            for found in result.found:
                for record in found.label.records:
                    statuses[record.status] = statuses.get(record.status, 0) + 1
                    writer.writerow(
                        (
                            department,
                            parents.ids[found.index],
                            record.status,
                            record.start or "",
                            record.end or "",
                            record.disability_grade or "",
                            record.disability_kind or "",
                            record.handle.hex() if record.handle else "",
                        )
                    )
            matched = {parents.ids[f.index] for f in result.found}
            all_equal &= matched == expected[department]
            learned = ", ".join(f"{s} {n}" for s, n in sorted(statuses.items()))
            print(
                f"{department:<12} {reg.rows:>9} {len(table):>7} {len(inputs):>8} "
                f"{len(matched):>8}  {learned}"
            )
    verdict = "equal" if all_equal else "NOT EQUAL"
    print(f"\nmatches {verdict} to the plaintext join of the synthetic data")
    print(f"what civil affairs learned: {matches_path}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0 if all_equal else 1
