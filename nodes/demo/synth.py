"""A deterministic synthetic city for tests, the demo and the benchmarks: families, the
civil-affairs roster, one register per department and the expected classification of every child.

Everything is fictitious, but shaped like the real files: valid 18-digit identifiers with Inner
Mongolia region codes, some spelled the messy ways real files spell them, and registers that hold
at least as many people who are nobody's parent as parents of roster children.

The truth is planted, not computed. Each parent is given a situation from ``CASES`` whose records
are built so that, on ``as_of``, the parent counts as its ``effect`` says; a child's class then
follows POLICY.md from the two effects alone. Edge cases are over-represented on purpose, each in
many families and usually made decisive by giving the other parent a qualifying situation.

Rules the truth follows (a screening engine must apply the same ones):

* Only children under 18 on ``as_of`` (completed years, a birthday complete on the day itself) can
  qualify. No child is born on 29 February, so conventions for that birthday never matter.
* A record counts only from its start date: ``start <= as_of``.
* imprisoned, compulsory_rehab, liberty_restricted: the term lasts six months or more
  (``SIX_MONTHS``) and runs on as_of, ``start <= as_of <= end``. An open end (blank) runs and
  counts as six months or more (a life sentence, an order without a set end).
* lost_contact (start = the police report): ``as_of >= six_months_after(start)``.
* severe_disability: grade 1 or 2 of any kind; grade 3 or 4 only when intellectual or mental.
* deceased, declared_missing, serious_illness, guardianship_revoked, deported: count from start.
* Orphan: both parents deceased or declared missing. De facto unattended: both parents count and
  at least one is in "the eight". A roster parent whose identifier is blank or invalid is
  unknown: the child is ``needs_review`` when the other parent counts or is unknown too, and
  ``not_eligible`` when the other parent does not count.

Identifiers are unique across the city. Parents' sequence numbers stay at or below 995, so every
parent born in the 1900s has an exact legacy 15-digit form (996-999 once marked centenarians).
Children's identifiers (the roster key) are always canonical; every other identifier is written
messily at rate ``messy``. Wrong check characters appear only where the truth accounts for them: on
roster parents (then unknown) and on background people in registers.
"""

from __future__ import annotations

import calendar
import csv
import gc
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from psi.dates import add_months
from psi.errors import InputError
from psi.ids import check_characters
from psi.labels import DISABILITY_KIND_CODES, REGISTER_COLUMNS

SIX_MONTHS = """A span from ``start`` lasts six months or more when its end is on or after
``six_months_after(start)``: the same day of the month six calendar months later, clamped to the
last day of that month when the day does not exist there (2023-08-31 -> 2024-02-29,
2024-08-31 -> 2025-02-28, 2024-03-15 -> 2024-09-15). So a term qualifies when
``end >= six_months_after(start)``, and a lost-contact report when
``as_of >= six_months_after(start)``. A term ending the day before ``six_months_after(start)``
does not qualify, nor does a report whose six months complete the day after as_of."""

# Real county-level codes of Inner Mongolia (Hohhot, Baotou, Wuhai, Chifeng, Tongliao, Ordos,
# Hulunbuir, Bayannur, Ulanqab, Hinggan, Xilingol, Alxa).
REGION_CODES = (
    "150102", "150103", "150104", "150105", "150121", "150122", "150123",
    "150202", "150203", "150204", "150206", "150207", "150221",
    "150302", "150303", "150402", "150403", "150404", "150502", "150602", "150603", "150702",
    "150802", "150821", "150822", "150823", "150824", "150825", "150826",
    "150902", "152201", "152502", "152921",
)  # fmt: skip

# Department id -> the statuses its register holds (POLICY.md, "where each status lives").
DEPARTMENTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "prison": ("imprisoned",),
        "police": ("deceased", "compulsory_rehab", "lost_contact", "deported"),
        "court": ("declared_missing", "deceased", "guardianship_revoked", "liberty_restricted"),
        "health": ("deceased", "serious_illness"),
        "disability": ("severe_disability",),
    }
)
_REF_PREFIX = {"prison": "PR", "police": "PS", "court": "CT", "health": "HL", "disability": "DP"}

ROSTER_COLUMNS = ("child_id", "child_name", "father_id", "mother_id", "region_code")
TRUTH_COLUMNS = ("child_id", "classification", "father_status", "mother_status")
CLASSES = ("orphan", "de_facto_unattended", "not_eligible", "needs_review")

ORPHANING, EIGHT, NONE, UNKNOWN = "orphaning", "eight", "none", "unknown"
ADULT_AGE = 18


