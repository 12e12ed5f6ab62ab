"""The synthetic city: deterministic; identifiers valid except the planted bad ones; every planted
edge present and decisive; the truth agrees with the records under POLICY.md as judged here from
scratch; files in canonical columns; ``psi synth`` on the command line."""

import argparse
import csv
import re
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import date, timedelta
from pathlib import Path

import pytest

from nodes import cli
from nodes.cli import synth as synth_command
from nodes.demo.synth import (
    CASES,
    CLASSES,
    DEPARTMENTS,
    EIGHT,
    NONE,
    ORPHANING,
    REGION_CODES,
    REGISTER_COLUMNS,
    ROSTER_COLUMNS,
    TRUTH_COLUMNS,
    UNKNOWN,
    City,
    expected_matches,
    generate_city,
    six_months_after,
    write_city,
)
from psi.errors import InputError
from psi.ids import Reason, normalise_many
from psi.labels import DISABILITY_KIND_CODES

AS_OF = date(2024, 6, 30)
ROOT = Path(__file__).resolve().parent.parent
TERMS = {"imprisoned", "compulsory_rehab", "liberty_restricted"}


@pytest.fixture(scope="module")
def city() -> City:
    return generate_city(children=2000, as_of=AS_OF, seed=7)


def canonical_by_normalise(values: list[str]) -> list[str | None]:
    batch = normalise_many(values, today=AS_OF)
    return [i.decode() if ok else None for i, ok in zip(batch.ids, batch.valid, strict=True)]


def born(identifier: str) -> date:
    return date(int(identifier[6:10]), int(identifier[10:12]), int(identifier[12:14]))


def age(identifier: str, on: date) -> int:
    birth = born(identifier)
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


# ---- POLICY.md, judged here independently of how the city was planted ----


def counts(row, as_of: date = AS_OF) -> bool:
    start = date.fromisoformat(row.start_date)
    end = date.fromisoformat(row.end_date) if row.end_date else None
    if start > as_of:
        return False
    if row.status in TERMS:
        return end is None or (as_of <= end and end >= six_months_after(start))
    if row.status == "lost_contact":
        return as_of >= six_months_after(start)
    if row.status == "severe_disability":
        return int(row.disability_grade) <= 2 or row.disability_kind in ("intellectual", "mental")
    return True


def records_by_person(city: City) -> dict[str, list[tuple[str, object]]]:
    people = defaultdict(list)
    for department, rows in city.registers.items():
        for row in rows:
            if canonical := city.canonical(row.id_number):
                people[canonical].append((department, row))
    return people


def effect(statuses: set[str]) -> str:
    if statuses & {"deceased", "declared_missing"}:
        return ORPHANING
    return EIGHT if statuses else NONE


def policy_class(child_age: int, father: str, mother: str) -> str:
    if child_age >= 18:
        return "not_eligible"
    if UNKNOWN in (father, mother):
        return "not_eligible" if NONE in (father, mother) else "needs_review"
    if NONE in (father, mother):
        return "not_eligible"
    return "orphan" if father == mother == ORPHANING else "de_facto_unattended"


# ---- tests ----


@pytest.mark.parametrize(
    "start, expected",
    [
        (date(2023, 8, 31), date(2024, 2, 29)),
        (date(2024, 8, 31), date(2025, 2, 28)),
        (date(2024, 3, 15), date(2024, 9, 15)),
        (date(2025, 12, 31), date(2026, 6, 30)),
    ],
)
def test_six_months_after_is_calendar_months_clamped(start, expected):
    assert six_months_after(start) == expected


def test_same_seed_same_city_other_seed_other_city():
    one = generate_city(children=300, as_of=AS_OF, seed=3)
    assert one == generate_city(children=300, as_of=AS_OF, seed=3)
    assert one.roster != generate_city(children=300, as_of=AS_OF, seed=4).roster


