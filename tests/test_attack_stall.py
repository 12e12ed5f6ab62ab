"""Issue 13, finding 1, written as the attacks: certificate holders who open streams and send
nothing, or trickle, to take every worker of a node; a client that opens sessions without end.
Real `psi node serve` processes, real gRPC over mutual TLS, the node's own audit log."""

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import date

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_federation import channel, open_session

from nodes.client.client import Client
from nodes.demo.federation import CLIENT, LocalFederation
from nodes.demo.synth import expected_matches, generate_city, write_city
from nodes.shared.audit.log import read_log
from nodes.shared.certs import Role, issue
from nodes.shared.config import load_federation
from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc, stats_pb2_grpc
from psi.ids import check_character

INTRUDERS = ("intruder-1", "intruder-2", "intruder-3")  # federation certificates, no grant
GRANTED = ("education", "insurance")  # granted prison, like civil affairs
VALID_ELEMENT = bytes.fromhex("609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c")
TIGHT = (
    "\n[serve]\ncalls_per_client = 4\nsessions_per_client = 4\n"
    "first_message_seconds = 1\nidle_seconds = 2\n"
)


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    city = generate_city(children=100, as_of=date(2026, 11, 30), seed=11)
    return city, write_city(city, tmp_path_factory.mktemp("data"))


def federation(root, city, serve: str = "") -> Iterator[LocalFederation]:
    """Prison's node for civil affairs and ``GRANTED``, with certificates for ``INTRUDERS``;
    ``serve`` is appended to its node.toml."""
    _, paths = city
    with LocalFederation(root, {"prison": paths["prison"]}, clients=(CLIENT, *GRANTED)) as fed:
        fed.setup()
        for name in INTRUDERS:
            issue(fed.certs, name, Role.CLIENT)
        config = fed.config_file("prison")
        config.write_text(config.read_text() + serve)
        fed.build()
        fed.start()
        yield fed


@pytest.fixture(scope="module")
def default(city, tmp_path_factory):
    yield from federation(tmp_path_factory.mktemp("default"), city)


@pytest.fixture(scope="module")
def tight(city, tmp_path_factory):
    yield from federation(tmp_path_factory.mktemp("tight"), city, TIGHT)


def silent(release: threading.Event) -> Iterator:
    """A request stream that sends nothing until ``release``."""
    release.wait()
    yield from ()


def trickle(session_id: str, release: threading.Event) -> Iterator[psi_pb2.EvaluateChunk]:
    """A slow but live stream: one element every half second until ``release``."""
    sequence = 0
    while not release.wait(0.5 if sequence else 0):
        yield psi_pb2.EvaluateChunk(
            session_id=session_id if sequence == 0 else "",
            sequence=sequence,
            count=1,
            elements=VALID_ELEMENT,
        )
        sequence += 1


def health(fed) -> tuple[object, float]:
    """(status or error code, seconds) of a health check by civil affairs, waiting 1 s at most."""
    started = time.perf_counter()
    with channel(fed, "prison") as ch:
        try:
            status = (
                health_pb2_grpc.HealthStub(ch)
                .Check(health_pb2.HealthCheckRequest(service="prison"), timeout=1.0)
                .status
            )
        except grpc.RpcError as exc:
            status = exc.code()
    return status, time.perf_counter() - started


def timed_query(fed, ids: list[str], seconds: float) -> tuple[set[str] | None, float]:
    """Civil affairs' labelled query of ``ids``: (matched identifiers, or None if it did not
    complete within ``seconds``, elapsed)."""
    found: list[set[str]] = []

    def run() -> None:
        with Client(load_federation(fed.federation_file)) as client:
            result = client.query("prison", "prison", ids, purpose="screening")
            found.append({x for x, _ in result.matches})

    started = time.perf_counter()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    return (found[0] if found else None), time.perf_counter() - started


def refusals(fed, cn: str, outcome: str) -> list[dict]:
    entries = read_log(fed.root / "prison" / "state" / "audit.sqlite").entries
    return [
        e
        for e in entries
        if e.get("peer", {}).get("cn") == cn and e.get("outcome") == outcome and e.get("reason")
    ]


def ten_ids(city) -> tuple[list[str], set[str]]:
    c, _ = city
    matched = sorted(expected_matches(c)["prison"])[:5]
    bodies = [f"15010219600101{i:03d}" for i in range(5)]
    return [*matched, *(x + check_character(x) for x in bodies)], set(matched)