class RegisterRow(NamedTuple):
    """One row of a department register, exactly as written (ISO dates, blanks as "")."""

    id_number: str
    status: str
    start_date: str
    end_date: str
    disability_grade: str
    disability_kind: str
    record_ref: str


class RosterRow(NamedTuple):
    """One row of the civil-affairs roster; a parent's identifier is "" when unknown."""

    child_id: str
    child_name: str
    father_id: str
    mother_id: str
    region_code: str


class Truth(NamedTuple):
    """A child's expected classification. The first four fields are ``truth.csv``; the rest say how
    it was planted: age on as_of and each parent's case (its situation, even when unknown)."""

    child_id: str
    classification: str
    father_status: str
    mother_status: str
    age: int
    father_case: str
    mother_case: str


@dataclass(frozen=True)
class City:
    """A synthetic city as of ``as_of``. ``messy_ids`` maps every identifier written in a
    non-canonical spelling to its canonical form, or to None for a planted invalid one; any other
    non-blank identifier in the roster or the registers is canonical."""

    as_of: date
    seed: int
    roster: list[RosterRow]
    registers: dict[str, list[RegisterRow]]
    truth: list[Truth]
    messy_ids: dict[str, str | None]

    def canonical(self, written: str) -> str | None:
        """The canonical identifier behind a written one; None when blank or planted invalid."""
        return self.messy_ids.get(written, written) if written else None

    def parents_as_written(self) -> dict[str, str]:
        """The roster's valid parent identifiers as its file spells them (15-digit, lower-case
        x, full-width, spaced or canonical), each with its canonical form: what a script that
        reads the roster's cells hands the client."""
        written = (x for row in self.roster for x in (row.father_id, row.mother_id))
        return {x: c for x in written if (c := self.canonical(x))}


def six_months_after(start: date) -> date:
    """The first date on which a span from ``start`` has lasted six months (see ``SIX_MONTHS``)."""
    return add_months(start, 6)


# ---- parent situations -------------------------------------------------------------------------


class _Plan(NamedTuple):
    """A record to write for a person, before the identifier is spelled and a reference assigned."""

    department: str
    status: str
    start: date
    end: date | None = None
    grade: int | None = None
    kind: str | None = None


_MakeRecords = Callable[[random.Random, date], tuple[_Plan, ...]]


class Case(NamedTuple):
    """A parent's planted situation: ``effect`` is how the parent counts on as_of by construction
    (ORPHANING, EIGHT or NONE), ``status`` the truth column (the counting status, or "none"), and
    ``build`` makes the records, given a random source and as_of."""

    name: str
    effect: str
    status: str
    build: _MakeRecords


def _shift(r: random.Random, as_of: date, lo: int, hi: int) -> date:
    return as_of + timedelta(days=r.randint(lo, hi))


def _dated(department: str, status: str, lo: int, hi: int) -> _MakeRecords:
    """One record starting ``lo``..``hi`` days from as_of, without an end."""
    return lambda r, a: (_Plan(department, status, _shift(r, a, lo, hi)),)


def _disability(
    grades: tuple[int, ...], kinds: tuple[str, ...], lo: int = -3650, hi: int = 0
) -> _MakeRecords:
    """One disability certificate issued ``lo``..``hi`` days from as_of."""
    return lambda r, a: (
        _Plan("disability", "severe_disability", _shift(r, a, lo, hi), None, r.choice(grades),
              r.choice(kinds)),
    )  # fmt: skip


def _recent_term(department: str, status: str, extra_days: int) -> _MakeRecords:
    """A term started in the last 150 days lasting six months plus ``extra_days`` (-1, 0 or 1): it
    still runs on as_of (a six-month span is at least 181 days), so only its length decides."""

    def build(r: random.Random, a: date) -> tuple[_Plan, ...]:
        start = _shift(r, a, -150, 0)
        return (_Plan(department, status, start, six_months_after(start) + timedelta(extra_days)),)

    return build


def _long_term(department: str, status: str) -> _MakeRecords:
    """A term started up to five years ago that runs past as_of and lasts six months or more."""

    def build(r: random.Random, a: date) -> tuple[_Plan, ...]:
        start = _shift(r, a, -1800, 0)
        end = max(six_months_after(start), _shift(r, a, 1, 1800))
        return (_Plan(department, status, start, end),)

    return build


def _released(lo: int, hi: int) -> _MakeRecords:
    """A prison term of seven months or more that ended ``-hi``..``-lo`` days before as_of."""

    def build(r: random.Random, a: date) -> tuple[_Plan, ...]:
        end = _shift(r, a, lo, hi)
        return (_Plan("prison", "imprisoned", add_months(end, -r.randint(7, 60)), end),)

    return build


