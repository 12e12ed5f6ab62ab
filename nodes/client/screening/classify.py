"""Classify one child from what the departments said about each parent: pure functions.

Kept free of I/O so the rules can be tested on hand-made records, and so that a run, a rerun and a
reviewer's replay give the same answer for the same inputs. Every record of a parent is judged
against the rules and described in words; those words are the reasons a caseworker reads, and the
record handles of the counted status are the evidence a department can resolve in a dispute.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import NamedTuple

import numpy as np

from nodes.client.roster import Unknown
from nodes.client.screening.rules import Rules
from nodes.shared.accountability import record_reference
from psi.dates import add_months
from psi.labels import Record

ORPHAN, DE_FACTO = "orphan", "de_facto_unattended"
NOT_ELIGIBLE, NEEDS_REVIEW = "not_eligible", "needs_review"
CLASSES = (ORPHAN, DE_FACTO, NOT_ELIGIBLE, NEEDS_REVIEW)
ELIGIBLE = frozenset((ORPHAN, DE_FACTO))
CANDIDATES = frozenset((ORPHAN, DE_FACTO, NEEDS_REVIEW))

# A parent's status when none of theirs counts, when it cannot be known, and for an adult's
# parents, who are never asked about.
NONE, UNKNOWN, NOT_ASKED = "none", "unknown", "not_asked"
# How a parent counts: by an orphaning status, by one of the eight, or not at all.
ORPHANING, EIGHT = "orphaning", "eight"


class Match(NamedTuple):
    """One record a node returned for a parent, with where it came from: ``table_version`` is
    the version its entry was written in, which stays the same while the record does."""

    node: str
    dataset: str
    table_version: int
    record: Record

    @property
    def evidence(self) -> str:
        """``node/dataset@vN#handle`` (``record_reference``): enough for the department to find
        the record, and what ``psi disputes raise --handle`` takes as it stands."""
        return record_reference(self.node, self.dataset, self.table_version, self.record.handle)


class Judged(NamedTuple):
    """One record against the rules: ``counts`` is None when the record lacks what the rule
    needs (a date, a grade), so that missing data never quietly decides either way."""

    match: Match
    counts: bool | None
    text: str  # e.g. "imprisoned 2025-01-03–2027-01-02 (term ≥ 6 months, running)"


class ParentFinding(NamedTuple):
    """What counts for one parent: ``status`` is the counting status (first in the rules'
    precedence), NONE, UNKNOWN or NOT_ASKED; ``effect`` is ORPHANING, EIGHT, NONE or UNKNOWN."""

    role: str  # "father" or "mother"
    status: str
    effect: str
    judged: tuple[Judged, ...] = ()
    unknown: str = ""  # why the identifier could not be used, when it could not
    recalled: bool = False  # reused from the previous run: the records were not opened again

    @property
    def reasons(self) -> tuple[str, ...]:
        if self.recalled:
            return (f"{self.role} {self.status}: as in the previous run (records unchanged)",)
        if self.unknown:
            return (f"{self.role} identifier {self.unknown}: nobody could be asked",)
        if self.status == NOT_ASKED:
            return ()
        if not self.judged:
            return (f"{self.role}: no record in any register",)
        return tuple(f"{self.role} {j.text}" for j in self.judged)

    @property
    def evidence(self) -> tuple[str, ...]:
        counted = (j for j in self.judged if j.counts and j.match.record.status == self.status)
        return tuple(j.match.evidence for j in counted)


class Classification(NamedTuple):
    """A child's class as of the date, with each parent's finding; ``reasons`` are every
    record's words (or the age), ``evidence`` the handles of the counted records."""

    child_id: str
    classification: str
    age: int
    father: ParentFinding
    mother: ParentFinding
    reasons: tuple[str, ...]
    evidence: tuple[str, ...] = ()

    @property
    def parents(self) -> tuple[ParentFinding, ParentFinding]:
        return self.father, self.mother


