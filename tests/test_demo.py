"""``psi demo --data`` on a user's own files, as a new user would run it."""

import csv
import shutil
import subprocess
import sys
from datetime import date

from nodes.demo.synth import generate_city, write_city


def test_demo_on_user_data_screens_the_roster(tmp_path):
    city = generate_city(children=300, as_of=date(2026, 11, 30), seed=9)
    paths = write_city(city, tmp_path / "city")
    data = tmp_path / "mine"
    data.mkdir()
    for name in ("roster", "prison", "police", "court", "health", "disability"):
        shutil.copy(paths[name], data / f"{name}.csv")  # no truth, no config: just the files
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "nodes.cli",
            "demo",
            "--data",
            str(data),
            "--as-of",
            "2026-11-30",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    with open(out / "results.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "child_id",
        "child_name",
        "region_code",
        "classification",
        "father_status",
        "mother_status",
        "reasons",
        "evidence",
    ]
    truth = {t.child_id: t.classification for t in city.truth}
    assert {r["child_id"]: r["classification"] for r in rows} == truth
    assert "reverse query: education asked" in run.stdout
    assert (out / "report.html").exists()


def test_demo_data_folder_without_roster_is_one_clear_line(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "demo", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "has no roster.csv" in run.stderr and "Traceback" not in run.stderr
