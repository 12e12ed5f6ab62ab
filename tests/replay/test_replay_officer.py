"""The officer's and reviewer's walkthrough (docs/walkthrough-officer.md) replayed as a new user
runs it: only the ``psi`` command in subprocesses, files written by hand, the README's Python
example as printed, and bytes on disk. Each earlier mistake is replayed as the attack it was: a
spelling silently missed, an exit code that reads as "no match", a TLS refusal that does not say
whose CA, a report that is cut or runs off the page."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "walkthrough passphrase"
ENV = {**os.environ, "KINLINK_KEY_PASSPHRASE": PASSPHRASE, "LANG": "C.UTF-8"}


def psi(*args, cwd, timeout=300, env=ENV):
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


NODE_TOML = """[node]
id = "prison"
listen = "127.0.0.1:0"
state = "state"
tls = { ca = "../certs/ca.pem", cert = "../certs/prison.pem", key = "../certs/prison-key.pem" }

[datasets.prison]
title = "Persons serving a prison sentence"
csv = "../data/prison-gb18030.csv"
encoding = "gb18030"
statuses = ["imprisoned"]

[[grants]]
client = "civil-affairs"
datasets = ["prison"]
purposes = ["screening"]
fields = ["status", "start", "end", "handle"]
per_session = 100000
per_day = 1000000
per_epoch = 10000000
"""


def federation_toml(address: str, certs: str = "certs") -> str:
    return (
        f'[client]\nid = "civil-affairs"\ncache = "cache"\n'
        f'tls = {{ ca = "{certs}/ca.pem", cert = "{certs}/civil-affairs.pem", '
        f'key = "{certs}/civil-affairs-key.pem" }}\n\n[nodes.prison]\naddress = "{address}"\n'
    )


@pytest.fixture(scope="module")
def town(tmp_path_factory):
    """Data, certificates, a node over a GB18030 register, and civil affairs' federation file,
    as the walkthrough sets them up."""
    here = tmp_path_factory.mktemp("walkthrough")
    ok = psi("synth", "--out", "data", "--children", "150", "--as-of", "2026-11-30",
             "--seed", "4", "--messy", "0.3", cwd=here)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    register = (here / "data" / "prison.csv").read_text(encoding="utf-8")
    (here / "data" / "prison-gb18030.csv").write_bytes(register.encode("gb18030"))
    roster = (here / "data" / "roster.csv").read_text(encoding="utf-8")
    (here / "data" / "roster-gb18030.csv").write_bytes(roster.encode("gb18030"))
    ok = psi("certs", "init", "--out", "certs", "--nodes", "prison",
             "--clients", "civil-affairs", cwd=here)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    (here / "prison").mkdir()
    (here / "prison" / "node.toml").write_text(NODE_TOML, encoding="utf-8")
    built = psi("node", "build", "--config", "prison/node.toml", cwd=here)
    assert built.returncode == 0, built.stderr
    node = subprocess.Popen(
        [sys.executable, "-m", "nodes.cli", "node", "serve", "--config", "prison/node.toml",
         "--port-file", "prison/port"],
        cwd=here, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file = here / "prison" / "port"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert node.poll() is None and time.monotonic() < deadline, "the node did not start"
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        (here / "federation.toml").write_text(federation_toml(address), encoding="utf-8")
        yield here, address
    finally:
        node.terminate()
        node.wait(timeout=30)


def parents_file(here: Path) -> Path:
    """The roster's fathers and mothers as written (15-digit, lower-case x, full-width...)."""
    with open(here / "data" / "roster.csv", encoding="utf-8", newline="") as handle:
        cells = [c for r in csv.DictReader(handle) for c in (r["father_id"], r["mother_id"]) if c]
    path = here / "parents.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([["id_number"], *([c] for c in cells)])
    return path


def query(here: Path, *extra, federation="federation.toml", dataset="prison"):
    return psi("query", "--federation", federation, "--node", "prison", "--dataset", dataset,
               "--purpose", "screening", *extra, cwd=here)  # fmt: skip


def test_version(town):
    here, _ = town
    assert re.fullmatch(r"psi \d+\.\d+\.\d+\S*\n", psi("--version", cwd=here).stdout)


