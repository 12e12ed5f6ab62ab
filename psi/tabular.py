"""The rows of the files officers and operators have: CSV in UTF-8 (with or without BOM) or in
GB18030 / GBK (what Excel and many Chinese government systems export), or an Excel workbook
(``.xlsx``, its first sheet, read with openpyxl). Every reader yields lists of text cells and
knows the line (or sheet row) it is on, so that messages name the file and the line.

A workbook's numeric cell is taken as text only when it is a whole number Excel holds exactly
(below 2**53); an 18-digit identity number stored as a number has lost its last digits in
Excel already, so it is left in a form (``1.50102198008254e+17``) that no identifier check
accepts, and the reject says so (see docs/identifiers.md: format the column as text).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Protocol

from psi.errors import InputError, Source

# The encodings a CSV file may be read in: their names as users give them, and Python's.
ENCODINGS = {"utf-8": "utf-8-sig", "gb18030": "gb18030", "gbk": "gbk"}
_NAMES = {codec: name.upper() for name, codec in ENCODINGS.items()}
DEFAULT_ENCODING = "utf-8"
XLSX_SUFFIXES = (".xlsx", ".xlsm")
_EXACT = 2**53


class Rows(Protocol):
    """An iterator of rows (lists of text cells) that knows its last line (``csv.reader``'s)."""

    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...

    def __next__(self) -> list[str]: ...


def encoding_name(name: str | None) -> str:
    """Python's codec for a user's ``--encoding`` (default UTF-8); an unknown name is an error
    listing those accepted."""
    key = (name or DEFAULT_ENCODING).strip().lower().replace("_", "-")
    key = {"utf8": "utf-8", "utf-8-sig": "utf-8", "cp936": "gbk", "gb2312": "gbk"}.get(key, key)
    if key not in ENCODINGS:
        raise InputError(f"encoding {name!r}: one of {', '.join(ENCODINGS)}")
    return ENCODINGS[key]


class _Sheet:
    """The first sheet of a workbook as ``Rows``: cells as text, the sheet row as the line."""

    def __init__(self, rows: Iterator[tuple[Any, ...]]):
        self._rows, self.line_num = rows, 0

    def __iter__(self) -> _Sheet:
        return self

    def __next__(self) -> list[str]:
        row = next(self._rows)
        self.line_num += 1
        return [_text(cell) for cell in row]


def _text(cell: Any) -> str:
    if cell is None:
        return ""
    if isinstance(cell, datetime):
        return cell.date().isoformat() if cell.time() == time() else cell.isoformat()
    if isinstance(cell, date):
        return cell.isoformat()
    if isinstance(cell, bool):
        return str(cell)
    if isinstance(cell, int | float):
        exact = float(cell).is_integer() and abs(cell) < _EXACT
        return str(int(cell)) if exact else repr(float(cell))
    return str(cell)


@contextmanager
def open_rows(path: str | os.PathLike[str], encoding: str | None = None) -> Iterator[Rows]:
    """The rows of a CSV file in ``encoding`` (``ENCODINGS``; default UTF-8) or of a workbook's
    first sheet (by the ``.xlsx`` suffix). Problems reading it are ``InputError`` naming the
    file, and the line where one is known, with what to do about them."""
    file = os.fspath(path)
    if Path(file).suffix.lower() in XLSX_SUFFIXES:
        with _workbook(file) as rows:
            yield rows
        return
    codec = encoding_name(encoding)
    reader: Rows | None = None
    try:
        with open(path, encoding=codec, newline="") as handle:
            reader = csv.reader(handle)
            yield reader
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror}", Source(file)) from exc
    except UnicodeDecodeError as exc:
        line = (reader.line_num if reader else 0) + 1
        hint = (
            'give --encoding gb18030 (or encoding = "gb18030" in node.toml) for a file saved '
            "by Chinese-language Excel or Windows, or save it as UTF-8"
            if codec == ENCODINGS[DEFAULT_ENCODING]
            else "check the --encoding, or save the file as UTF-8"
        )
        raise InputError(f"not {_NAMES[codec]} text near line {line}; {hint}",
                         Source(file)) from exc  # fmt: skip
    except csv.Error as exc:
        line = reader.line_num if reader else None
        raise InputError(f"malformed CSV: {exc}", Source(file, line)) from exc


@contextmanager
def _workbook(file: str) -> Iterator[Rows]:
    from openpyxl import load_workbook  # a workbook is the rarer input: loaded when one comes
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = load_workbook(file, read_only=True, data_only=True)
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror}", Source(file)) from exc
    except (InvalidFileException, KeyError, ValueError) as exc:  # zipfile.BadZipFile too
        raise InputError(f"not an Excel workbook (.xlsx): {exc}", Source(file)) from None
    except Exception as exc:  # openpyxl raises many kinds on a damaged file
        raise InputError(f"cannot read the workbook: {type(exc).__name__}", Source(file)) from None
    try:
        yield _Sheet(book.worksheets[0].iter_rows(values_only=True))
    finally:
        book.close()