def _ends_on_as_of(r: random.Random, a: date) -> tuple[_Plan, ...]:
    return (_Plan("prison", "imprisoned", add_months(a, -r.randint(7, 36)), a),)


def _starts_on_as_of(r: random.Random, a: date) -> tuple[_Plan, ...]:
    return (_Plan("prison", "imprisoned", a, add_months(a, r.randint(6, 60))),)


def _starts_after_as_of(r: random.Random, a: date) -> tuple[_Plan, ...]:
    start = _shift(r, a, 1, 90)
    return (_Plan("prison", "imprisoned", start, add_months(start, r.randint(12, 60))),)


def _imprisoned_again(r: random.Random, a: date) -> tuple[_Plan, ...]:
    """Two prison records: an earlier term served, and a current one."""
    released = _released(-1500, -400)(r, a)
    start = _shift(r, a, -300, 0)
    return (*released, _Plan("prison", "imprisoned", start, add_months(start, r.randint(12, 60))))


def _deceased_twice(r: random.Random, a: date) -> tuple[_Plan, ...]:
    """A death certificate, and the hukou cancellation that follows it within two months."""
    died = _shift(r, a, -3000, -1)
    cancelled = min(a, died + timedelta(r.randint(0, 60)))
    return (_Plan("health", "deceased", died), _Plan("police", "deceased", cancelled))


def _missing_after_lost_contact(r: random.Random, a: date) -> tuple[_Plan, ...]:
    """A missing-person report, then a court declaring the person missing two to four years on."""
    reported = _shift(r, a, -3000, -1900)
    declared = reported + timedelta(r.randint(730, 1400))
    return (_Plan("police", "lost_contact", reported), _Plan("court", "declared_missing", declared))


def _lost_contact(months_lo: int, months_hi: int) -> _MakeRecords:
    """A report ``months_lo``..``months_hi`` calendar months before as_of."""
    return lambda r, a: (
        _Plan("police", "lost_contact", add_months(a, -r.randint(months_lo, months_hi))),
    )


def _lost_contact_just_short(r: random.Random, a: date) -> tuple[_Plan, ...]:
    """The earliest report date whose six months are not yet complete on as_of."""
    start = add_months(a, -6)
    while six_months_after(start) <= a:
        start += timedelta(1)
    return (_Plan("police", "lost_contact", start),)


def _regraded(r: random.Random, a: date) -> tuple[_Plan, ...]:
    """Two certificates: grade 3 physical (not severe), later reassessed as grade 2."""
    return (
        _Plan("disability", "severe_disability", _shift(r, a, -3000, -400), None, 3, "physical"),
        _Plan("disability", "severe_disability", _shift(r, a, -399, 0), None, 2, "physical"),
    )


_KINDS = tuple(DISABILITY_KIND_CODES)
_NOT_MENTAL = tuple(k for k in _KINDS if k not in ("intellectual", "mental"))

