"""Screening rules and the pure classification: the rules file, its checks, and every edge of
POLICY.md on hand-made records."""

from datetime import date, timedelta
from pathlib import Path

import pytest

from nodes.client.screening.classify import (
    DE_FACTO,
    EIGHT,
    NEEDS_REVIEW,
    NONE,
    NOT_ASKED,
    NOT_ELIGIBLE,
    ORPHAN,
    ORPHANING,
    UNKNOWN,
    Match,
    Unknown,
    age_of,
    ages_of,
    classify,
    combine,
    judge,
)
from nodes.client.screening.rules import load_rules
from nodes.demo.synth import six_months_after
from psi.dates import add_months
from psi.errors import InputError
from psi.ids import age_on, check_character
from psi.labels import Record

AS_OF = date(2026, 11, 30)
RULES = load_rules()
RULES_PATH = Path(RULES.source)
HANDLE = bytes(range(16))


def child_born(born: date) -> str:
    body = f"150802{born:%Y%m%d}123"
    return body + check_character(body)


CHILD = child_born(date(2015, 6, 1))


def match(status: str, start=None, end=None, grade=None, kind=None, node="n") -> Match:
    return Match(node, node, 3, Record(status, start, end, grade, kind, HANDLE))


def counts(record: Match, as_of: date = AS_OF) -> bool | None:
    return judge(record.record, as_of, RULES)[0]


# ---- the rules file ------------------------------------------------------------------------------


def test_default_rules_are_the_policy():
    assert RULES.adult_age == 18
    assert RULES.orphaning == ("deceased", "declared_missing")
    assert set(RULES.eight) == {
        "severe_disability", "serious_illness", "imprisoned", "compulsory_rehab",
        "liberty_restricted", "lost_contact", "guardianship_revoked", "deported",
    }  # fmt: skip
    assert RULES.terms == {"imprisoned", "compulsory_rehab", "liberty_restricted"}
    assert RULES.term_months == RULES.elapsed_months == 6
    assert RULES.elapsed == {"lost_contact"}
    assert RULES.disability_grades == {
        1: None, 2: None, 3: {"intellectual", "mental"}, 4: {"intellectual", "mental"}
    }  # fmt: skip
    assert RULES.source.endswith("rules.toml") and len(RULES.sha256) == 64


@pytest.mark.parametrize(
    "start, expected",
    [
        (date(2023, 8, 31), date(2024, 2, 29)),
        (date(2024, 8, 31), date(2025, 2, 28)),
        (date(2024, 3, 15), date(2024, 9, 15)),
        (date(2025, 12, 31), date(2026, 6, 30)),
    ],
)
def test_six_months_is_calendar_months_clamped(start, expected):
    assert add_months(start, 6) == expected


def test_month_arithmetic_equals_the_synthetic_city():
    day = date(2019, 1, 1)
    while day < date(2029, 1, 1):
        assert add_months(day, 6) == six_months_after(day), day
        day += timedelta(1)


def test_fields_needed():
    assert RULES.fields_needed(["imprisoned"]) == {"status", "start", "end"}
    assert "disability_kind" in RULES.fields_needed(["severe_disability", "deceased"])
    assert RULES.fields_needed(["orphan"]) == frozenset()


@pytest.mark.parametrize(
    "old, new, key",
    [
        ("adult_age = 18", "adult_age = 0", "adult_age"),
        ("adult_age = 18", 'adult_age = "18"', "adult_age"),
        ("adult_age = 18", "adult_age = 18\nadult = 1", "adult"),
        ('orphaning = ["deceased", "declared_missing"]', 'orphaning = ["dead"]', "orphaning"),
        ('orphaning = ["deceased", "declared_missing"]', "orphaning = []", "orphaning"),
        ('orphaning = ["deceased", "declared_missing"]', 'orphaning = ["deported"]', "eight"),
        ("months = 6\n\n[elapsed]", "months = -1\n\n[elapsed]", "terms.months"),
        ("months = 6\n\n[elapsed]", "month = 6\n\n[elapsed]", "terms.month"),
        ('statuses = ["lost_contact"]', 'statuses = ["imprisoned"]', "elapsed.statuses"),
        ('statuses = ["lost_contact"]', 'statuses = ["orphan"]', "elapsed.statuses"),
        ('1 = "any"', '5 = "any"', "disability.grades.5"),
        ('1 = "any"', '1 = "all"', "disability.grades.1"),
        ('1 = "any"', '1 = ["clever"]', "disability.grades.1"),
        ("[disability.grades]", "[disability.grade]", "disability.grade"),
        ("adult_age = 18", "adult_age = = 18", "not valid TOML"),
    ],
)
def test_bad_rules_name_the_file_and_the_key(tmp_path, old, new, key):
    text = RULES_PATH.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "province.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_rules(path)
    assert str(path) in str(caught.value) and key in str(caught.value)


