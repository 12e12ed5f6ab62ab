"""Issue 13, findings 1 and 6, replayed through public interfaces only: the `psi` command line in
subprocesses, node.toml and federation.toml written by hand, gRPC stubs generated from
kinlink.v1 with federation certificates, and the node's audit log read by `psi audit report`.
Nothing of the node's or client's code is imported: these hold the properties, not the tests."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc, stats_pb2_grpc

PASSPHRASE = "replay passphrase"
ENV = {**os.environ, "KINLINK_KEY_PASSPHRASE": PASSPHRASE}
ELEMENT = bytes.fromhex("609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c")
SUITE = "ristretto255-SHA512"
CLIENTS = ("civil-affairs", "education", "intruder-1", "intruder-2")
GRANTED = ("civil-affairs", "education")
TIGHT = {
    "calls_per_client": 4,
    "sessions_per_client": 4,
    "first_message_seconds": 1,
    "idle_seconds": 2,
}
QUICK_STOP = {"stop_grace_seconds": 1}


def psi(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def node_toml(name: str, register: Path, statuses: str, listen: str, serve: dict) -> str:
    grants = "".join(
        f'[[grants]]\nclient = "{c}"\ndatasets = ["{name}"]\npurposes = ["screening"]\n'
        'fields = ["status", "start", "end", "handle"]\n'
        "per_session = 2000000\nper_day = 100000000\nper_epoch = 200000000\n\n"
        for c in GRANTED
    )
    table = "".join(f"{k} = {v}\n" for k, v in serve.items())
    return (
        f'[node]\nid = "{name}"\nlisten = "{listen}"\nstate = "state"\n'
        f'tls = {{ ca = "../certs/ca.pem", cert = "../certs/{name}.pem", '
        f'key = "../certs/{name}-key.pem" }}\n\n'
        f'[datasets.{name}]\ncsv = "{register}"\nstatuses = {statuses}\n\n'
        + (f"[serve]\n{table}\n" if serve else "")
        + grants
    )


class Node:
    """One `psi node serve` process."""

    def __init__(self, config: Path):
        self.config = config
        self.port_file = config.parent / "port"
        self.port_file.unlink(missing_ok=True)
        command = ["node", "serve", "--config", config, "--port-file", self.port_file]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nodes.cli", *map(str, command)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not (self.port_file.exists() and self.port_file.read_text().strip()):
            assert self.process.poll() is None and time.monotonic() < deadline, "no start"
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    nodes_and_clients = ("--nodes", "prison,police,court", "--clients", ",".join(CLIENTS))
    for args in (
        ("synth", "--out", root / "data", "--children", 100, "--seed", 7, "--as-of", "2026-11-30"),
        ("certs", "init", "--out", root / "certs", *nodes_and_clients),
    ):
        run = psi(*args)
        assert run.returncode == 0, run.stderr
    nodes = {}
    for name, statuses, serve in (
        ("prison", '["imprisoned"]', {}),
        ("police", '["deceased", "compulsory_rehab", "lost_contact", "deported"]', TIGHT),
        ("court", '["declared_missing", "deceased", "guardianship_revoked"]', QUICK_STOP),
    ):
        folder = root / name
        folder.mkdir()
        config = folder / "node.toml"
        register = root / "data" / f"{name}.csv"
        config.write_text(node_toml(name, register, statuses, "127.0.0.1:0", serve))
        run = psi("node", "build", "--config", config)
        assert run.returncode == 0, run.stderr
        if name != "court":  # court is started by the test that stops it
            nodes[name] = Node(config)
    yield root, nodes
    for node in nodes.values():
        node.stop()


def channel(root: Path, port: int, client: str) -> grpc.Channel:
    certs = root / "certs"
    credentials = grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(),
        (certs / f"{client}-key.pem").read_bytes(),
        (certs / f"{client}.pem").read_bytes(),
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def open_session(stub, dataset: str, count: int = 10) -> str:
    request = psi_pb2.OpenSessionRequest(
        dataset_id=dataset,
        purpose_code="screening",
        element_count=count,
        suite=SUITE,
        protocol_version=1,
    )
    return stub.OpenSession(request, timeout=10).session_id


def chunk(session: str, sequence: int, count: int = 1) -> psi_pb2.EvaluateChunk:
    return psi_pb2.EvaluateChunk(
        session_id=session if sequence == 0 else "",
        sequence=sequence,
        count=count,
        elements=ELEMENT * count,
    )


def silent(release: threading.Event):
    release.wait()
    yield from ()


def trickle(session: str, release: threading.Event):
    sequence = 0
    while not release.wait(0.5 if sequence else 0):
        yield chunk(session, sequence)
        sequence += 1


def refusals(root: Path, node: str, client: str) -> list[dict]:
    out = root / f"{node}-report.json"
    run = psi("audit", "report", root / node / "state" / "audit.sqlite", "--json", out)
    assert run.returncode == 0, run.stderr
    return [r for r in json.loads(out.read_text())["refusals"] if r["peer"] == client]


def wire_query(root: Path, port: int, dataset: str) -> float:
    """Civil affairs' whole labelled query of ten elements on the wire: seconds taken."""
    started = time.perf_counter()
    with channel(root, port, "civil-affairs") as ch:
        stub = psi_pb2_grpc.DepartmentNodeStub(ch)
        stub.GetCatalogue(psi_pb2.CatalogueRequest(), timeout=5)
        session = open_session(stub, dataset)
        [answer] = stub.Evaluate(iter([chunk(session, 0, 10)]), timeout=5)
        assert answer.count == 10
        request = psi_pb2.FetchTableRequest(dataset_id=dataset, purpose_code="screening")
        assert list(stub.FetchTable(request, timeout=5))
        stub.CloseSession(psi_pb2.CloseSessionRequest(session_id=session), timeout=5)
    return time.perf_counter() - started