def age_of(child_id: str, on: date) -> int:
    """Completed years on ``on`` (a birthday complete on the day itself) of a canonical
    identifier. ``psi.ids.age_on`` gives the same for any spelling but normalises again, about
    1 ms a call: too slow for a province's roster, whose identifiers are canonical already."""
    born = date(int(child_id[6:10]), int(child_id[10:12]), int(child_id[12:14]))
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def ages_of(child_ids: Sequence[str] | np.ndarray, on: date) -> list[int]:
    """``age_of`` of many canonical identifiers (text, or an 'S18' array) at once (a roster's
    million in a tenth of a second)."""
    digits = np.array(child_ids, "S18").view(np.uint8).reshape(-1, 18).astype(np.int32) - ord("0")
    year = digits[:, 6] * 1000 + digits[:, 7] * 100 + digits[:, 8] * 10 + digits[:, 9]
    month, day = digits[:, 10] * 10 + digits[:, 11], digits[:, 12] * 10 + digits[:, 13]
    before = (month > on.month) | ((month == on.month) & (day > on.day))
    return (on.year - year - before).tolist()


def _span(record: Record) -> str:
    if record.start is None:
        return ""
    return f" {record.start}–{record.end}" if record.end else f" since {record.start}"


def judge(record: Record, as_of: date, rules: Rules) -> tuple[bool | None, str]:
    """Whether one record counts on ``as_of``, and why, in words."""
    status, start, end = record.status, record.start, record.end
    if status in rules.disability:
        grade, kind = record.disability_grade, record.disability_kind
        what = f"{status} grade {grade or '?'} {kind or 'kind unknown'}"
    else:
        what = status
    described = what + _span(record)
    if start is None:
        return None, f"{described} (no start date: cannot tell from when it counts)"
    if start > as_of:
        return False, f"{described} (starts after {as_of})"
    if end is not None and end < as_of:
        return False, f"{described} (ended before {as_of})"
    if status in rules.terms:
        months = rules.term_months
        if end is None:
            return True, f"{described} (no end date, running)"
        if end < add_months(start, months):
            return False, f"{described} (term < {months} months)"
        return True, f"{described} (term ≥ {months} months, running)"
    if status in rules.elapsed:
        months, due = rules.elapsed_months, add_months(start, rules.elapsed_months)
        if as_of < due:
            return False, f"{described} (< {months} months since the report: {months} on {due})"
        return True, f"{described} (≥ {months} months since the report)"
    if status in rules.disability:
        if record.disability_grade is None:
            return None, f"{described} (no grade: cannot tell whether it is severe)"
        counts = rules.disability_counts(record.disability_grade, record.disability_kind)
        verdict = {True: "severe", False: "not severe", None: "kind needed to tell"}[counts]
        return counts, f"{described} ({verdict} under the rules)"
    return True, described


def find_parent(
    role: str, parent: Sequence[Match] | Unknown, as_of: date, rules: Rules
) -> ParentFinding:
    """Judge every record of one parent and pick the status that counts."""
    if isinstance(parent, Unknown):
        return ParentFinding(role, UNKNOWN, UNKNOWN, unknown=parent.why)
    if not parent:  # most parents: one shared finding, not a million equal ones
        return _NO_RECORD[role]
    ordered = (
        parent
        if len(parent) == 1
        else sorted(parent, key=lambda m: (m.record.start or date.min, m.record.status, m.node))
    )
    judged = tuple(Judged(m, *judge(m.record, as_of, rules)) for m in ordered)
    counting = {j.match.record.status for j in judged if j.counts}
    for effect, statuses in ((ORPHANING, rules.orphaning), (EIGHT, rules.eight)):
        status = next((s for s in statuses if s in counting), None)
        if status:
            return ParentFinding(role, status, effect, judged)
    if any(j.counts is None for j in judged):
        return ParentFinding(role, UNKNOWN, UNKNOWN, judged)
    return ParentFinding(role, NONE, NONE, judged)


