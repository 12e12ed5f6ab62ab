"""One module per ``psi`` subcommand, each with ``register(subparsers)``; shared parsing."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from psi.errors import InputError
from psi.ids import IdColumn, read_columns, summary, write_rejects


def parse_date(text: str | None, option: str = "--as-of") -> date:
    try:
        return date.fromisoformat(text) if text else date.today()
    except ValueError:
        raise InputError(f"{option} {text!r} is not a date (YYYY-MM-DD)") from None


def read_id_file(
    path: Path, column: str, rejects_beside: Path, cells: Sequence[str] = ()
) -> tuple[IdColumn, dict[str, list[str | None]]]:
    """A file of identifiers as the query commands read it, with the raw ``cells`` of other
    columns from the same pass: counts on stderr, and the invalid cells, masked, in
    ``<rejects_beside's stem>.rejects.csv`` next to it."""
    columns, others = read_columns(path, [column], cells)
    read = columns[column]
    print(summary(read), file=sys.stderr)
    if read.rejects:
        rejects = rejects_beside.with_name(rejects_beside.stem + ".rejects.csv")
        write_rejects(rejects, read.rejects)
        print(f"{len(read.rejects)} invalid identifiers listed in {rejects}", file=sys.stderr)
    return read, others
