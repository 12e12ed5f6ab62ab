"""kill -9 during a build, a query and a screening, then run again: the sealed and authenticated
state still verifies, the results equal a clean run's and nothing committed is lost."""

from __future__ import annotations

import csv
import re
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from benchmarks.data import identifiers, register_rows, write_register
from nodes.client.client import Client
from nodes.demo.federation import LocalFederation
from nodes.demo.synth import expected_matches, generate_city, write_city
from nodes.department.build import evaluate_people, server_key
from nodes.department.state import NodeState
from nodes.shared.config import load_federation, load_node_config

AS_OF = date(2026, 11, 30)
# A build committing every 100 evaluations, so that a kill lands between commits.
SMALL_CHUNKS = (
    "import sys, nodes.department.build as b; b.CACHE_CHUNK = 100; "
    "from nodes.cli import main; sys.exit(main(sys.argv[1:]))"
)
QUERY = (
    "import sys; from nodes.client.client import Client; "
    "from nodes.shared.config import load_federation; "
    "ids = open(sys.argv[2]).read().split(); "
    "Client(load_federation(sys.argv[1])).query('prison', 'prison', ids, purpose='screening')"
)


def psi(*args, env=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "nodes.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def killed(
    command: list[str], env: dict[str, str] | None = None, *, after: float = 120, when=None
) -> int:
    """Start ``command``, SIGKILL it ``after`` seconds or once ``when()`` holds (or when it
    ended); its exit status."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + after
    while process.poll() is None and time.monotonic() < deadline and not (when and when()):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    return process.wait()


def test_kill_9_during_a_build_then_build_again(tmp_path):
    people = identifiers(1500, seed=7)
    register = write_register(tmp_path / "prison.csv", register_rows(people))
    with LocalFederation(tmp_path / "fed", {"prison": register}) as fed:
        fed.setup()
        config = fed.config_file("prison")
        epoch = fed.root / "prison" / "state" / "prison" / "e1"

        def committed() -> bool:  # two segments of the profile's outputs are on disk
            return any(p.stat().st_size > 2 * 100 * 80 for p in epoch.glob("*/outputs.bin"))

        status = killed(
            [sys.executable, "-c", SMALL_CHUNKS, "node", "build", "--config", str(config)],
            fed.env(),
            when=committed,
        )
        assert status == -signal.SIGKILL, "the build ended before it could be killed"
        again = psi("node", "build", "--config", config, env=fed.env())
        assert again.returncode == 0, again.stderr
        evaluated = int(re.search(r"(\d+) evaluated", again.stdout).group(1))
        assert evaluated < len(people), "what the killed build committed was evaluated again"
        assert "version 1 published; 1500 entries" in again.stdout
        state = NodeState(load_node_config(config), fed.passphrase.encode())
        [fields] = state.registry.profiles(state.config, "prison")
        assert state.table("prison", 1, fields, 1).stored.header.count == len(people)
        key = server_key(state.oprf, state.keyring(), "prison", 1, fields)
        sample = people[::37]
        cached, computed = evaluate_people(
            state.oprf,
            key,
            sample,
            state.outputs_cache("prison", 1, fields),
        )
        assert computed == 0
        fresh, _ = evaluate_people(state.oprf, key, sample)
        assert (cached == fresh).all()


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    city = generate_city(children=300, as_of=AS_OF, seed=13)
    paths = write_city(city, tmp_path_factory.mktemp("data"))
    with LocalFederation(tmp_path_factory.mktemp("fed"), {"prison": paths["prison"]}) as fed:
        fed.setup()
        fed.build()
        fed.start()
        yield fed, city, paths


def test_kill_9_during_queries_then_query_again(federation, tmp_path):
    fed, city, _ = federation
    matched = sorted(expected_matches(city)["prison"])
    asked = sorted({*matched, *identifiers(1000, seed=9)})
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(asked))
    derived = fed.root / "client-cache" / "prison" / "prison"
    for delay in (0.6, 1.2, 2.0):  # before, during and after the evaluation
        killed([sys.executable, "-c", QUERY, str(fed.federation_file), str(ids)], after=delay)
        with Client(load_federation(fed.federation_file)) as client:
            result = client.query("prison", "prison", asked, purpose="screening")
            assert sorted(x for x, _ in result.matches) == matched
    with Client(load_federation(fed.federation_file)) as client:
        again = client.query("prison", "prison", asked, purpose="screening")
    assert again.evaluated == 0, "a committed answer was lost"
    assert next(derived.rglob("derived.bin")).stat().st_mode & 0o077 == 0


def results(folder: Path) -> list[dict[str, str]]:
    with open(folder / "results.csv", encoding="utf-8", newline="") as handle:
        return sorted(csv.DictReader(handle), key=lambda row: row["child_id"])


def test_kill_9_during_a_screening_then_screen_again(federation, tmp_path):
    fed, _, paths = federation
    clean = psi(
        "screen",
        "--federation",
        fed.federation_file,
        "--roster",
        paths["roster"],
        "--as-of",
        AS_OF,
        "--out",
        tmp_path / "clean" / "out",
    )
    assert clean.returncode == 0, clean.stderr
    screen = [
        sys.executable,
        "-m",
        "nodes.cli",
        "screen",
        "--federation",
        str(fed.federation_file),
        "--roster",
        str(paths["roster"]),
        "--as-of",
        AS_OF.isoformat(),
        "--out",
        str(tmp_path / "run" / "out"),
    ]
    for delay in (1.0, 2.5):
        killed(screen, after=delay)
        again = subprocess.run(screen, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert results(tmp_path / "run" / "out") == results(tmp_path / "clean" / "out")