def test_every_identifier_normalises_to_its_canonical_form_except_the_planted_bad_ones(city):
    written = [r.child_id for r in city.roster]
    written += [x for r in city.roster for x in (r.father_id, r.mother_id) if x]
    written += [row.id_number for rows in city.registers.values() for row in rows]
    batch = normalise_many(written, today=AS_OF)
    for value, got, reason in zip(written, batch.ids, batch.reasons, strict=True):
        expected = city.messy_ids.get(value, value)
        if expected is None:
            assert reason == Reason.BAD_CHECK, value
        else:
            assert reason == Reason.OK and got.decode() == expected, value
    assert all(r.child_id == city.canonical(r.child_id) for r in city.roster)
    messy = list(city.messy_ids)
    for name, pattern in [
        ("lower-case x", r"\d{17}x"),
        ("full-width", r"[０-９]{17}[０-９Ｘ]"),
        ("spaces", r"\d{6} \d{8} \d{3}[\dX]"),
        ("hyphens", r"\d{6}-\d{8}-\d{3}[\dX]"),
        ("padded", r" \d{17}[\dX] "),
        ("legacy 15 digits", r"\d{15}"),
    ]:
        assert any(re.fullmatch(pattern, m) for m in messy), name
    bad = {value for value, canonical in city.messy_ids.items() if canonical is None}
    roster_parents = {x for r in city.roster for x in (r.father_id, r.mother_id)}
    assert len(bad & roster_parents) >= 5
    assert sum(row.id_number in bad for rows in city.registers.values() for row in rows) >= 5


def test_bad_register_identifiers_belong_to_nobody_in_the_roster(city):
    bodies = {x[:17] for r in city.roster for x in (r.father_id, r.mother_id) if len(x) == 18}
    bodies |= {r.child_id[:17] for r in city.roster}
    bad = [
        row.id_number
        for rows in city.registers.values()
        for row in rows
        if city.canonical(row.id_number) is None
    ]
    assert bad and not any(value[:17] in bodies for value in bad)


def test_identifiers_describe_the_people(city):
    children = [r.child_id for r in city.roster]
    fathers = [city.canonical(r.father_id) for r in city.roster]
    mothers = [city.canonical(r.mother_id) for r in city.roster]
    parents = [x for x in fathers + mothers if x]
    assert len(set(children)) == len(children) and len(set(parents)) == len(parents)
    assert not set(children) & set(parents)
    assert all(int(x[16]) % 2 == 1 for x in fathers if x)
    assert all(int(x[16]) % 2 == 0 for x in mothers if x)
    assert all(x[:6] in REGION_CODES for x in children + parents)
    assert all(1960 <= born(x).year <= 2000 and int(x[14:17]) <= 995 for x in parents)
    for row, truth in zip(city.roster, city.truth, strict=True):
        assert row.child_id == truth.child_id and row.region_code == row.child_id[:6]
        assert age(row.child_id, AS_OF) == truth.age
        assert (born(row.child_id).month, born(row.child_id).day) != (2, 29)
    ages = Counter(t.age for t in city.truth)
    assert set(ages) == set(range(20))


def test_truth_agrees_with_the_records_under_the_policy(city):
    people = records_by_person(city)
    case_effect = {case.name: case.effect for case in CASES}
    for row, truth in zip(city.roster, city.truth, strict=True):
        found = []
        for written, status, case in (
            (row.father_id, truth.father_status, truth.father_case),
            (row.mother_id, truth.mother_status, truth.mother_case),
        ):
            parent = city.canonical(written)
            if parent is None:
                assert status == UNKNOWN
                found.append(UNKNOWN)
                continue
            counting = {r.status for _, r in people.get(parent, []) if counts(r)}
            found.append(effect(counting))
            assert found[-1] == case_effect.get(case, NONE), (case, people.get(parent))
            assert status == NONE if found[-1] == NONE else status in counting
            if found[-1] == ORPHANING:
                assert status in ("deceased", "declared_missing")
        assert truth.classification == policy_class(truth.age, *found), truth