def test_missing_rules_file(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        load_rules(tmp_path / "none.toml")


def test_a_province_can_change_a_threshold(tmp_path):
    path = tmp_path / "province.toml"
    text = RULES_PATH.read_text(encoding="utf-8")
    path.write_text(text.replace("months = 6\n\n[elapsed]", "months = 12\n\n[elapsed]"), "utf-8")
    rules = load_rules(path)
    term = match("imprisoned", date(2026, 1, 1), date(2026, 12, 31)).record
    assert judge(term, AS_OF, RULES)[0] is True
    assert judge(term, AS_OF, rules)[0] is False


# ---- judging one record ----------------------------------------------------------------------


@pytest.mark.parametrize("status", ["imprisoned", "compulsory_rehab", "liberty_restricted"])
def test_term_edges(status):
    start = date(2026, 8, 31)
    six = six_months_after(start)  # 2027-02-28
    assert counts(match(status, start, six)) is True
    assert counts(match(status, start, six + timedelta(1))) is True
    assert counts(match(status, start, six - timedelta(1))) is False
    assert counts(match(status, start)) is True  # open end: runs, long enough
    assert counts(match(status, AS_OF, add_months(AS_OF, 6))) is True  # starts on as_of
    assert counts(match(status, AS_OF + timedelta(1), add_months(AS_OF, 12))) is False
    assert counts(match(status, date(2020, 1, 1), AS_OF)) is True  # ends on as_of
    assert counts(match(status, date(2020, 1, 1), AS_OF - timedelta(1))) is False  # released


def test_term_reason_reads_as_policy():
    record = match("imprisoned", date(2025, 1, 3), date(2027, 1, 2)).record
    assert judge(record, AS_OF, RULES) == (
        True,
        "imprisoned 2025-01-03–2027-01-02 (term ≥ 6 months, running)",
    )


def test_lost_contact_counts_six_months_after_the_report():
    start = date(2026, 5, 31)  # six months complete on 2026-11-30
    assert counts(match("lost_contact", start)) is True
    assert counts(match("lost_contact", start + timedelta(1))) is False
    assert counts(match("lost_contact", date(2026, 6, 30))) is False


@pytest.mark.parametrize(
    "grade, kind, expected",
    [
        (1, "visual", True),
        (2, "physical", True),
        (3, "physical", False),
        (4, "hearing", False),
        (3, "intellectual", True),
        (4, "mental", True),
        (3, None, None),  # depends on the kind, which is unknown
        (None, "mental", None),
    ],
)
def test_disability(grade, kind, expected):
    assert counts(match("severe_disability", date(2020, 1, 1), None, grade, kind)) is expected


def test_dated_statuses_count_from_start_until_end():
    assert counts(match("deceased", AS_OF)) is True
    assert counts(match("deceased", AS_OF + timedelta(1))) is False
    assert counts(match("serious_illness", date(2020, 1, 1), AS_OF - timedelta(1))) is False
    assert counts(match("deceased")) is None  # no start date: cannot tell


# ---- classifying a child ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "father, mother, expected",
    [
        (ORPHANING, ORPHANING, ORPHAN),
        (ORPHANING, EIGHT, DE_FACTO),
        (EIGHT, EIGHT, DE_FACTO),
        (NONE, ORPHANING, NOT_ELIGIBLE),
        (EIGHT, NONE, NOT_ELIGIBLE),
        (UNKNOWN, ORPHANING, NEEDS_REVIEW),
        (EIGHT, UNKNOWN, NEEDS_REVIEW),
        (UNKNOWN, UNKNOWN, NEEDS_REVIEW),
        (UNKNOWN, NONE, NOT_ELIGIBLE),
    ],
)
def test_combine(father, mother, expected):
    assert combine(father, mother) == expected


def test_orphan_with_evidence_and_precedence():
    father = [match("lost_contact", date(2015, 1, 1), node="police"),
              match("declared_missing", date(2019, 1, 1), node="court")]  # fmt: skip
    mother = [match("deceased", date(2020, 1, 1), node="health")]
    result = classify(CHILD, AS_OF, father, mother, RULES)
    assert result.classification == ORPHAN
    assert (result.father.status, result.mother.status) == ("declared_missing", "deceased")
    assert result.evidence == (f"court/court@v3#{HANDLE.hex()}", f"health/health@v3#{HANDLE.hex()}")
    assert "father lost_contact since 2015-01-01 (≥ 6 months since the report)" in result.reasons


def test_released_parent_makes_the_child_not_eligible():
    father = [match("imprisoned", date(2024, 1, 1), AS_OF - timedelta(1))]
    mother = [match("deceased", date(2020, 1, 1))]
    result = classify(CHILD, AS_OF, father, mother, RULES)
    assert result.classification == NOT_ELIGIBLE
    assert result.father.status == NONE and result.father.evidence == ()
    assert "ended before 2026-11-30" in result.reasons[0]


def test_unknown_parent_needs_review_unless_the_other_rules_it_out():
    mother = [match("imprisoned", date(2025, 1, 1))]
    review = classify(CHILD, AS_OF, Unknown("blank"), mother, RULES)
    assert review.classification == NEEDS_REVIEW and review.father.status == UNKNOWN
    assert review.reasons[0] == "father identifier blank: nobody could be asked"
    assert classify(CHILD, AS_OF, Unknown("blank"), [], RULES).classification == NOT_ELIGIBLE
    missing_date = [match("deceased")]
    assert classify(CHILD, AS_OF, missing_date, mother, RULES).classification == NEEDS_REVIEW


def test_eighteenth_birthday():
    orphaned = [match("deceased", date(2010, 1, 1))]
    adult = classify(child_born(add_months(AS_OF, -18 * 12)), AS_OF, orphaned, orphaned, RULES)
    assert adult.classification == NOT_ELIGIBLE and adult.age == 18
    assert adult.father.status == adult.mother.status == NOT_ASKED
    assert adult.reasons == ("aged 18 on 2026-11-30: 18 or more",)
    minor = child_born(add_months(AS_OF, -18 * 12) + timedelta(1))
    assert classify(minor, AS_OF, orphaned, orphaned, RULES).classification == ORPHAN


@pytest.mark.parametrize("born", [date(2008, 2, 29), date(2008, 11, 30), date(2010, 12, 1)])
def test_age_equals_psi_ids(born):
    child = child_born(born)
    for on in (date(2026, 2, 28), date(2026, 3, 1), AS_OF, date(2026, 12, 1), date(2028, 2, 29)):
        assert age_of(child, on) == age_on(child, on) == ages_of([child], on)[0]