def test_idle_streams_stall_neither_health_nor_a_query(world):
    root, nodes = world
    port = nodes["prison"].port
    release = threading.Event()
    channels = [channel(root, port, c) for c in ("intruder-1", "intruder-2", "education")]
    calls = []
    try:
        for ch in channels[:2]:
            calls += [
                psi_pb2_grpc.DepartmentNodeStub(ch).Evaluate(silent(release)) for _ in range(16)
            ]
            calls += [
                stats_pb2_grpc.StatisticsStub(ch).Cardinality(silent(release)) for _ in range(8)
            ]
        stub = psi_pb2_grpc.DepartmentNodeStub(channels[2])
        open_session(stub, "prison")
        held = [stub.Evaluate(silent(release)) for _ in range(16)]
        time.sleep(1.0)
        started = time.perf_counter()
        status = (
            health_pb2_grpc.HealthStub(channels[2])
            .Check(health_pb2.HealthCheckRequest(service="prison"), timeout=1.0)
            .status
        )
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert time.perf_counter() - started < 1.0
        assert wire_query(root, port, "prison") < 5.0
        assert {c.code() for c in calls} == {grpc.StatusCode.PERMISSION_DENIED}
    finally:
        release.set()
        for call in [*calls, *held]:
            call.cancel()
        for ch in channels:
            ch.close()
    assert refusals(root, "prison", "intruder-1") and refusals(root, "prison", "intruder-2")


