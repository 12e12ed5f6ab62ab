"""The budget attacks of issue 13 (finding 2) replayed through public interfaces only: data from
``psi synth``, certificates from ``psi certs init``, node.toml files written by hand, nodes run
as ``psi node build`` and ``psi node serve``, queries from the generated gRPC stubs with a
federation certificate and from ``psi screen``, evidence from ``psi audit report`` and stderr.
The documented defaults (docs/operator-guide.md) are written here as numbers, as an operator
reads them."""

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import grpc
import pytest

from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc

PASSPHRASE = {"KINLINK_KEY_PASSPHRASE": "replay passphrase"}
CLIENT, OTHER = "civil-affairs", "education"
DEFAULT_PER_SESSION, DEFAULT_PER_DAY = 100_000, 200_000  # docs/operator-guide.md
SCREENED = ("prison", "health")  # the nodes psi screen asks
ELEMENT = bytes.fromhex("609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c")


def psi(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **PASSPHRASE},
        **kwargs,
    )


STATUSES = {
    "prison": '["imprisoned"]',
    "health": '["deceased", "serious_illness"]',
    "court": '["declared_missing", "deceased", "guardianship_revoked", "liberty_restricted"]',
}
UNLIMITED = 'per_day = "unlimited"\nper_epoch = "unlimited"\n'


def node_toml(root: Path, name: str, budgets: str = "", file: str = "node.toml") -> Path:
    """A node serving ``name``'s register to both clients; ``budgets`` (node.toml lines) close
    the second client's grant."""
    grants = "".join(
        f'\n[[grants]]\nclient = "{client}"\ndatasets = ["{name}"]\n'
        'purposes = ["screening", "verification"]\nfields = ["status", "start", "end"]\n'
        for client in (CLIENT, OTHER)
    )
    path = root / name / file
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        f'[node]\nid = "{name}"\nlisten = "127.0.0.1:0"\n'
        f'tls = {{ ca = "../certs/ca.pem", cert = "../certs/{name}.pem", '
        f'key = "../certs/{name}-key.pem" }}\n\n[datasets.{name}]\n'
        f'csv = "../city/{name}.csv"\nstatuses = {STATUSES[name]}\n{grants}{budgets}',
        encoding="utf-8",
    )
    return path


