"""Calendar arithmetic the policy's thresholds are written in ("six months or more")."""

from __future__ import annotations

import calendar
from datetime import date


def add_months(day: date, months: int) -> date:
    """``day`` moved by whole calendar months, clamped to the last day of the target month
    (2023-08-31 + 6 -> 2024-02-29): the arithmetic of nodes.demo.synth's ``SIX_MONTHS``."""
    year, month = divmod(day.year * 12 + day.month - 1 + months, 12)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))