def test_every_class_and_every_planted_edge_is_present(city):
    assert Counter(t.classification for t in city.truth).keys() == set(CLASSES)
    known = {
        r.child_id: (city.canonical(r.father_id), city.canonical(r.mother_id)) for r in city.roster
    }
    effects = {case.name: case.effect for case in CASES} | {"clear": NONE}
    seen, decisive = Counter(), Counter()
    for t in city.truth:
        seen.update((t.father_case, t.mother_case))
        father_known, mother_known = known[t.child_id]
        if t.age < 18 and father_known and mother_known:
            # A case decides when the other parent counts: the class then turns on it.
            if effects[t.mother_case] != NONE:
                decisive[t.father_case] += 1
            if effects[t.father_case] != NONE:
                decisive[t.mother_case] += 1
    for case in CASES:
        assert seen[case.name] >= 5 and decisive[case.name] >= 1, case.name
    anniversary = date(AS_OF.year - 18, AS_OF.month, AS_OF.day)
    births = Counter(born(t.child_id) for t in city.truth)
    assert births[anniversary] >= 3  # 18 on as_of: not eligible
    assert births[anniversary + timedelta(1)] >= 3  # still 17 on as_of
    assert any(anniversary - timedelta(10) <= day < anniversary for day in births)  # just 18
    rows = city.roster
    assert any(not r.father_id and r.mother_id for r in rows)
    assert any(r.father_id and not r.mother_id for r in rows)
    assert any(not r.father_id and not r.mother_id for r in rows)
    unknown_one = [
        t for t in city.truth if t.age < 18 and UNKNOWN in (t.father_status, t.mother_status)
    ]
    assert {t.classification for t in unknown_one} == {"needs_review", "not_eligible"}


def test_parents_appear_in_two_departments_and_twice_in_one(city):
    people = records_by_person(city)
    parents = {x for r in city.roster for x in map(city.canonical, (r.father_id, r.mother_id)) if x}
    departments = [Counter(d for d, _ in people[p]) for p in parents if p in people]
    assert any(len(c) >= 2 for c in departments)
    assert any(max(c.values()) >= 2 for c in departments)


def test_registers_are_canonical_and_mostly_strangers(city):
    parents = {x for r in city.roster for x in map(city.canonical, (r.father_id, r.mother_id)) if x}
    for department, rows in city.registers.items():
        refs = [row.record_ref for row in rows]
        assert len(set(refs)) == len(refs)
        for row in rows:
            assert row.status in DEPARTMENTS[department]
            start = date.fromisoformat(row.start_date)
            assert row.end_date == "" or date.fromisoformat(row.end_date) >= start
            assert re.fullmatch(rf"[A-Z]{{2}}-{start.year}-\d{{6,}}", row.record_ref)
            if department == "disability":
                assert (
                    row.disability_grade in "1234" and row.disability_kind in DISABILITY_KIND_CODES
                )
            else:
                assert row.disability_grade == row.disability_kind == ""
        strangers = sum(city.canonical(row.id_number) not in parents for row in rows)
        assert strangers >= len(rows) - strangers > 0, department
    statuses = {row.status for rows in city.registers.values() for row in rows}
    assert statuses == {s for held in DEPARTMENTS.values() for s in held}


def test_expected_matches_is_the_plaintext_join(city):
    roster = canonical_by_normalise([x for r in city.roster for x in (r.father_id, r.mother_id)])
    parents = {x for x in roster if x}
    expected = expected_matches(city)
    assert expected.keys() == city.registers.keys()
    for department, rows in city.registers.items():
        ids = canonical_by_normalise([row.id_number for row in rows])
        assert expected[department] == parents & {x for x in ids if x}
        assert expected[department]