CASES: tuple[Case, ...] = (
    Case("deceased_health", ORPHANING, "deceased", _dated("health", "deceased", -3000, -1)),
    Case("deceased_police", ORPHANING, "deceased", _dated("police", "deceased", -3000, -1)),
    Case("deceased_court", ORPHANING, "deceased", _dated("court", "deceased", -3000, -1)),
    Case("deceased_health_police", ORPHANING, "deceased", _deceased_twice),
    Case("deceased_on_as_of", ORPHANING, "deceased", _dated("health", "deceased", 0, 0)),
    Case("declared_missing", ORPHANING, "declared_missing",
         _dated("court", "declared_missing", -3000, 0)),
    Case("missing_after_lost_contact", ORPHANING, "declared_missing", _missing_after_lost_contact),
    Case("imprisoned", EIGHT, "imprisoned", _long_term("prison", "imprisoned")),
    Case("imprisoned_6m_exact", EIGHT, "imprisoned", _recent_term("prison", "imprisoned", 0)),
    Case("imprisoned_6m_and_a_day", EIGHT, "imprisoned", _recent_term("prison", "imprisoned", 1)),
    Case("imprisoned_ends_on_as_of", EIGHT, "imprisoned", _ends_on_as_of),
    Case("imprisoned_starts_on_as_of", EIGHT, "imprisoned", _starts_on_as_of),
    Case("imprisoned_open_end", EIGHT, "imprisoned", _dated("prison", "imprisoned", -3000, 0)),
    Case("imprisoned_again", EIGHT, "imprisoned", _imprisoned_again),
    Case("compulsory_rehab", EIGHT, "compulsory_rehab",
         _long_term("police", "compulsory_rehab")),
    Case("compulsory_rehab_6m_exact", EIGHT, "compulsory_rehab",
         _recent_term("police", "compulsory_rehab", 0)),
    Case("liberty_restricted", EIGHT, "liberty_restricted",
         _long_term("court", "liberty_restricted")),
    Case("liberty_restricted_6m_exact", EIGHT, "liberty_restricted",
         _recent_term("court", "liberty_restricted", 0)),
    Case("lost_contact_7m", EIGHT, "lost_contact", _lost_contact(7, 36)),
    Case("lost_contact_6m", EIGHT, "lost_contact", _lost_contact(6, 6)),
    Case("disability_grade_1_2", EIGHT, "severe_disability", _disability((1, 2), _KINDS)),
    Case("disability_3_intellectual", EIGHT, "severe_disability",
         _disability((3,), ("intellectual",))),
    Case("disability_4_mental", EIGHT, "severe_disability", _disability((4,), ("mental",))),
    Case("disability_regraded", EIGHT, "severe_disability", _regraded),
    Case("serious_illness", EIGHT, "serious_illness",
         _dated("health", "serious_illness", -2000, 0)),
    Case("guardianship_revoked", EIGHT, "guardianship_revoked",
         _dated("court", "guardianship_revoked", -3000, 0)),
    Case("deported", EIGHT, "deported", _dated("police", "deported", -3000, 0)),
    Case("released", NONE, NONE, _released(-900, -2)),
    Case("released_day_before", NONE, NONE, _released(-1, -1)),
    Case("imprisoned_6m_less_a_day", NONE, NONE, _recent_term("prison", "imprisoned", -1)),
    Case("compulsory_rehab_6m_less_a_day", NONE, NONE,
         _recent_term("police", "compulsory_rehab", -1)),
    Case("liberty_restricted_6m_less_a_day", NONE, NONE,
         _recent_term("court", "liberty_restricted", -1)),
    Case("imprisoned_after_as_of", NONE, NONE, _starts_after_as_of),
    Case("deceased_after_as_of", NONE, NONE, _dated("health", "deceased", 1, 60)),
    Case("lost_contact_5m", NONE, NONE, _lost_contact(5, 5)),
    Case("lost_contact_just_short", NONE, NONE, _lost_contact_just_short),
    Case("disability_3_physical", NONE, NONE, _disability((3,), ("physical",))),
    Case("disability_3_4_not_mental", NONE, NONE, _disability((3, 4), _NOT_MENTAL)),
    Case("disability_after_as_of", NONE, NONE, _disability((1,), _KINDS, 1, 60)),
)  # fmt: skip
CLEAR = Case("clear", NONE, NONE, lambda r, a: ())
_BY_NAME = {case.name: case for case in CASES}
# Plain qualifying situations given to the other parent to make a focus case decisive.
_PARTNERS = tuple(
    _BY_NAME[name]
    for name in (
        "deceased_health", "deceased_health_police", "declared_missing", "imprisoned",
        "compulsory_rehab", "disability_grade_1_2", "serious_illness", "lost_contact_7m",
    )
)  # fmt: skip
_TERMS = frozenset(("imprisoned", "compulsory_rehab", "liberty_restricted"))

_FOCUS_SHARE = 0.3  # families planted around one catalogue case
_PARTNER_SHARE = 0.75  # of those, the other parent qualifies
_ORDINARY_RECORD = 0.08  # a parent of an ordinary family has some case
_BLANK_SHARE = 0.03  # families with a blank parent identifier: father 50%, both 20%, mother 30%
_INVALID_SHARE = 0.2  # of messy spellings, those with a wrong check character (where allowed)
_EDGE_AGES = (0.01, 0.01, 0.005)  # children turning 18 on as_of, the day after, a few days before


def _classify(age: int, father: str, mother: str) -> str:
    """A child's class from the parents' planted effects (ORPHANING, EIGHT, NONE or UNKNOWN)."""
    if age >= ADULT_AGE:
        return "not_eligible"
    if UNKNOWN in (father, mother):
        return "not_eligible" if NONE in (father, mother) else "needs_review"
    if father == mother == ORPHANING:
        return "orphan"
    if NONE in (father, mother):
        return "not_eligible"
    return "de_facto_unattended"


# ---- identifiers ---------------------------------------------------------------------------------

_UNIX_ORDINAL = date(1970, 1, 1).toordinal()
_FULL_WIDTH = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")
_CHILD_SEQ_MAX, _ADULT_SEQ_MAX = 999, 995


def _days(day: date) -> int:
    return day.toordinal() - _UNIX_ORDINAL


