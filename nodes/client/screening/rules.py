"""Screening rules as data: which statuses count and for how long, loaded from a TOML file.

Thresholds differ between provinces and change with policy, so they live in ``rules.toml`` (shipped
with the package and used by default) rather than in code. Loading checks every key and value and
names the file and the key of anything wrong, since a silently ignored typo would change who is
found. The calendar-month arithmetic is here too: it is part of what "six months" means.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from nodes.shared.config import TomlReader, load_toml
from psi.labels import DISABILITY_GRADES, DISABILITY_KIND_CODES, STATUS_CODES

DEFAULT_RULES = "rules.toml"
ANY_KIND = "any"

_TOP_KEYS = ("adult_age", "statuses", "terms", "elapsed", "disability")


@dataclass(frozen=True)
class Rules:
    """Validated screening rules. ``orphaning`` and ``eight`` are in order of precedence: the
    status shown for a parent with several counting records is the first listed."""

    source: str  # the file the rules were read from
    sha256: str  # of that file, recorded with every run
    adult_age: int
    orphaning: tuple[str, ...]
    eight: tuple[str, ...]
    terms: frozenset[str]
    term_months: int
    elapsed: frozenset[str]
    elapsed_months: int
    disability: frozenset[str]
    disability_grades: Mapping[int, frozenset[str] | None]  # grade -> kinds; None: any kind
    packaged: bool = False  # the rules shipped with kinlink, not a file the user gave

    @property
    def shown(self) -> str:
        """The rules file as an officer knows it: the path as given, or the packaged rules
        (whose installed path means nothing to anyone)."""
        return f"the packaged {DEFAULT_RULES}" if self.packaged else self.source

    @property
    def statuses(self) -> tuple[str, ...]:
        """Every status that can make a parent count, in order of precedence."""
        return self.orphaning + self.eight

    def fields_needed(self, statuses: Iterable[str]) -> frozenset[str]:
        """Label fields a dataset holding ``statuses`` must grant for the rules to be applied:
        dates always (a record counts only from its start and until its end), grade and kind
        for disability certificates."""
        held = set(statuses) & set(self.statuses)
        if not held:
            return frozenset()
        extra = ("disability_grade", "disability_kind") if held & self.disability else ()
        return frozenset(("status", "start", "end", *extra))

    def disability_counts(self, grade: int, kind: str | None) -> bool | None:
        """Whether a certificate of ``grade`` and ``kind`` counts; None when it depends on a kind
        that is not known."""
        if grade not in self.disability_grades:
            return False
        kinds = self.disability_grades[grade]
        if kinds is None:
            return True
        return None if kind is None else kind in kinds


def _statuses(reader: TomlReader, key: str) -> tuple[str, ...]:
    values = reader.strings(key)
    unknown = [s for s in values if s not in STATUS_CODES]
    if unknown:
        raise reader.fail(key, f"unknown status {unknown[0]!r}; known: {', '.join(STATUS_CODES)}")
    if len(set(values)) != len(values):
        raise reader.fail(key, "lists a status twice")
    return values


def _months(reader: TomlReader) -> int:
    months = reader.get("months", int)
    if not 0 <= months <= 1200:
        raise reader.fail("months", "must be a whole number of months, 0 to 1200")
    return months


def _grades(reader: TomlReader) -> dict[int, frozenset[str] | None]:
    grades: dict[int, frozenset[str] | None] = {}
    for key, value in reader.data.items():
        if not key.isdigit() or int(key) not in DISABILITY_GRADES:
            raise reader.fail(key, "a grade must be 1, 2, 3 or 4")
        if value == ANY_KIND:
            grades[int(key)] = None
            continue
        kinds = reader.strings(key) if isinstance(value, list) else ()
        if not kinds or any(k not in DISABILITY_KIND_CODES for k in kinds):
            raise reader.fail(
                key,
                f'must be "{ANY_KIND}" or a list of kinds among {", ".join(DISABILITY_KIND_CODES)}',
            )
        grades[int(key)] = frozenset(kinds)
    return grades


def load_rules(path: str | os.PathLike[str] | None = None) -> Rules:
    """Read and check a rules file; the packaged ``rules.toml`` (POLICY.md) by default."""
    if path is None:
        with resources.as_file(resources.files(__package__) / DEFAULT_RULES) as packaged:
            return replace(load_rules(packaged), packaged=True)
    root = load_toml(path)
    root.only(_TOP_KEYS)
    adult_age = root.get("adult_age", int)
    if not 1 <= adult_age <= 150:
        raise root.fail("adult_age", "must be an age in years, 1 to 150")
    statuses = root.table("statuses")
    statuses.only(("orphaning", "eight"))
    orphaning, eight = _statuses(statuses, "orphaning"), _statuses(statuses, "eight")
    if not orphaning or not eight:
        raise statuses.fail("orphaning" if not orphaning else "eight", "must list a status")
    if set(orphaning) & set(eight):
        both = sorted(set(orphaning) & set(eight))[0]
        raise statuses.fail("eight", f"{both!r} is also orphaning; a status is one or the other")
    counted = set(orphaning) | set(eight)

    def group(name: str, keys: tuple[str, ...]) -> tuple[TomlReader, frozenset[str]]:
        reader = root.table(name)
        reader.only(keys)
        members = frozenset(_statuses(reader, "statuses"))
        if members - counted:
            stray = sorted(members - counted)[0]
            raise reader.fail("statuses", f"{stray!r} is neither orphaning nor in eight")
        return reader, members

    terms_reader, terms = group("terms", ("statuses", "months"))
    elapsed_reader, elapsed = group("elapsed", ("statuses", "months"))
    disability_reader, disability = group("disability", ("statuses", "grades"))
    for name, members, others in (
        ("elapsed", elapsed, terms),
        ("disability", disability, terms | elapsed),
    ):
        if members & others:
            twice = sorted(members & others)[0]
            raise root.table(name).fail("statuses", f"{twice!r} already has a rule")
    return Rules(
        source=str(root.path),
        sha256=hashlib.sha256(Path(root.path).read_bytes()).hexdigest(),
        adult_age=adult_age,
        orphaning=orphaning,
        eight=eight,
        terms=terms,
        term_months=_months(terms_reader),
        elapsed=elapsed,
        elapsed_months=_months(elapsed_reader),
        disability=disability,
        disability_grades=MappingProxyType(_grades(disability_reader.table("grades"))),
    )
