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


def wait(condition, what: str, process: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the screening ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in {seconds} s"
        time.sleep(0.005)


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
        try:
            # Every node has charged its session and the client has the node's answer (it keeps
            # the session in session.json; a client keeping nothing gets 0.2 s), then no node
            # answers a chunk before the kill.
            wait(lambda: all(charged(fed, d) for d in DEPARTMENTS), "charge", first)
            kept = [fed.root / "client-cache" / d / d / "e1" / "session.json" for d in DEPARTMENTS]
            late = time.monotonic() + 0.2
            wait(lambda: all(map(os.path.exists, kept)) or time.monotonic() > late, "", first)
            for department in DEPARTMENTS:
                os.kill(fed.processes[department].pid, signal.SIGSTOP)
            time.sleep(0.3)
            first.kill()
        finally:
            first.wait()
            for department in DEPARTMENTS:
                os.kill(fed.processes[department].pid, signal.SIGCONT)
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
