"""``psi screen``: the monthly screening of civil affairs' roster against every node.

Prints counts only (never an identifier): the classes, each dataset's table version and how many
identifiers were evaluated against how many came from the client's cache, the data-minimisation
choice, and the changes since the previous run kept in the history folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nodes.cli.inputs import parse_date
from nodes.client.screening.classify import CLASSES
from nodes.client.screening.report import MINIMISATION, REJECTS_CSV
from nodes.client.screening.result import ScreeningResult
from nodes.client.screening.rules import load_rules
from nodes.client.screening.run import NodesFailed, screen

EXIT_NODE_FAILED = 3  # as psi query; 2 is a user mistake (psi.errors.InputError)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "screen",
        help="screen the roster for orphans and de facto unattended children",
        description="Exit status: 0 done, 2 bad input, 3 a node failed (nothing written).",
    )
    parser.add_argument("--federation", type=Path, required=True, help="federation.toml")
    parser.add_argument(
        "--roster",
        type=Path,
        required=True,
        help="CSV: child_id,child_name,father_id,mother_id,region_code",
    )
    parser.add_argument("--as-of", required=True, help="reference date, YYYY-MM-DD")
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--rules", type=Path, help="rules file (default: the packaged rules)")
    parser.add_argument("--history", type=Path, help="history folder (default: OUT/../history)")
    parser.add_argument(
        "--retain-ineligible",
        action="store_true",
        help="also write the parents' statuses of not_eligible children (default: counts only)",
    )
    parser.set_defaults(func=run)


def summary(result: ScreeningResult) -> str:
    """What a run found, asked and wrote, for the terminal."""
    counts = result.counts()
    lines = [
        f"screening as of {result.as_of}: {len(result.children)} children, "
        f"{len(result.rejects)} rejected cells listed in {result.out_dir / REJECTS_CSV}",
        "  " + ", ".join(f"{c} {counts[c]}" for c in CLASSES),
        "datasets asked (evaluated now / from the client's cache):",
    ]
    lines += [
        f"  {n.node}/{n.dataset} epoch {n.epoch} table v{n.table_version}: {n.queried} asked, "
        f"{n.evaluated} evaluated, {n.cached} from cache, {n.matched} matched, {n.seconds:.2f} s"
        for n in result.nodes
    ]
    if result.uncovered:
        lines.append(f"warning: no node serves {', '.join(result.uncovered)}")
    lines.append(f"data minimisation: {MINIMISATION[result.retain_ineligible]}")
    changes = result.changes
    if changes.previous:
        why = ", ".join(f"{code} {n}" for code, n in sorted(changes.ended_why().items()))
        lines.append(
            f"since the run of {changes.previous['run_at']} as of {changes.previous['as_of']}: "
            f"{len(changes.new)} new candidates, {len(changes.ended)} ended"
            + (f" ({why})" if why else "")
            + f", {len(changes.changed)} changed"
        )
        lines.append(
            f"classes reused from that run (inputs unchanged): {result.reused} of "
            f"{len(result.children)} children; labels opened for the others' parents only"
        )
    else:
        lines.append("no earlier run in the history to compare with")
    lines.append(f"results in {result.out_dir}; run kept as {result.history_file}")
    lines.append(f"screened in {result.seconds:.1f} s")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    as_of = parse_date(args.as_of)
    rules = load_rules(args.rules)
    try:
        result = screen(
            args.federation,
            args.roster,
            as_of,
            args.out,
            rules=rules,
            retain_ineligible=args.retain_ineligible,
            history_dir=args.history,
        )
    except NodesFailed as exc:
        print(f"psi screen: node failure: {exc}", file=sys.stderr)
        return EXIT_NODE_FAILED
    print(summary(result))
    return 0
