"""One module per ``psi`` subcommand, each with ``register(subparsers)``; shared parsing."""

from __future__ import annotations

from datetime import date

from psi.errors import InputError


def parse_date(text: str | None, option: str = "--as-of") -> date:
    try:
        return date.fromisoformat(text) if text else date.today()
    except ValueError:
        raise InputError(f"{option} {text!r} is not a date (YYYY-MM-DD)") from None