def test_idle_streams_stall_neither_health_nor_a_legitimate_query(city, default):
    """64 streams that send nothing: 48 from three certificates without a grant (Evaluate and
    Cardinality), 16 from a granted client holding open sessions. Health answers within 1 s and
    civil affairs' 10-identifier query completes within 5 s while they are open."""
    release = threading.Event()
    with ExitStack() as stack:
        calls = []
        for name in INTRUDERS:
            ch = stack.enter_context(channel(default, "prison", name))
            for i in range(16):
                if i % 4:
                    calls.append(psi_pb2_grpc.DepartmentNodeStub(ch).Evaluate(silent(release)))
                else:
                    calls.append(stats_pb2_grpc.StatisticsStub(ch).Cardinality(silent(release)))
        ch = stack.enter_context(channel(default, "prison", GRANTED[0]))
        stub = psi_pb2_grpc.DepartmentNodeStub(ch)
        for _ in range(4):
            open_session(stub)
        granted = [stub.Evaluate(silent(release)) for _ in range(16)]
        time.sleep(1.0)  # every stream has reached the node
        try:
            status, seconds = health(default)
            assert status == health_pb2.HealthCheckResponse.SERVING and seconds < 1.0, (
                status,
                seconds,
            )
            ids, matched = ten_ids(city)
            found, seconds = timed_query(default, ids, 5.0)
            assert found == matched and seconds < 5.0, seconds
            # The grant was checked before any wait: the intruders were refused at once, and
            # the node's log says so.
            for call in calls:
                assert call.code() == grpc.StatusCode.PERMISSION_DENIED, call.details()
            assert all(refusals(default, name, "permission_denied") for name in INTRUDERS)
        finally:
            release.set()
            for call in [*calls, *granted]:
                call.cancel()


def test_calls_beyond_a_clients_bound_are_refused_and_logged(tight):
    """A granted client holds its four calls with slow streams; a fifth call of any kind is
    refused at once, logged, and nobody else is affected."""
    release = threading.Event()
    client = GRANTED[0]
    with channel(tight, "prison", client) as ch:
        stub = psi_pb2_grpc.DepartmentNodeStub(ch)
        sessions = [open_session(stub, element_count=1000).session_id for _ in range(4)]
        held = [stub.Evaluate(trickle(s, release)) for s in sessions]
        try:
            for call in held:
                next(call)  # each stream is live: its first element came back
            with pytest.raises(grpc.RpcError) as info:
                stub.GetCatalogue(psi_pb2.CatalogueRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "4 calls" in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Evaluate(trickle(sessions[0], release), timeout=5))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            status, seconds = health(tight)
            assert status == health_pb2.HealthCheckResponse.SERVING and seconds < 1.0
            with channel(tight, "prison") as other:
                assert (
                    psi_pb2_grpc.DepartmentNodeStub(other)
                    .GetCatalogue(psi_pb2.CatalogueRequest(), timeout=5)
                    .datasets
                )
        finally:
            release.set()
            for call in held:
                call.cancel()
    assert len(refusals(tight, client, "resource_exhausted")) >= 2


def test_sessions_beyond_a_clients_bound_are_refused_and_logged(tight):
    client = GRANTED[1]
    with channel(tight, "prison", client) as ch:
        stub = psi_pb2_grpc.DepartmentNodeStub(ch)
        sessions = [open_session(stub).session_id for _ in range(4)]
        with pytest.raises(grpc.RpcError) as info:
            open_session(stub)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "4 sessions" in info.value.details()
        stub.CloseSession(psi_pb2.CloseSessionRequest(session_id=sessions[0]), timeout=5)
        open_session(stub)  # closing one makes room
    assert refusals(tight, client, "resource_exhausted")


def test_a_stream_that_sends_nothing_ends_at_the_first_message_deadline(tight):
    release = threading.Event()
    with channel(tight, "prison") as ch:
        stub = psi_pb2_grpc.DepartmentNodeStub(ch)
        with pytest.raises(grpc.RpcError) as info:  # no session at all: refused before waiting
            list(stub.Evaluate(silent(release), timeout=10))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        open_session(stub)
        started = time.perf_counter()
        try:
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Evaluate(silent(release), timeout=10))
        finally:
            release.set()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "first message" in info.value.details() and time.perf_counter() - started < 5
    assert refusals(tight, CLIENT, "deadline_exceeded")


def test_a_stream_that_stalls_ends_at_the_idle_deadline(tight):
    release = threading.Event()

    def one_then_silence(session_id):
        yield psi_pb2.EvaluateChunk(
            session_id=session_id, sequence=0, count=1, elements=VALID_ELEMENT
        )
        release.wait()

    with channel(tight, "prison") as ch:
        stub = psi_pb2_grpc.DepartmentNodeStub(ch)
        session = open_session(stub, element_count=5).session_id
        call = stub.Evaluate(one_then_silence(session), timeout=10)
        try:
            assert next(call).count == 1
            started = time.perf_counter()
            with pytest.raises(grpc.RpcError) as info:
                next(call)
        finally:
            release.set()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "idle" in info.value.details() and time.perf_counter() - started < 6
    entries = refusals(tight, CLIENT, "deadline_exceeded")
    assert any(e["event"] == "elements_evaluated" and e["evaluated"] == 1 for e in entries)


def test_an_idle_statistics_stream_is_refused_without_a_session(tight):
    """The statistics service shares the checks: no open statistics session, no waiting."""
    release = threading.Event()
    with channel(tight, "prison") as ch:
        try:
            with pytest.raises(grpc.RpcError) as info:
                stats_pb2_grpc.StatisticsStub(ch).IntersectionSum(silent(release), timeout=10)
        finally:
            release.set()
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
