"""Attacks on the completeness of the trail (issue 14, item 4).

A client that answers a re-query from its own cache sends nothing to the node, so only its own log
can say the lookup happened: it must, with purpose and counts. Entries that no signed tree head
covers can be altered or dropped without trace, so every command ends with a head and a verdict
never calls such entries verified. A reviewer's report shows the verdict and the operator's
actions beside sessions and refusals.
"""

import json
import sqlite3
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from nodes.demo.federation import LocalFederation
from nodes.demo.synth import generate_city, write_city
from nodes.shared.audit.log import AuditLog, generate_key

NODE = "prison"


def psi(*args: object, cwd: Path | None = None, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def entries(log: Path) -> list[dict]:
    with sqlite3.connect(log) as db:
        return [json.loads(d) for (d,) in db.execute("SELECT data FROM entries ORDER BY idx")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    city = generate_city(children=60, as_of=date(2026, 11, 30), seed=41)
    paths = write_city(city, tmp_path_factory.mktemp("data"))
    ids = sorted({city.canonical(r.father_id) for r in city.roster} - {None})[:25]
    with LocalFederation(tmp_path_factory.mktemp("fed"), {NODE: paths[NODE]}) as fed:
        fed.setup()
        fed.build()
        fed.start()
        (fed.root / "ids.csv").write_text("id_number\n" + "\n".join(ids) + "\n")
        yield fed


def query(world, purpose: str) -> subprocess.CompletedProcess:
    done = psi(
        "query",
        "--federation",
        world.federation_file,
        "--node",
        NODE,
        "--dataset",
        NODE,
        "--ids",
        world.root / "ids.csv",
        "--purpose",
        purpose,
        "--out",
        world.root / f"matches-{purpose}.csv",
    )
    assert done.returncode in (0, 1), done.stderr
    return done


def test_a_requery_answered_by_the_cache_is_logged_with_purpose_and_counts(world):
    client_log = world.root / "client-cache" / "audit.sqlite"
    query(world, "screening")
    query(world, "verification")  # same epoch: the cache answers, the node sees nothing
    lookups = [e for e in entries(client_log) if e["event"] == "lookup"]
    assert [(e["purpose"], e["answered_by"]) for e in lookups] == [
        ("screening", "node"),
        ("verification", "cache"),
    ]
    assert [(e["queried"], e["cached"], e["evaluated"]) for e in lookups] == [
        (25, 0, 25),
        (25, 25, 0),
    ]
    node_log = world.root / NODE / "state" / "audit.sqlite"
    node_purposes = {e.get("purpose") for e in entries(node_log) if e["event"] == "session_opened"}
    assert "verification" not in node_purposes  # only the client's log can tell

    report = psi("audit", "report", client_log)
    assert report.returncode == 0, report.stderr
    assert "lookups" in report.stdout and "verification" in report.stdout
    assert "cache" in report.stdout


def test_every_command_ends_with_a_signed_head(world):
    client_log = world.root / "client-cache" / "audit.sqlite"
    query(world, "screening")
    done = psi(
        "audit", "verify", client_log, "--key", world.root / "client-cache" / "audit-key.pub.pem"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not covered" not in done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith("verified")


def test_entries_no_head_covers_are_not_called_verified(tmp_path):
    key = generate_key(tmp_path / "key.pem")
    log = AuditLog(tmp_path / "live.sqlite", key, "civil-affairs")
    for n in range(35):
        log.append({"event": "table_fetched", "dataset": "prison", "bytes": n})
    copy = tmp_path / "copy.sqlite"  # what a reviewer copies from a live log
    with sqlite3.connect(copy) as target:
        log._db.backup(target)
    log.close()
    done = psi("audit", "verify", copy, "--key", tmp_path / "key.pub.pem")
    verdict = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 1, done.stdout
    assert not verdict.startswith("verified"), verdict
    assert "0..34" in verdict and "no signed tree head" in verdict


def test_the_report_shows_the_verdict_and_the_operators_actions(world, tmp_path):
    config = world.config_file(NODE)
    rotated = psi("node", "rotate", "--config", config, "--dataset", NODE, env=world.env())
    assert rotated.returncode == 0, rotated.stderr
    built = psi("node", "build", "--config", config, env=world.env())
    assert built.returncode == 0, built.stderr
    state = world.root / NODE / "state"
    page = tmp_path / "report.html"
    done = psi(
        "audit", "report", state / "audit.sqlite", "--key", state / "audit-key.pub.pem",
        "--html", page,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "verification: verified" in text
    assert "operator actions" in text
    assert "key_rotated" in text and "published" in text
    html = page.read_text()
    assert "Verification" in html and "verified" in html
    assert "Operator actions" in html and "key_rotated" in html