def test_the_readme_example_finds_what_psi_query_finds(town):
    """Attack replayed: raw spellings handed to Client.query used to miss 15-digit and lower-case
    x numbers silently (and full-width ones raised)."""
    here, _ = town
    parents = parents_file(here)
    code = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text("utf-8"), re.S)[1]
    script = subprocess.run([sys.executable, "-c", code], cwd=here, capture_output=True,
                            text=True, env=ENV, timeout=120)  # fmt: skip
    # psi query drops what is not an identity number; the example must be handed only numbers.
    assert script.returncode in (0, 1), script.stderr
    if script.returncode == 1:
        assert "are not identity numbers" in script.stderr and "Traceback" in script.stderr
        assert not re.search(r"\d{17}[\dX]", script.stderr)
        with open(parents, encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
        rejects = here / "rejected.csv"
        query(here, "--ids", parents, "--out", "-", "--rejects", rejects)
        bad = {r[1] for r in list(csv.reader(rejects.open(encoding="utf-8")))[1:]}
        kept = [rows[0]] + [r for n, r in enumerate(rows[1:], 2) if str(n) not in bad]
        with open(parents, "w", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerows(kept)
        script = subprocess.run([sys.executable, "-c", code], cwd=here, capture_output=True,
                                text=True, env=ENV, timeout=120)  # fmt: skip
        assert script.returncode == 0, script.stderr
    found = {line.split(" ", 1)[0] for line in script.stdout.splitlines()}
    listed = query(here, "--ids", parents, "--out", "-")
    assert listed.returncode == 0, listed.stderr
    assert found == {r["id_number"] for r in csv.DictReader(listed.stdout.splitlines())}
    assert any(len(c) == 15 or "x" in c for c in parents.read_text("utf-8").split())


def test_mistakes_are_exit_2_and_failures_exit_3_within_five_seconds(town, tmp_path):
    """Attacks replayed: an unreadable file read as "no match" (exit 1), a misspelt dataset as a
    node failure (exit 3), a dead node taking 8 s to say "UNAVAILABLE", another CA's client
    certificate reported as "Socket closed"."""
    here, address = town
    junk = tmp_path / "junk.csv"
    junk.write_text("id_number\nnot-an-id\n110105\n", encoding="utf-8")
    none = query(here, "--ids", junk, "--out", tmp_path / "m.csv")
    assert none.returncode == 2 and "no valid identifier" in none.stderr
    misspelt = query(here, "--ids", parents_file(here), "--out", "-", dataset="prisons")
    assert misspelt.returncode == 2 and "its datasets: prison" in misspelt.stderr
    (tmp_path / "dead.toml").write_text(
        federation_toml("127.0.0.1:9", str(here / "certs")), "utf-8"
    )
    started = time.monotonic()
    psi("--version", cwd=here)  # the interpreter's start, on this machine now
    baseline = time.monotonic() - started
    started = time.monotonic()
    dead = query(here, "--ids", parents_file(here), "--out", "-",
                 federation=tmp_path / "dead.toml")  # fmt: skip
    assert time.monotonic() - started - baseline < 5
    assert dead.returncode == 3 and "at 127.0.0.1:9" in dead.stderr
    assert "nothing listens" in dead.stderr
    assert psi("certs", "init", "--out", tmp_path / "other", "--nodes", "prison",
               "--clients", "civil-affairs", cwd=here).returncode == 0  # fmt: skip
    for name in ("civil-affairs.pem", "civil-affairs-key.pem"):
        (tmp_path / "mixed").mkdir(exist_ok=True)
        shutil.copy(tmp_path / "other" / name, tmp_path / "mixed" / name)
    shutil.copy(here / "certs" / "ca.pem", tmp_path / "mixed" / "ca.pem")
    (tmp_path / "mixed.toml").write_text(federation_toml(address, str(tmp_path / "mixed")), "utf-8")
    stranger = query(here, "--ids", parents_file(here), "--out", "-",
                     federation=tmp_path / "mixed.toml")  # fmt: skip
    assert stranger.returncode == 3
    assert "does not trust this client's certificate" in stranger.stderr
    for run in (none, misspelt, dead, stranger):
        assert len(run.stderr.strip().splitlines()[-1:]) == 1 and "Traceback" not in run.stderr


def test_screening_in_chinese_from_a_gb18030_roster_to_a_dispute(town):
    here, _ = town
    run = psi("screen", "--federation", "federation.toml", "--roster",
              "data/roster-gb18030.csv", "--encoding", "gb18030", "--as-of", "2026-11-30",
              "--out", "screening", "--lang", "zh", "--xlsx", cwd=here)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (here / "screening" / "results.xlsx").stat().st_size > 0
    with open(here / "screening" / "results.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:3] == ["儿童身份证号", "儿童姓名", "区划代码"]
    evidence = next(r["依据记录"] for r in rows if r["依据记录"]).split()[0]
    raised = psi("disputes", "raise", "--federation", "federation.toml", "--handle", evidence,
                 "--reason", "released early", "--evidence", "case 2026-41", cwd=here)  # fmt: skip
    assert raised.returncode == 0, raised.stderr
    listed = json.loads(psi("disputes", "list", "--federation", "federation.toml", "--json",
                            cwd=here).stdout)  # fmt: skip
    assert [d["handle"] for d in listed] == [evidence.rsplit("#", 1)[1]]


def test_the_reviewer_verifies_and_reads_the_audit_page(town):
    here, _ = town
    log = here / "prison" / "state" / "audit.sqlite"
    page = here / "audit.html"
    run = psi("audit", "report", log, "--key", log.with_name("audit-key.pub.pem"),
              "--html", page, cwd=here)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "verified: no tampering found" in run.stdout
    text = page.read_text(encoding="utf-8")
    assert "verified: no tampering found" in text and 'class="sessions"' in text