def test_bounds_per_client(world):
    root, nodes = world
    release = threading.Event()
    with channel(root, nodes["police"].port, "education") as ch:
        stub = psi_pb2_grpc.DepartmentNodeStub(ch)
        sessions = [open_session(stub, "police", 1000) for _ in range(4)]
        with pytest.raises(grpc.RpcError) as info:
            open_session(stub, "police")
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        held = [stub.Evaluate(trickle(s, release)) for s in sessions]
        try:
            for call in held:
                next(call)
            with pytest.raises(grpc.RpcError) as info:
                stub.GetCatalogue(psi_pb2.CatalogueRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            release.set()
            for call in held:
                call.cancel()
    assert len(refusals(root, "police", "education")) >= 2


def test_deadlines(world):
    root, nodes = world
    release = threading.Event()
    with channel(root, nodes["police"].port, "civil-affairs") as ch:
        stub = psi_pb2_grpc.DepartmentNodeStub(ch)
        open_session(stub, "police")
        started = time.perf_counter()
        try:
            with pytest.raises(grpc.RpcError) as first:
                list(stub.Evaluate(silent(release), timeout=10))
            session = open_session(stub, "police", 5)

            def one_then_silence():
                yield chunk(session, 0)
                release.wait()

            call = stub.Evaluate(one_then_silence(), timeout=10)
            next(call)
            with pytest.raises(grpc.RpcError) as idle:
                next(call)
        finally:
            release.set()
    for info in (first, idle):
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value.details()
    assert time.perf_counter() - started < 9
    assert len(refusals(root, "police", "civil-affairs")) >= 2


def variant(root: Path, name: str, **changes: str) -> Path:
    """A copy of court's node.toml with keys of its [node] table changed."""
    lines = (root / "court" / "node.toml").read_text().splitlines()
    for key, value in changes.items():
        lines = [f'{key} = "{value}"' if x.startswith(f"{key} = ") else x for x in lines]
    path = root / "court" / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_port_in_use_and_an_id_unlike_the_certificate_are_refused(world):
    root, nodes = world
    address = f"127.0.0.1:{nodes['prison'].port}"
    clash = variant(root, "clash.toml", listen=address)
    run = psi("node", "serve", "--config", clash, timeout=30)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert address in run.stderr and "in use" in run.stderr
    wrong = variant(root, "wrong.toml", id="police", state="state-wrong")
    assert psi("node", "build", "--config", wrong).returncode == 0
    run = psi("node", "serve", "--config", wrong, timeout=30)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "'police'" in run.stderr and "'court'" in run.stderr


def test_a_misdirected_client_suspects_the_address(world):
    """Civil affairs pins prison's key, then its federation file points prison at police."""
    root, nodes = world
    ids = root / "ids.csv"
    ids.write_text("id_number\n11010519491231002X\n")

    def query(port: int) -> subprocess.CompletedProcess:
        federation = root / "federation.toml"
        federation.write_text(
            '[client]\nid = "civil-affairs"\ncache = "cache"\n'
            'tls = { ca = "certs/ca.pem", cert = "certs/civil-affairs.pem", '
            'key = "certs/civil-affairs-key.pem" }\n'
            f'[nodes.prison]\naddress = "127.0.0.1:{port}"\n'
        )
        return psi(
            "query",
            "--federation",
            federation,
            "--node",
            "prison",
            "--dataset",
            "prison",
            "--ids",
            ids,
            "--purpose",
            "screening",
            "--out",
            root / "matches.csv",
        )

    assert query(nodes["prison"].port).returncode in (0, 1)
    run = query(nodes["police"].port)
    assert run.returncode == 3 and "Traceback" not in run.stderr, run.stderr
    assert f"127.0.0.1:{nodes['police'].port}" in run.stderr and "federation" in run.stderr


def test_sigterm_after_load_stops_within_the_grace(world):
    root, _ = world
    court = Node(root / "court" / "node.toml")
    try:
        with channel(root, court.port, "civil-affairs") as ch:
            stub = psi_pb2_grpc.DepartmentNodeStub(ch)
            calls = []
            for _ in range(6):
                session = open_session(stub, "court", 20 * 65_536)
                calls.append(stub.Evaluate(chunk(session, i, 65_536) for i in range(20)))
            time.sleep(3)
            started = time.monotonic()
            court.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                court.process.wait(timeout=20)
            stopped = time.monotonic() - started
            for call in calls:
                call.cancel()
        assert court.process.returncode == 0 and stopped < 15, stopped
    finally:
        court.stop()
