"""A monthly screening that dies midway must not be charged again when it is rerun (issue 13,
finding 2): ``psi screen`` on a 2,000-child roster is killed with SIGKILL while the nodes hold
its sessions, then rerun to the end, and each node's charges are compared."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import date

import pytest

from nodes.demo.federation import CLIENT, LocalFederation
from nodes.demo.synth import generate_city, write_city
from nodes.shared.audit.log import read_log

AS_OF = date(2026, 11, 30)
DEPARTMENTS = ("prison", "health")


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    city = generate_city(children=2000, as_of=AS_OF, seed=5)
    return write_city(city, tmp_path_factory.mktemp("data"))


def charged(fed: LocalFederation, department: str) -> int:
    path = fed.root / department / "state" / "budgets.sqlite"
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT COALESCE(SUM(elements), 0) FROM charges WHERE client=?", (CLIENT,)
        ).fetchone()[0]


def test_a_screening_killed_midway_is_charged_once_when_rerun(city, tmp_path):
    with LocalFederation(tmp_path / "fed", {d: city[d] for d in DEPARTMENTS}) as fed:
        fed.setup()
        fed.build()
        fed.start()
        command = [
            *(sys.executable, "-m", "nodes.cli", "screen"),
            *("--federation", str(fed.federation_file), "--roster", str(city["roster"])),
            *("--as-of", AS_OF.isoformat(), "--out", str(tmp_path / "out")),
        ]
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kept = {d: fed.root / "client-cache" / d / d for d in DEPARTMENTS}  # e<epoch>/<profile>/
        charged_at: dict[str, float] = {}
        stopped: set[str] = set()
        try:
            # Each node is held (SIGSTOP) once it has charged its session and the client has the
            # session's id (it keeps it in session.json; a client keeping nothing gets 0.2 s):
            # from then on no node answers a chunk before the client is killed.
            deadline = time.monotonic() + 60
            while len(stopped) < len(DEPARTMENTS):
                assert first.poll() is None, "the screening ended before every node was held"
                assert time.monotonic() < deadline, "no session opened in 60 s"
                now = time.monotonic()
                for d in set(DEPARTMENTS) - stopped:
                    if d not in charged_at and charged(fed, d):
                        charged_at[d] = now
                    has_id = any(kept[d].rglob("session.json"))
                    if d in charged_at and (has_id or now > charged_at[d] + 0.2):
                        os.kill(fed.processes[d].pid, signal.SIGSTOP)
                        stopped.add(d)
                time.sleep(0.002)
            time.sleep(0.3)
            first.kill()
        finally:
            first.wait()
            for d in stopped:
                os.kill(fed.processes[d].pid, signal.SIGCONT)
        killed = {d: charged(fed, d) for d in DEPARTMENTS}
        assert all(killed.values())

        rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert {d: charged(fed, d) for d in DEPARTMENTS} == killed  # nothing charged twice
        for department in DEPARTMENTS:
            events = read_log(fed.root / department / "state" / "audit.sqlite").entries
            [receipt] = [e for e in events if e["event"] == "receipt_issued"]
            assert receipt["evaluated"] == receipt["declared"] == killed[department]
            assert any(e["event"] == "session_resumed" for e in events)
