"""Where a command writes its result: a file, or standard output for ``-``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from psi.errors import InputError

STDOUT = "-"


def is_stdout(path: Path | str | None) -> bool:
    return path is not None and str(path) == STDOUT


@contextmanager
def writing(path: Path) -> Iterator[TextIO]:
    """A text handle on ``path`` (UTF-8, CSV-ready newlines), or on standard output for ``-``;
    a file that cannot be written is the user's to fix."""
    if is_stdout(path):
        yield sys.stdout
        sys.stdout.flush()
        return
    try:
        handle = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    with handle:
        yield handle


def status_stream(out: Path | str | None) -> TextIO:
    """Where a command's summary goes: stderr when the result itself goes to stdout."""
    return sys.stderr if is_stdout(out) else sys.stdout