def _mint(
    rng: np.random.Generator,
    births: np.ndarray,
    regions: np.ndarray,
    male: np.ndarray,
    seq_max: np.ndarray,
    taken: np.ndarray,
) -> np.ndarray:
    """Unique 17-digit bodies (int64), none in ``taken``, for people born on ``births`` (days since
    1970) in ``regions``: sequence numbers odd for men, even for women, at most ``seq_max``.
    Whoever collides with a body already given out draws again, until nobody is left."""
    d64 = births.astype("datetime64[D]")
    months = d64.astype("datetime64[M]")
    ymd = (
        (months.astype("datetime64[Y]").astype(np.int64) + 1970) * 10000
        + (months.astype(np.int64) % 12 + 1) * 100
        + (d64 - months).astype(np.int64)
        + 1
    )
    prefix = regions.astype(np.int64) * 10**11 + ymd * 1000
    choices = np.where(male, (seq_max + 1) // 2, seq_max // 2)  # odd 1, 3, ...; even 2, 4, ...
    bodies = np.zeros(len(births), dtype=np.int64)
    used = np.sort(np.append(taken, -1))  # -1, never a body, keeps it non-empty
    pending = np.arange(len(births))
    while len(pending):
        k = rng.integers(0, choices[pending])
        drawn = prefix[pending] + np.where(male[pending], 2 * k + 1, 2 * k + 2)
        fresh = np.zeros(len(drawn), dtype=bool)
        fresh[np.unique(drawn, return_index=True)[1]] = True
        fresh &= used[np.searchsorted(used, drawn).clip(max=len(used) - 1)] != drawn
        bodies[pending] = drawn
        given = np.sort(drawn[fresh])
        used = np.insert(used, np.searchsorted(used, given), given)
        pending = pending[~fresh]
    return bodies


def _identifiers(bodies: np.ndarray) -> list[str]:
    """Canonical identifiers for 17-digit bodies, check characters computed for the whole array
    at once (``check_character``'s per-call cost, about 12 us, would dominate a million-child
    city)."""
    bodies = bodies.astype("S17").ravel()
    return np.char.add(bodies, check_characters(bodies)).astype(str).tolist()


def _spaced(i: str, r: random.Random) -> str:
    return r.choice((f"{i[:6]} {i[6:14]} {i[14:]}", f"{i[:6]}-{i[6:14]}-{i[14:]}", f" {i} "))


def _full_width(i: str, r: random.Random) -> str:
    return i.translate(_FULL_WIDTH)


def _lower_x(i: str, r: random.Random) -> str:
    return i.lower()


def _legacy(i: str, r: random.Random) -> str:
    return i[:6] + i[8:17]


def _wrong_check(i: str, r: random.Random) -> str:
    return i[:17] + r.choice([c for c in "0123456789X" if c != i[17]])


# ---- the city -----------------------------------------------------------------------------------

SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董程曹袁邓许白包"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉萍红鹏宇浩欣怡梓涵轩晨博雨思佳诗"
MONGOLIAN = ("巴特尔", "乌兰", "其其格", "斯琴", "额尔敦", "苏日娜", "阿拉坦", "敖登", "娜仁",
             "宝音", "图雅", "朝鲁")  # fmt: skip
# Every Han name a child can get: a surname with one syllable, or with two.
_HAN_NAMES = np.array(
    [s + g for s in SURNAMES for g in GIVEN]
    + [s + g + h for s in SURNAMES for g in GIVEN for h in GIVEN]
)
_SITUATIONS = (CLEAR, *CASES)  # a family's draw indexes this; 0 is CLEAR
_PARTNER_INDEX = np.array([_SITUATIONS.index(case) for case in _PARTNERS])


class _IsoDates(dict[date | None, str]):
    """Date -> ISO text ("" for None), each text made once: a city uses a few thousand dates."""

    def __missing__(self, day: date | None) -> str:
        text = self[day] = day.isoformat() if day else ""
        return text


class _Builder:
    """Mutable state while a city is written: the random sources, registers, serial numbers. Bulk
    draws come from numpy; the per-record details of planted cases from ``random.Random``."""

    def __init__(self, as_of: date, seed: int, messy: float):
        self.as_of, self.messy = as_of, messy
        self.rng = np.random.default_rng(seed)
        self.r = random.Random(seed)
        self.registers: dict[str, list[RegisterRow]] = {d: [] for d in DEPARTMENTS}
        self.serial = dict.fromkeys(DEPARTMENTS, 0)
        self.messy_ids: dict[str, str | None] = {}
        self.iso = _IsoDates()

    def spell(self, canonical: str, *, may_break: bool = False) -> str:
        """The identifier as a file would carry it: canonical, or at rate ``messy`` respelled (and,
        where ``may_break``, sometimes given a wrong check character)."""
        r = self.r
        if r.random() >= self.messy:
            return canonical
        if may_break and r.random() < _INVALID_SHARE:
            return self.broken(canonical)
        styles = [_spaced, _full_width]
        if canonical[17] == "X":
            styles.append(_lower_x)
        if canonical[6:8] == "19":
            styles.append(_legacy)
        written = r.choice(styles)(canonical, r)
        self.messy_ids[written] = canonical
        return written

    def broken(self, canonical: str) -> str:
        written = _wrong_check(canonical, self.r)
        self.messy_ids[written] = None
        return written

    def record(self, plan: _Plan, canonical: str, *, background: bool = False) -> None:
        department, iso = plan.department, self.iso
        self.serial[department] += 1
        self.registers[department].append(
            RegisterRow(
                self.spell(canonical, may_break=background),
                plan.status,
                iso[plan.start],
                iso[plan.end],
                str(plan.grade) if plan.grade else "",
                plan.kind or "",
                f"{_REF_PREFIX[department]}-{plan.start.year}-{self.serial[department]:06d}",
            )
        )

    def situations(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Indexes into ``_SITUATIONS`` of each family's father and mother. A focus family gets one
        catalogue case, on either side, and usually a qualifying partner so that it is decisive."""
        rng = self.rng
        focal = rng.integers(1, len(_SITUATIONS), n)
        partner = _PARTNER_INDEX[rng.integers(0, len(_PARTNERS), n)]
        partner[rng.random(n) >= _PARTNER_SHARE] = 0
        focus_father = rng.random(n) < 0.5
        ordinary = rng.integers(1, len(_SITUATIONS), (2, n))
        ordinary[rng.random((2, n)) >= _ORDINARY_RECORD] = 0
        focus = rng.random(n) < _FOCUS_SHARE
        father = np.where(focus, np.where(focus_father, focal, partner), ordinary[0])
        mother = np.where(focus, np.where(focus_father, partner, focal), ordinary[1])
        return father, mother

    def unusable(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Which fathers' and mothers' roster identifiers are blank (father alone 50%, both 20%,
        mother alone 30% of such families) and which carry a wrong check character."""
        rng = self.rng
        blank = rng.random(n) < _BLANK_SHARE
        u = rng.random(n)
        blank_father, blank_mother = blank & (u < 0.7), blank & (u >= 0.5)
        invalid = rng.random((2, n)) < self.messy * _INVALID_SHARE
        return blank_father, blank_mother, invalid[0] & ~blank_father, invalid[1] & ~blank_mother

    def parent(
        self, canonical: str, case: Case, blank: bool, invalid: bool
    ) -> tuple[str, str, str]:
        """Write a parent's records; return the roster identifier, the effect and truth status."""
        for plan in case.build(self.r, self.as_of):
            self.record(plan, canonical)
        if blank:
            return "", UNKNOWN, UNKNOWN
        if invalid:
            return self.broken(canonical), UNKNOWN, UNKNOWN
        return self.spell(canonical), case.effect, case.status

    def child_births(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Birth dates (days since 1970) and ages on as_of, 0 to 19, with the planted 18th-birthday
        edges; never 29 February (moved a day, staying within the same age)."""
        rng, a = self.rng, self.as_of
        anniversaries = np.array([_days(add_months(a, -12 * age)) for age in range(21)])
        ages = rng.integers(0, 20, n)
        births = anniversaries[ages] - rng.integers(0, 364, n)  # within (age+1 ago, age ago]
        u = rng.random(n)
        on, after, before = np.cumsum(_EDGE_AGES)
        turns_on, turns_after = u < on, (u >= on) & (u < after)
        turned_before = (u >= after) & (u < before)
        births[turns_on] = anniversaries[ADULT_AGE]
        births[turns_after] = anniversaries[ADULT_AGE] + 1
        births[turned_before] = anniversaries[ADULT_AGE] - rng.integers(1, 11, turned_before.sum())
        ages[turns_on | turned_before] = ADULT_AGE
        ages[turns_after] = ADULT_AGE - 1
        leap_days = [
            _days(date(y, 2, 29)) for y in range(a.year - 21, a.year + 1) if calendar.isleap(y)
        ]
        feb29 = np.isin(births, leap_days)
        births[feb29] += np.where(turns_after[feb29], 1, -1)
        return births, ages

    def parent_births(self, child_births: np.ndarray) -> np.ndarray:
        """Parents born 20 to 40 years before the child, kept within 1960-2000."""
        rng = self.rng
        child_year = child_births.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64)
        year = np.clip(child_year + 1970 - rng.integers(20, 41, len(child_births)), 1960, 2000)
        jan1 = (year - 1970).astype("datetime64[Y]")
        first = jan1.astype("datetime64[D]").astype(np.int64)
        length = (jan1 + 1).astype("datetime64[D]").astype(np.int64) - first
        return first + (rng.random(len(year)) * length).astype(np.int64)

    def names(self, n: int) -> list[str]:
        """Synthetic names: a Han surname and one or two syllables, or (one in ten) Mongolian."""
        rng = self.rng
        names = _HAN_NAMES[rng.integers(0, len(_HAN_NAMES), n)]
        mongolian = rng.random(n) < 0.1
        names[mongolian] = np.array(MONGOLIAN)[rng.integers(0, len(MONGOLIAN), mongolian.sum())]
        return names.tolist()

    def families(self, n: int) -> tuple[list[RosterRow], list[Truth], np.ndarray]:
        """The roster and the truth, writing parents' records; returns the bodies in use."""
        rng = self.rng
        births, ages = self.child_births(n)
        region = rng.integers(0, len(REGION_CODES), n)
        codes = np.array(REGION_CODES, dtype=np.int64)

        def near(home: np.ndarray) -> np.ndarray:  # most parents share the child's region
            return np.where(rng.random(n) < 0.8, home, rng.integers(0, len(REGION_CODES), n))

        people_births = np.concatenate(
            [births, self.parent_births(births), self.parent_births(births)]
        )
        people_regions = codes[np.concatenate([region, near(region), near(region)])]
        male = np.concatenate([rng.random(n) < 0.5, np.ones(n, bool), np.zeros(n, bool)])
        seq_max = np.repeat([_CHILD_SEQ_MAX, _ADULT_SEQ_MAX, _ADULT_SEQ_MAX], n)
        bodies = _mint(rng, people_births, people_regions, male, seq_max, np.zeros(0, np.int64))
        ids = _identifiers(bodies)
        fathers, mothers = self.situations(n)
        blank_father, blank_mother, invalid_father, invalid_mother = self.unusable(n)

        def parents(people: list[str], cases: np.ndarray, blank: np.ndarray, invalid: np.ndarray):
            situations = [_SITUATIONS[case] for case in cases.tolist()]
            return zip(people, situations, blank.tolist(), invalid.tolist(), strict=True)

        roster, truth = [], []
        for child, age, name, father, mother in zip(
            ids[:n],
            ages.tolist(),
            self.names(n),
            parents(ids[n : 2 * n], fathers, blank_father, invalid_father),
            parents(ids[2 * n :], mothers, blank_mother, invalid_mother),
            strict=True,
        ):
            father_id, father_effect, father_status = self.parent(*father)
            mother_id, mother_effect, mother_status = self.parent(*mother)
            roster.append(RosterRow(child, name, father_id, mother_id, child[:6]))
            classification = _classify(age, father_effect, mother_effect)
            truth.append(
                Truth(
                    child,
                    classification,
                    father_status,
                    mother_status,
                    age,
                    father[1].name,
                    mother[1].name,
                )
            )
        return roster, truth, bodies

    def background(self, ratio: float, taken: np.ndarray) -> None:
        """Add ``ratio`` background records per parent record to each register, one person each,
        of any status of the department and any dates (some after as_of, some terms open)."""
        counts = {d: math.ceil(ratio * len(rows)) for d, rows in self.registers.items()}
        total = sum(counts.values())
        rng, a = self.rng, self.as_of
        births = rng.integers(_days(date(1940, 1, 1)), _days(date(2000, 12, 31)) + 1, total)
        regions = np.array(REGION_CODES, dtype=np.int64)[rng.integers(0, len(REGION_CODES), total)]
        male = rng.random(total) < 0.5
        seq_max = np.full(total, _ADULT_SEQ_MAX)
        people = iter(_identifiers(_mint(rng, births, regions, male, seq_max, taken)))
        for department, count in counts.items():
            statuses = DEPARTMENTS[department]
            months = rng.integers(1, 61, count)
            months[rng.random(count) < 0.1] = 0  # open-ended
            draws = zip(
                rng.integers(0, len(statuses), count).tolist(),
                rng.integers(-3650, 61, count).tolist(),
                months.tolist(),
                rng.integers(1, 5, count).tolist(),
                rng.integers(0, len(_KINDS), count).tolist(),
                strict=True,
            )
            for s, offset, term, grade, kind in draws:
                status, start = statuses[s], a + timedelta(offset)
                end = add_months(start, term) if term and status in _TERMS else None
                if status == "severe_disability":
                    plan = _Plan(department, status, start, end, grade, _KINDS[kind])
                else:
                    plan = _Plan(department, status, start, end)
                self.record(plan, next(people), background=True)


def _check_arguments(children: int, as_of: date, seed: int, messy: float, background: float):
    if isinstance(children, bool) or not isinstance(children, int) or children < 0:
        raise InputError(f"children must be a whole number, 0 or more, not {children!r}")
    if not isinstance(as_of, date) or hasattr(as_of, "hour"):
        raise InputError(f"as_of must be a date, not {as_of!r}")
    if not 2000 <= as_of.year <= 2099:
        raise InputError(f"as_of must be in the years 2000 to 2099, not {as_of.isoformat()}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a whole number, 0 or more, not {seed!r}")
    if not 0 <= messy <= 1:
        raise InputError(f"messy must be a rate between 0 and 1, not {messy!r}")
    if not 0 <= background < math.inf:
        raise InputError(f"background must be a ratio, 0 or more, not {background!r}")


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Building a city makes millions of tuples and no reference cycles; the cyclic collector would
    rescan them all again and again (a third of the time for a million children)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def generate_city(
    *,
    children: int = 2000,
    as_of: date,
    seed: int = 0,
    messy: float = 0.05,
    background: float = 1.0,
) -> City:
    """A synthetic city of ``children`` families, the same for the same arguments.

    ``messy`` is the rate of non-canonical identifier spellings; ``background`` the number of
    register records of people who are nobody's parent per record of a roster parent.
    """
    _check_arguments(children, as_of, seed, messy, background)
    builder = _Builder(as_of, seed, messy)
    with _collector_paused():
        roster, truth, bodies = builder.families(children)
        builder.background(background, bodies)
    for rows in builder.registers.values():
        builder.r.shuffle(rows)
    return City(as_of, seed, roster, builder.registers, truth, builder.messy_ids)


def expected_matches(city: City) -> dict[str, set[str]]:
    """The plaintext join: per department, the canonical identifiers of roster parents (those with
    a valid roster identifier) that appear with a valid identifier in its register."""

    def valid(written: Iterable[str]) -> set[str]:
        canonical = (city.messy_ids.get(value, value) for value in written if value)
        return {c for c in canonical if c}

    parents = valid(x for row in city.roster for x in (row.father_id, row.mother_id))
    return {
        department: valid(row.id_number for row in rows) & parents
        for department, rows in city.registers.items()
    }


_README = """Synthetic data written by kinlink (nodes.demo.synth): every person here is fictitious.

As of {as_of}, seed {seed}, {children} children.

roster.csv        the civil-affairs roster: {roster}
<department>.csv  one register per department ({departments}):
                  {register}
truth.csv         each child's expected classification as of {as_of}: {truth}
                  classification: one of {classes}
                  father_status, mother_status: the status that counts on {as_of}, "none",
                  or "unknown" (the roster's identifier is blank or invalid)

Identifiers are spelled messily on purpose: lower-case x, full-width digits, spaces and hyphens,
legacy 15-digit numbers and a few wrong check characters. The rules behind truth.csv are in the
docstring of nodes/demo/synth.py.
"""


def write_city(city: City, directory: str | Path) -> dict[str, Path]:
    """Write the city as UTF-8 CSV files with header rows, plus README.txt; returns name -> path
    (``roster``, each department, ``truth``, ``readme``)."""
    folder = Path(directory)
    tables = {
        "roster": (ROSTER_COLUMNS, city.roster),
        **{d: (REGISTER_COLUMNS, rows) for d, rows in city.registers.items()},
        "truth": (TRUTH_COLUMNS, [row[: len(TRUTH_COLUMNS)] for row in city.truth]),
    }
    paths = {name: folder / f"{name}.csv" for name in tables}
    paths["readme"] = folder / "README.txt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, (header, rows) in tables.items():
            with open(paths[name], "w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(header)
                writer.writerows(rows)
        paths["readme"].write_text(
            _README.format(
                as_of=city.as_of.isoformat(),
                seed=city.seed,
                children=len(city.roster),
                roster=",".join(ROSTER_COLUMNS),
                departments=", ".join(city.registers),
                register=",".join(REGISTER_COLUMNS),
                truth=",".join(TRUTH_COLUMNS),
                classes=", ".join(CLASSES),
            ),
            encoding="utf-8",
        )
    except OSError as exc:
        raise InputError(f"cannot write the city to {folder}: {exc.strerror or exc}") from exc
    return paths
