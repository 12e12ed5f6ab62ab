"""One module per ``psi`` subcommand, each with ``register(subparsers)``; shared parsing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from nodes.cli.output import is_stdout
from nodes.shared.i18n import LANGUAGES
from psi.errors import InputError
from psi.ids import IdColumn, read_columns, summary, write_rejects
from psi.tabular import ENCODINGS


def encoding_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--encoding",
        choices=tuple(ENCODINGS),
        type=str.lower,
        help=f"of a CSV {what} (default utf-8; gb18030 or gbk as Excel and Chinese-language "
        "Windows save it); a .xlsx file is read as a workbook",
    )


def lang_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lang",
        choices=LANGUAGES,
        help="language of what an officer reads (default: the locale's, else English)",
    )


def parse_date(text: str | None, option: str = "--as-of") -> date:
    try:
        return date.fromisoformat(text) if text else date.today()
    except ValueError:
        raise InputError(f"{option} {text!r} is not a date (YYYY-MM-DD)") from None


def read_id_file(
    path: Path,
    column: str,
    out: Path | None,
    rejects: Path | None = None,
    cells: Sequence[str] = (),
    encoding: str | None = None,
) -> tuple[IdColumn, dict[str, list[str | None]]]:
    """A file of identifiers as the query commands read it, with the raw ``cells`` of other
    columns from the same pass: counts on stderr, and the invalid cells, masked, in ``rejects``
    (default: ``<out's stem>.rejects.csv`` beside the command's output ``out``, or, when that is
    standard output or none, ``<input's stem>.rejects.csv`` in the current folder: never beside
    the input, which may sit where the officer cannot or should not write)."""
    columns, others = read_columns(path, [column], cells, encoding=encoding)
    read = columns[column]
    print(summary(read), file=sys.stderr)
    if read.rejects:
        if rejects is None:
            beside = Path(path.name) if out is None or is_stdout(out) else out
            rejects = beside.with_name(beside.stem + ".rejects.csv")
        write_rejects(rejects, read.rejects)
        print(f"{len(read.rejects)} invalid identifiers listed in {rejects}", file=sys.stderr)
    return read, others
