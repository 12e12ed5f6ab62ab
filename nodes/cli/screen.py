"""``psi screen``: the monthly screening of civil affairs' roster against every node.

Prints counts only (never an identifier): the classes, each dataset's table version and how many
identifiers were evaluated against how many came from the client's cache, the data-minimisation
choice, and the changes since the previous run kept in the history folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nodes.cli.inputs import encoding_option, lang_option, parse_date
from nodes.client.screening.report import MINIMISATION, REJECTS_CSV, ROW_ORDER, Labels
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
        help="CSV or .xlsx: child_id,child_name,father_id,mother_id,region_code",
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
    encoding_option(parser, "--roster")
    lang_option(parser)
    parser.add_argument("--xlsx", action="store_true", help="also write results.xlsx")
    parser.set_defaults(func=run)


def summary(result: ScreeningResult, lang: str | None = None) -> str:
    """What a run found, asked and wrote, for the terminal, in the officer's language."""
    labels = Labels(lang)
    t = labels
    counts = result.counts()
    lines = [
        t("screening as of {as_of}: {children} children, {rejects} rejected cells listed in "
          "{file}").format(
            as_of=result.as_of, children=len(result.children), rejects=len(result.rejects),
            file=result.out_dir / REJECTS_CSV,
        ),
        "  " + ", ".join(f"{labels.word(c)} {counts[c]}" for c in ROW_ORDER),
        t("datasets asked (evaluated now / from the client's cache):"),
    ]  # fmt: skip
    lines += [
        "  "
        + t(
            "{node}/{dataset} epoch {epoch} table v{version}: {queried} asked, {evaluated} "
            "evaluated, {cached} from cache, {matched} matched, {seconds:.2f} s"
        ).format(
            node=n.node, dataset=n.dataset, epoch=n.epoch, version=n.table_version,
            queried=n.queried, evaluated=n.evaluated, cached=n.cached, matched=n.matched,
            seconds=n.seconds,
        )
        for n in result.nodes
    ]  # fmt: skip
    if result.uncovered:
        lines.append(
            t("warning: no node serves {statuses}").format(
                statuses=", ".join(map(labels.word, result.uncovered))
            )
        )
    what = t(MINIMISATION[result.retain_ineligible])
    lines.append(t("data minimisation: {what}").format(what=what))
    changes = result.changes
    if changes.previous:
        why = ", ".join(f"{code} {n}" for code, n in sorted(changes.ended_why().items()))
        lines.append(
            t("since the run of {run_at} as of {as_of}: {new} new candidates, {ended} ended"
              "{why}, {changed} changed").format(
                run_at=changes.previous["run_at"], as_of=changes.previous["as_of"],
                new=len(changes.new), ended=len(changes.ended), why=f" ({why})" if why else "",
                changed=len(changes.changed),
            )
        )  # fmt: skip
        lines.append(
            t("classes reused from that run (inputs unchanged): {reused} of {children} "
              "children; labels opened for the others' parents only").format(
                reused=result.reused, children=len(result.children)
            )
        )  # fmt: skip
    else:
        lines.append(t("no earlier run in the history to compare with"))
    lines.append(
        t("results in {out}; run kept as {history}").format(
            out=result.out_dir, history=result.history_file
        )
    )
    lines.append(t("screened in {seconds:.1f} s").format(seconds=result.seconds))
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
            encoding=args.encoding,
            lang=args.lang,
            xlsx=args.xlsx,
        )
    except NodesFailed as exc:
        print(f"psi screen: node failure: {exc}", file=sys.stderr)
        return EXIT_NODE_FAILED
    print(summary(result, args.lang))
    return 0
