"""``psi synth``: write a synthetic city (roster, department registers, expected classes) to a
folder, for trying the other commands and for tests. Nothing in it is a real person."""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import date
from pathlib import Path

from nodes.demo.synth import CLASSES, City, expected_matches, generate_city, write_city
from psi.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic city: roster, department registers and the expected classes",
        description="Write a deterministic synthetic city (fictitious people) to a folder: "
        "roster.csv, one <department>.csv per department, truth.csv and README.txt.",
    )
    # Values are parsed by ``run`` so that a bad one is a one-line InputError like any other.
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write (created)")
    parser.add_argument("--children", default="2000", metavar="N", help="families (default 2000)")
    parser.add_argument(
        "--as-of", metavar="DATE", help="reference date, YYYY-MM-DD (default: today)"
    )
    parser.add_argument("--seed", default="0", metavar="S", help="random seed (default 0)")
    parser.add_argument(
        "--messy", default="0.05", metavar="RATE", help="share of messy identifiers (default 0.05)"
    )
    parser.set_defaults(func=run)


def _whole(option: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{option} must be a whole number, not {text!r}") from None


def _rate(option: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{option} must be a number between 0 and 1, not {text!r}") from None


def _date(option: str, text: str | None) -> date:
    if text is None:
        return date.today()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{option} must be a real date written YYYY-MM-DD, not {text!r}") from None


def summary(city: City, directory: Path) -> str:
    """What was written: rows per register (and how many are roster parents), children per class."""
    matches = expected_matches(city)
    classes = Counter(row.classification for row in city.truth)
    lines = [
        f"wrote a synthetic city to {directory}: {len(city.roster)} children as of "
        f"{city.as_of.isoformat()} (seed {city.seed})",
        *(
            f"  {name:<11}{len(rows):>9} records, {len(matches[name]):>8} of them roster parents"
            for name, rows in city.registers.items()
        ),
        "  truth: " + ", ".join(f"{name} {classes[name]}" for name in CLASSES),
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    city = generate_city(
        children=_whole("--children", args.children),
        as_of=_date("--as-of", args.as_of),
        seed=_whole("--seed", args.seed),
        messy=_rate("--messy", args.messy),
    )
    directory = Path(args.out)
    write_city(city, directory)
    print(summary(city, directory))
    return 0