_NO_RECORD = {role: ParentFinding(role, NONE, NONE) for role in ("father", "mother")}
_NO_RECORDS = _NO_RECORD["father"].reasons + _NO_RECORD["mother"].reasons
_NOT_ASKED = (ParentFinding("father", NOT_ASKED, NONE), ParentFinding("mother", NOT_ASKED, NONE))


def recalled(role: str, status: str, records: bool, rules: Rules) -> ParentFinding:
    """A parent's finding reused from the previous run (their entries, the rules and what the
    date could change all the same); ``records``: whether any node holds any of theirs."""
    if not records and status == NONE:
        return _NO_RECORD[role]
    effect = ORPHANING if status in rules.orphaning else EIGHT if status in rules.eight else status
    return ParentFinding(role, status, effect, recalled=True)


def combine(father: str, mother: str) -> str:
    """A minor's class from the parents' effects (POLICY.md): unknown parents make the child
    needs_review unless the known parent alone already rules eligibility out."""
    effects = (father, mother)
    if UNKNOWN in effects:
        return NOT_ELIGIBLE if NONE in effects else NEEDS_REVIEW
    if NONE in effects:
        return NOT_ELIGIBLE
    return ORPHAN if father == mother == ORPHANING else DE_FACTO


def classify(
    child_id: str,
    as_of: date,
    father: Sequence[Match] | Unknown,
    mother: Sequence[Match] | Unknown,
    rules: Rules,
    age: int | None = None,
) -> Classification:
    """Classify a child (canonical identifier) as of ``as_of``. An adult's parents are not looked
    at: the age alone decides, and the run does not ask about them. ``age``: ``age_of`` the
    child, when the caller has it already."""
    age = age_of(child_id, as_of) if age is None else age
    if age >= rules.adult_age or (not father and not mother):
        return classify_unrecorded([child_id], [age], as_of, rules)[0]
    father_finding = find_parent("father", father, as_of, rules)
    mother_finding = find_parent("mother", mother, as_of, rules)
    return Classification(
        child_id,
        combine(father_finding.effect, mother_finding.effect),
        age,
        father_finding,
        mother_finding,
        father_finding.reasons + mother_finding.reasons,
        father_finding.evidence + mother_finding.evidence,
    )


def classify_unrecorded(
    child_ids: Sequence[str], ages: Sequence[int], as_of: date, rules: Rules
) -> list[Classification]:
    """``classify`` of children who are adults (their parents are not looked at) or whose
    parents are both known and on no register: most of a roster, made in bulk. The caller
    vouches for the parents; ``classify`` sends its own such children here."""
    adult = rules.adult_age
    aged = {age: (f"aged {age} on {as_of}: {adult} or more",) for age in set(ages) if age >= adult}
    return [
        Classification(child, NOT_ELIGIBLE, age, *_NOT_ASKED, aged[age])
        if age >= adult
        else Classification(child, NOT_ELIGIBLE, age, *_NO_RECORD.values(), _NO_RECORDS)
        for child, age in zip(child_ids, ages, strict=True)
    ]


def stable_until(
    child_id: str, parents: Sequence[Sequence[Match]], as_of: date, rules: Rules
) -> date:
    """The first date after ``as_of`` on which the same child and records could be classified
    otherwise: a record starting, ending or reaching its elapsed months, or the child coming of
    age (never later than the real change, so a class reused before it is the class). Every date
    ``judge`` and ``age_of`` compare with is here."""
    born = date(int(child_id[6:10]), int(child_id[10:12]), int(child_id[12:14]))
    dates = [add_months(born, 12 * rules.adult_age)]
    for matches in parents:
        for match in matches:
            record = match.record
            if record.start is not None:
                dates.append(record.start)
                if record.status in rules.elapsed:
                    dates.append(add_months(record.start, rules.elapsed_months))
            if record.end is not None and record.end < date.max:
                dates.append(record.end + timedelta(days=1))
    return min((d for d in dates if d > as_of), default=date.max)