class Node:
    """``psi node serve`` in a process of its own."""

    def __init__(self, config: Path):
        port_file = config.with_name("port")
        serve = ("node", "serve", "--config", str(config), "--port-file", str(port_file))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nodes.cli", *serve],
            env={**os.environ, **PASSPHRASE},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert self.process.poll() is None, self.process.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.state = config.parent / "state"

    def stop(self) -> str:
        """Stop it; what it wrote to stderr."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.communicate(timeout=30)[1]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    made = psi("synth", "--out", root / "city", "--children", 2000, "--as-of", "2026-11-30")
    assert made.returncode == 0, made.stderr
    certs = psi(
        "certs",
        "init",
        *("--out", root / "certs", "--nodes", "prison,health,court"),
        *("--clients", f"{CLIENT},{OTHER}"),
    )
    assert certs.returncode == 0, certs.stderr
    configs = {name: node_toml(root, name) for name in SCREENED}
    configs["court"] = node_toml(root, "court", UNLIMITED)
    for config in configs.values():
        built = psi("node", "build", "--config", config)
        assert built.returncode == 0, built.stderr
    nodes = {name: Node(config) for name, config in configs.items()}
    (root / "federation.toml").write_text(
        f'[client]\nid = "{CLIENT}"\ncache = "cache"\ntls = {{ ca = "certs/ca.pem", '
        f'cert = "certs/{CLIENT}.pem", key = "certs/{CLIENT}-key.pem" }}\n'
        + "".join(f'\n[nodes.{n}]\naddress = "127.0.0.1:{nodes[n].port}"\n' for n in SCREENED),
        encoding="utf-8",
    )
    try:
        yield root, nodes
    finally:
        for node in nodes.values():
            if node.process.poll() is None:
                node.stop()


def stub(root: Path, node, client: str = CLIENT):
    certs = root / "certs"
    credentials = grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(),
        (certs / f"{client}-key.pem").read_bytes(),
        (certs / f"{client}.pem").read_bytes(),
    )
    channel = grpc.secure_channel(f"127.0.0.1:{node.port}", credentials)
    return channel, psi_pb2_grpc.DepartmentNodeStub(channel)


def open_session(stub, dataset: str, count: int, **extra) -> psi_pb2.Session:
    return stub.OpenSession(
        psi_pb2.OpenSessionRequest(
            dataset_id=dataset,
            purpose_code=extra.pop("purpose_code", "verification"),
            element_count=count,
            suite="ristretto255-SHA512",
            protocol_version=1,
            **extra,
        ),
        timeout=10,
    )


def chunk(session_id: str, sequence: int, count: int) -> psi_pb2.EvaluateChunk:
    return psi_pb2.EvaluateChunk(
        session_id=session_id, sequence=sequence, count=count, elements=ELEMENT * count
    )


def audit_report(node) -> dict:
    out = node.state.parent / "report.json"
    report = psi("audit", "report", node.state / "audit.sqlite", "--json", out)
    assert report.returncode == 0, report.stderr
    return json.loads(out.read_text())


def test_replay_a_grant_without_budgets_takes_the_documented_defaults(federation):
    root, nodes = federation
    channel, node = stub(root, nodes["prison"], OTHER)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            open_session(node, "prison", 36_000_000)  # a county's identifier space
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError):
            open_session(node, "prison", DEFAULT_PER_SESSION + 1)
        open_session(node, "prison", DEFAULT_PER_SESSION)
        open_session(node, "prison", DEFAULT_PER_DAY - DEFAULT_PER_SESSION)
        with pytest.raises(grpc.RpcError, match="daily budget") as info:
            open_session(node, "prison", 1)


@pytest.mark.parametrize("value", ["0", '"lots"', '"Unlimited"'])
def test_replay_a_meaningless_budget_stops_the_node_with_one_line(federation, value):
    root, _ = federation
    config = node_toml(root, "court", f"per_day = {value}\n", "bad.toml")
    run = psi("node", "serve", "--config", config, timeout=60)
    assert run.returncode == 2
    [line] = run.stderr.splitlines()
    assert "bad.toml" in line and "per_day" in line and '"unlimited"' in line


def test_replay_an_unlimited_grant_is_warned_of_and_reported(federation):
    _, nodes = federation
    court = nodes["court"]
    report = audit_report(court)
    flagged = {(a["peer"], a["dataset"]) for a in report["anomalies"] if a["kind"] == "unlimited"}
    assert flagged == {(OTHER, "court")}
    stderr = court.stop()
    assert "warning" in stderr and OTHER in stderr and "per_day, per_epoch" in stderr


def test_replay_a_resumed_session_gets_no_more_than_it_was_charged(federation):
    root, nodes = federation
    channel, node = stub(root, nodes["prison"])
    with channel:
        session = open_session(node, "prison", 10)
        assert len(list(node.Evaluate(iter([chunk(session.session_id, 0, 6)]), timeout=20))) == 1
        again = open_session(node, "prison", 10, resume_session_id=session.session_id)
        assert (again.elements_evaluated, again.chunks_evaluated) == (6, 1)
        with pytest.raises(grpc.RpcError) as info:
            list(node.Evaluate(iter([chunk(session.session_id, 1, 5)]), timeout=20))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        other_channel, other = stub(root, nodes["prison"], OTHER)
        with other_channel, pytest.raises(grpc.RpcError) as info:
            open_session(other, "prison", 10, resume_session_id=session.session_id)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        list(node.Evaluate(iter([chunk(session.session_id, 1, 4)]), timeout=20))
        receipt = node.CloseSession(psi_pb2.CloseSessionRequest(session_id=session.session_id))
        assert (receipt.elements_declared, receipt.elements_evaluated) == (10, 10)
    sessions = audit_report(nodes["prison"])["sessions"]
    [row] = [s for s in sessions if s["session_id"] == receipt.session_id]
    assert (row["peer"], row["declared"], row["evaluated"]) == (CLIENT, 10, 10)


def screened(node) -> int:
    """Elements the node's audit report charges civil affairs for screening."""
    return sum(
        s["declared"]
        for s in audit_report(node)["sessions"]
        if s["peer"] == CLIENT and s["purpose"] == "screening"
    )


def test_replay_a_killed_screening_rerun_is_charged_once(federation):
    root, nodes = federation
    command = [
        *(sys.executable, "-m", "nodes.cli", "screen", "--federation", root / "federation.toml"),
        *("--roster", root / "city" / "roster.csv", "--as-of", "2026-11-30"),
        *("--out", root / "screening"),
    ]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kept = {n: root / "cache" / n / n for n in SCREENED}  # session.json in e<epoch>/<profile>/
    stopped: set[str] = set()
    deadline = time.monotonic() + 60
    try:  # each node is held once the client has its session: nothing answered before the kill
        while len(stopped) < len(SCREENED):
            assert first.poll() is None and time.monotonic() < deadline
            for name in set(SCREENED) - stopped:
                if any(kept[name].rglob("session.json")):
                    nodes[name].process.send_signal(signal.SIGSTOP)
                    stopped.add(name)
            time.sleep(0.002)
        time.sleep(0.3)
        first.kill()
    finally:
        first.wait()
        for name in stopped:
            nodes[name].process.send_signal(signal.SIGCONT)
    charged = {n: screened(nodes[n]) for n in SCREENED}
    assert all(charged.values())
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert {n: screened(nodes[n]) for n in SCREENED} == charged


def test_replay_the_demo_grants_what_its_roster_needs(tmp_path):
    run = psi("demo", "--children", 40, "--as-of", "2026-11-30", "--out", tmp_path)
    assert run.returncode == 0, run.stderr
    parents = int(run.stdout.split("civil affairs: ")[1].split()[0])
    for config in (tmp_path / "federation").glob("*/node.toml"):
        for grant in tomllib.loads(config.read_text())["grants"]:
            assert parents <= grant["per_session"] <= 2 * parents, config
            assert grant["per_day"] <= 4 * grant["per_session"] < grant["per_epoch"] < 1_000_000
