"""The screening end to end over a real federation: the classification equals the synthetic
city's planted truth for every child, outputs keep to data minimisation, reruns diff against the
history, a node failure stops the run, and the roll is served back as a dataset."""

import argparse
import csv
import dataclasses
import json
import re
import subprocess
import sys
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import pytest

from nodes import cli
from nodes.cli import screen as command
from nodes.client.client import Client
from nodes.client.screening import NodesFailed, ScreeningResult, roll_register, screen
from nodes.client.screening.classify import (
    CANDIDATES,
    CLASSES,
    ELIGIBLE,
    NOT_ELIGIBLE,
    Match,
    classify,
)
from nodes.client.screening.report import RESULT_COLUMNS, WITHHELD
from nodes.client.screening.rules import load_rules
from nodes.client.screening.run import compare
from nodes.demo.federation import LocalFederation
from nodes.demo.synth import DEPARTMENTS, REGISTER_COLUMNS, generate_city, write_city
from nodes.shared.config import load_federation
from psi.dates import add_months
from psi.errors import InputError
from psi.ids import birth_date, check_character
from psi.labels import Record

AS_OF = date(2026, 11, 30)
LATER = date(2027, 5, 31)
IDENTIFIER = re.compile(r"\d{17}[\dX]")


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    city = generate_city(children=600, as_of=AS_OF, seed=11)
    return city, write_city(city, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def federation(city, tmp_path_factory):
    _, paths = city
    registers = {d: paths[d] for d in DEPARTMENTS}
    with LocalFederation(tmp_path_factory.mktemp("federation"), registers) as fed:
        fed.setup()
        fed.build()
        fed.start()
        yield fed


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def first(city, federation, runs):
    _, paths = city
    return screen(federation.federation_file, paths["roster"], AS_OF, runs / "first")


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_classification_equals_the_truth_for_every_child(city, first):
    c, _ = city
    got = {s.verdict.child_id: s.verdict for s in first.children}
    assert len(got) == len(c.truth) == 600
    for truth in c.truth:
        verdict = got[truth.child_id]
        assert verdict.classification == truth.classification, (truth, verdict.reasons)
        if truth.classification != NOT_ELIGIBLE:
            statuses = (verdict.father.status, verdict.mother.status)
            assert statuses == (truth.father_status, truth.mother_status), truth
    counts = Counter(t.classification for t in c.truth)
    assert first.counts() == counts
    assert all(counts[k] for k in ("orphan", "de_facto_unattended", "needs_review"))
    # The planted edges are all there, so the equality above covers them.
    cases = {t.father_case for t in c.truth} | {t.mother_case for t in c.truth}
    assert {
        "imprisoned_6m_exact",
        "imprisoned_6m_less_a_day",
        "released_day_before",
        "imprisoned_after_as_of",
        "lost_contact_just_short",
        "disability_regraded",
    } <= cases
    assert {t.age for t in c.truth if t.classification == NOT_ELIGIBLE} >= {17, 18}
    written = [x for r in c.roster for x in (r.father_id, r.mother_id)]
    assert "" in written and any(len(x) == 15 for x in written)  # blank and legacy ids
    assert any(x and c.canonical(x) is None for x in written)  # wrong check characters
    assert any(x and c.canonical(x) != x for x in written)  # messy spellings


def test_only_minors_parents_are_asked_and_all_first_time(city, first):
    c, _ = city
    minors = [r for r, t in zip(c.roster, c.truth, strict=True) if t.age < 18]
    asked = {x for r in minors for x in map(c.canonical, (r.father_id, r.mother_id)) if x}
    assert {n.node for n in first.nodes} == set(DEPARTMENTS)
    for run in first.nodes:
        assert run.queried == run.evaluated == len(asked) and run.table_version == 1


def test_outputs_keep_to_data_minimisation(city, first):
    c, _ = city
    out = first.out_dir
    results = rows(out / "results.csv")
    assert tuple(results[0]) == RESULT_COLUMNS
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert doc["retain_ineligible"] is False and doc["as_of"] == AS_OF.isoformat()
    assert doc["counts"]["classification"] == {k: first.counts()[k] for k in CLASSES}
    assert {n["table_version"] for n in doc["nodes"]} == {1}
    for row, entry in zip(results, doc["children"], strict=True):
        assert row["child_id"] == entry["child_id"]
        if row["classification"] == NOT_ELIGIBLE and "aged" not in row["reasons"]:
            assert (row["father_status"], row["mother_status"], row["reasons"]) == (WITHHELD,) * 3
            assert row["evidence"] == "" and entry["evidence"] == []
        elif row["classification"] in ELIGIBLE:
            assert row["evidence"] and row["father_status"] not in ("none", WITHHELD)
    # No parent identifier, in any spelling, is written anywhere; rejects are masked.
    parents = {x for r in c.roster for x in (r.father_id, r.mother_id) if x}
    parents |= {c.canonical(x) for x in parents} - {None}
    for name in ("results.csv", "results.json", "report.html", "rejects.csv"):
        text = (out / name).read_text(encoding="utf-8")
        assert not any(p in text for p in parents), name
    invalid = [x for r in c.roster for x in (r.father_id, r.mother_id) if x and not c.canonical(x)]
    rejects = rows(out / "rejects.csv")
    assert len(rejects) == len(invalid) > 0
    assert all("*" in r["masked_value"] and r["reason"] for r in rejects)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("<svg") == 3 and "src=" not in html and "href=" not in html


def test_retained_statuses_are_recorded_as_such(city, federation, runs, first, monkeypatch):
    # a long list is cut in the report
    monkeypatch.setattr("nodes.client.screening.report.LISTED", 3)
    _, paths = city
    result = screen(
        federation.federation_file,
        paths["roster"],
        AS_OF,
        runs / "retained",
        retain_ineligible=True,
        history_dir=runs / "retained-history",
    )
    doc = json.loads((runs / "retained" / "results.json").read_text(encoding="utf-8"))
    assert doc["retain_ineligible"] is True and "retained" in doc["minimisation"]
    shown = [r for r in doc["children"] if r["classification"] == NOT_ELIGIBLE]
    assert not any(WITHHELD in (r["father_status"], r["mother_status"]) for r in shown)
    assert all(n.evaluated == 0 and n.cached == n.queried for n in result.nodes)
    candidates = sum(n for k, n in result.counts().items() if k in CANDIDATES)
    html = (runs / "retained" / "report.html").read_text(encoding="utf-8")
    assert f"The first 3 of {candidates:,} candidates; all are in results.csv" in html


def family(city, **wanted) -> list:
    """Truth rows whose fields have the wanted values, with canonical parent ids."""
    c, _ = city
    return [
        (t, c.canonical(r.father_id), c.canonical(r.mother_id))
        for r, t in zip(c.roster, c.truth, strict=True)
        if all(getattr(t, k) == v for k, v in wanted.items())
    ]


def rewrite(path: Path, rows_: list) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(REGISTER_COLUMNS)
        writer.writerows(rows_)


@pytest.fixture(scope="module")
def corrected(city, federation, first):
    """Change registers after the first run, rebuild, and screen again as of the same date."""
    c, paths = city
    withdrawn, released = family(
        city, classification="de_facto_unattended", father_case="imprisoned"
    )[:2]
    newly = next(
        f for f in family(city, classification=NOT_ELIGIBLE, father_case="clear")
        if f[0].mother_status != "none" and f[0].age < 18 and f[1]
    )  # fmt: skip
    orphaned = next(
        f for f in family(city, classification="de_facto_unattended", father_status="deceased")
        if f[2]
    )  # fmt: skip
    prison = []
    for row in c.registers["prison"]:
        person = c.canonical(row.id_number)
        if person == withdrawn[1]:
            continue  # the record is withdrawn
        if person == released[1]:
            row = row._replace(end_date=(AS_OF - timedelta(1)).isoformat())
        prison.append(row)
    day = (AS_OF - timedelta(10)).isoformat()
    deaths = [(newly[1], "deceased", day, "", "", "", "HL-NEW-1"),
              (orphaned[2], "deceased", day, "", "", "", "HL-NEW-2")]  # fmt: skip
    rewrite(paths["prison"], prison)
    rewrite(paths["health"], [*c.registers["health"], *deaths])
    federation.build()
    result = screen(federation.federation_file, paths["roster"], AS_OF, first.out_dir.parent / "b")
    expected = {
        "withdrawn": withdrawn[0].child_id,
        "released": released[0].child_id,
        "new": newly[0].child_id,
        "orphaned": orphaned[0].child_id,
        "was": orphaned[0].mother_status,
    }
    return result, expected


def test_rerun_after_corrections_lists_exactly_what_changed(first, corrected):
    result, expected = corrected
    changes = result.changes
    assert changes.previous["as_of"] == AS_OF.isoformat()
    assert changes.previous["file"] == str(first.history_file)
    ended = {c.child_id: [w.code for w in c.why] for c in changes.ended}
    assert ended == {
        expected["withdrawn"]: ["no_longer_matched"],
        expected["released"]: ["status_ended"],
    }
    [new] = changes.new
    assert new.child_id == expected["new"] and new.before == NOT_ELIGIBLE
    [changed] = changes.changed
    assert changed.child_id == expected["orphaned"]
    assert (changed.before, changed.after) == ("de_facto_unattended", "orphan")
    assert [w.text for w in changed.why] == [
        "de_facto_unattended → orphan",
        f"mother {expected['was']} → deceased",
    ]
    versions = {n.node: n.table_version for n in result.nodes}
    assert versions == {"prison": 2, "police": 1, "court": 1, "health": 2, "disability": 1}
    # Same parents as before: every output came from the client's cache.
    assert all(n.evaluated == 0 and n.cached == n.queried for n in result.nodes)
    doc = json.loads((result.out_dir / "results.json").read_text(encoding="utf-8"))
    assert doc["changes"]["counts"] == {
        "new": 1, "ended": 2, "changed": 1,
        "ended_why": {"no_longer_matched": 1, "status_ended": 1},
    }  # fmt: skip
    html = (result.out_dir / "report.html").read_text(encoding="utf-8")
    assert expected["released"] in html and "no longer counts" in html


def test_a_later_date_ends_eligibility_at_eighteen(city, federation, corrected, runs):
    _, paths = city
    before, _ = corrected
    result = screen(federation.federation_file, paths["roster"], LATER, runs / "later")
    turned = {
        s.verdict.child_id
        for s in before.children
        if s.verdict.classification in CANDIDATES
        and add_months(birth_date(s.verdict.child_id), 18 * 12) <= LATER
    }
    assert turned
    adult = {c.child_id for c in result.changes.ended if c.why[0].code == "turned_adult"}
    assert adult == turned
    assert result.changes.previous["as_of"] == AS_OF.isoformat()
    history = sorted(p.name for p in (runs / "history").iterdir())
    assert [name[:10] for name in history] == ["2026-11-30", "2026-11-30", "2027-05-31"]


def test_a_failed_node_stops_the_run_and_writes_nothing(city, federation, runs, monkeypatch):
    _, paths = city
    monkeypatch.setitem(Client.__init__.__kwdefaults__, "retries", 0)
    text = federation.federation_file.read_text(encoding="utf-8")
    port = federation.ports["court"]
    broken = federation.root / "broken.toml"
    broken.write_text(text.replace(f':{port}"', ':1"'), encoding="utf-8")
    with pytest.raises(NodesFailed, match="node 'court'"):
        screen(broken, paths["roster"], AS_OF, runs / "failed", history_dir=runs / "h-failed")
    assert not (runs / "failed").exists() and not (runs / "h-failed").exists()
    args = namespace(broken, paths["roster"], runs / "failed")
    assert command.run(args) == command.EXIT_NODE_FAILED


def namespace(federation: Path, roster: Path, out: Path, **extra) -> argparse.Namespace:
    values = dict(
        federation=federation,
        roster=roster,
        as_of=AS_OF.isoformat(),
        out=out,
        rules=None,
        history=out.parent / f"{out.name}-history",
        retain_ineligible=False,
        encoding=None,
        lang="en",
        xlsx=False,
    )
    return argparse.Namespace(**(values | extra))


def test_command_in_process(city, federation, runs, capsys):
    _, paths = city
    args = namespace(federation.federation_file, paths["roster"], runs / "cli")
    assert command.run(args) == 0
    printed = capsys.readouterr().out
    assert "evaluated" in printed and "from cache" in printed and "withheld" in printed
    assert not IDENTIFIER.search(printed)
    with pytest.raises(InputError, match="--as-of"):
        command.run(replace_args(args, as_of="30/11/2026"))
    with pytest.raises(InputError, match="no column 'child_id'"):
        command.run(replace_args(args, roster=paths["health"]))
    with pytest.raises(InputError, match="cannot read"):
        command.run(replace_args(args, rules=runs / "no-rules.toml"))


def replace_args(args: argparse.Namespace, **changes) -> argparse.Namespace:
    return argparse.Namespace(**(vars(args) | changes))


def test_command_as_a_subprocess(city, federation, runs):
    if "screen" not in cli.COMMANDS:
        pytest.skip("psi screen is not registered in nodes.cli.COMMANDS yet")
    _, paths = city
    main = "import sys; from nodes.cli import main; sys.exit(main(sys.argv[1:]))"
    base = [sys.executable, "-c", main, "screen", "--federation", str(federation.federation_file),
            "--roster", str(paths["roster"]), "--out", str(runs / "sub"),
            "--history", str(runs / "sub-history")]  # fmt: skip
    bad = subprocess.run([*base, "--as-of", "someday"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    good = subprocess.run([*base, "--as-of", AS_OF.isoformat()], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert " evaluated, " in good.stdout and not IDENTIFIER.search(good.stdout)


def test_the_roll_is_served_back_as_a_dataset(city, first, tmp_path):
    c, _ = city
    roll = tmp_path / "roll.csv"
    eligible = {
        s.verdict.child_id: s.verdict.classification
        for s in first.children
        if s.verdict.classification in ELIGIBLE
    }
    assert roll_register(first, roll) == len(eligible)
    with LocalFederation(tmp_path / "roll", {"civil-affairs-roll": roll}) as fed:
        fed.setup()
        fed.build()
        fed.start()
        with Client(load_federation(fed.federation_file)) as client:
            found = client.query(
                "civil-affairs-roll",
                "civil-affairs-roll",
                [t.child_id for t in c.truth],
                purpose="verification",
            )
    labels = {child: label.records for child, label in found.matches}
    assert {child: r[0].status for child, r in labels.items()} == eligible
    assert all(len(r) == 1 and r[0].start == AS_OF for r in labels.values())


def test_a_bad_history_file_fails_before_any_query(city, tmp_path):
    _, paths = city
    history = tmp_path / "history"
    history.mkdir()
    name = "2026-10-31_20261031T000000000000Z.json"
    (history / name).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(f"{name}: not a screening")):
        screen(tmp_path / "no-federation.toml", paths["roster"], AS_OF, tmp_path / "out",
               history_dir=history)  # fmt: skip
    assert not (tmp_path / "out").exists()


def kid(born: date, sequence: int) -> str:
    body = f"150802{born:%Y%m%d}{sequence:03d}"
    return body + check_character(body)


def test_compare_says_why_eligibility_ended():
    rules = load_rules()
    released, identified, gone = (kid(date(2015, 1, 1), n) for n in (1, 2, 3))
    dead = [Match("health", "health", 1, Record("deceased", date(2020, 1, 1)))]
    served = [Match("prison", "prison", 1, Record("imprisoned", date(2024, 1, 1), AS_OF))]
    previous = {"as_of": "2026-10-31", "run_at": "x", "file": "f", "children": [
        {"child_id": released, "classification": "de_facto_unattended",
         "father_status": "imprisoned", "mother_status": "deceased"},
        {"child_id": identified, "classification": "needs_review",
         "father_status": "unknown", "mother_status": "imprisoned"},
        {"child_id": gone, "classification": "orphan",
         "father_status": "deceased", "mother_status": "deceased"},
    ]}  # fmt: skip
    later = AS_OF + timedelta(1)
    now = [classify(released, later, served, dead, rules),
           classify(identified, later, [], served, rules)]  # fmt: skip
    changes = compare(previous, now, rules)
    assert not changes.new and not changes.changed
    why = {c.child_id: [(w.code, w.text) for w in c.why] for c in changes.ended}
    assert why == {
        released: [("status_ended", "father imprisoned no longer counts: imprisoned "
                    "2024-01-01–2026-11-30 (ended before 2026-12-01)")],
        identified: [("parent_identified", "father now identified: none"),
                     ("status_ended", "mother imprisoned no longer counts: imprisoned "
                      "2024-01-01–2026-11-30 (ended before 2026-12-01)")],
        gone: [("left_roster", "no longer in the roster")],
    }  # fmt: skip


def test_reused_classes_equal_a_fresh_classification(city, federation, corrected, tmp_path):
    """A run reuses the previous run's class of every child whose parents' entries did not
    change, for the same date and for a later one, and writes what a run without a memo
    writes; other rules reuse nothing."""
    _, paths = city
    fed, roster = federation.federation_file, paths["roster"]

    def run(as_of: date, out: str, history: str, **kw) -> tuple[ScreeningResult, bytes]:
        result = screen(fed, roster, as_of, tmp_path / out, history_dir=tmp_path / history, **kw)
        return result, (tmp_path / out / "results.csv").read_bytes()

    base, base_csv = run(AS_OF, "base", "h")
    assert base.reused == 0 and base_csv == (corrected[0].out_dir / "results.csv").read_bytes()
    again, again_csv = run(AS_OF, "again", "h")
    known = [
        v for v in (s.verdict for s in again.children)
        if v.age < 18 and not v.father.unknown and not v.mother.unknown
    ]  # fmt: skip
    assert again.reused == len(known)
    assert again_csv == base_csv
    later, later_csv = run(LATER, "later", "h")
    fresh, fresh_csv = run(LATER, "fresh", "h-fresh")
    assert 0 < later.reused < len(later.children) and fresh.reused == 0
    assert later_csv == fresh_csv and later.counts() == fresh.counts()
    other = dataclasses.replace(load_rules(), term_months=7)
    assert run(LATER, "other", "h", rules=other)[0].reused == 0