def test_write_city_writes_utf8_csv_with_headers(city, tmp_path):
    paths = write_city(city, tmp_path / "city")
    assert set(paths) == {"roster", "truth", "readme", *DEPARTMENTS}
    tables = {"roster": (ROSTER_COLUMNS, city.roster), "truth": (TRUTH_COLUMNS, city.truth)}
    tables |= {d: (REGISTER_COLUMNS, rows) for d, rows in city.registers.items()}
    for name, (columns, rows) in tables.items():
        with open(paths[name], encoding="utf-8", newline="") as handle:
            header, *data = list(csv.reader(handle))
        assert tuple(header) == columns
        assert [tuple(r) for r in data] == [tuple(r)[: len(columns)] for r in rows], name
    assert "fictitious" in paths["readme"].read_text(encoding="utf-8")


def test_small_and_clean_cities():
    empty = generate_city(children=0, as_of=AS_OF)
    assert empty.roster == empty.truth == [] and not any(empty.registers.values())
    clean = generate_city(children=200, as_of=AS_OF, messy=0, background=0)
    assert clean.messy_ids == {}
    parents = {x for r in clean.roster for x in (r.father_id, r.mother_id)}
    strangers = {row.id_number for rows in clean.registers.values() for row in rows} - parents
    blank_with_records = [
        case
        for r, t in zip(clean.roster, clean.truth, strict=True)
        for written, case in ((r.father_id, t.father_case), (r.mother_id, t.mother_case))
        if not written and case != "clear"
    ]
    assert len(strangers) == len(blank_with_records)  # only parents the roster cannot name


@pytest.mark.parametrize(
    "arguments",
    [
        {"children": -1},
        {"children": 2.5},
        {"seed": -3},
        {"messy": 1.5},
        {"messy": float("nan")},
        {"background": -1.0},
        {"as_of": date(1999, 12, 31)},
        {"as_of": "2024-06-30"},
    ],
)
def test_bad_arguments_are_input_errors(arguments):
    with pytest.raises(InputError):
        generate_city(**{"as_of": AS_OF, **arguments})


def test_synth_command_in_process(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth_command.register(parser.add_subparsers())
    args = parser.parse_args(["synth", "--out", str(tmp_path), "--children", "20", "--seed", "1"])
    assert args.func(args) == 0
    assert "20 children as of" in capsys.readouterr().out and (tmp_path / "truth.csv").exists()
    for option, value in [("--as-of", "someday"), ("--seed", "-1"), ("--messy", "lots")]:
        bad = parser.parse_args(["synth", "--out", str(tmp_path), option, value])
        with pytest.raises(InputError, match=option.lstrip("-")):
            bad.func(bad)


registered = pytest.mark.skipif(
    "synth" not in cli.COMMANDS, reason="psi synth is not registered in nodes.cli.COMMANDS yet"
)


def psi(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", "synth", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@registered
def test_psi_synth_writes_the_city(tmp_path):
    out = tmp_path / "city"
    done = psi("--out", str(out), "--children", "150", "--as-of", "2024-06-30", "--seed", "2")
    assert done.returncode == 0, done.stderr
    assert "truth: orphan" in done.stdout and "prison" in done.stdout
    expected = write_city(generate_city(children=150, as_of=AS_OF, seed=2), tmp_path / "here")
    for name, path in expected.items():
        assert (out / path.name).read_bytes() == path.read_bytes(), name


@registered
@pytest.mark.parametrize(
    "option, value",
    [
        ("--as-of", "2024-02-30"),
        ("--as-of", "June"),
        ("--children", "-5"),
        ("--children", "many"),
        ("--messy", "2"),
    ],
)
def test_psi_synth_bad_argument_is_one_line(tmp_path, option, value):
    done = psi("--out", str(tmp_path / "city"), option, value)
    assert done.returncode == 2
    assert done.stderr.startswith("psi synth: error:") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr and not (tmp_path / "city").exists()
