"""End to end over real gRPC with mutual TLS on loopback: node processes, the client, refusals."""

import os
import re
from datetime import date
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nodes.client.client import Client, NodeError
from nodes.demo.federation import CLIENT, LocalFederation
from nodes.demo.synth import expected_matches, generate_city, write_city
from nodes.shared.audit.crosscheck import cross_check
from nodes.shared.audit.log import read_log, verify_log
from nodes.shared.certs import Role, init_federation, issue
from nodes.shared.config import Limits, load_federation
from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc
from protocols.limits import GRPC_OPTIONS
from psi.errors import InputError

AS_OF = date(2026, 11, 30)


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    city = generate_city(children=300, as_of=AS_OF, seed=3)
    paths = write_city(city, tmp_path_factory.mktemp("data"))
    return city, paths


@pytest.fixture(scope="module")
def federation(city, tmp_path_factory):
    _, paths = city
    registers = {d: paths[d] for d in ("prison", "police", "court", "health", "disability")}
    with LocalFederation(tmp_path_factory.mktemp("federation"), registers) as fed:
        fed.setup()
        issue(fed.certs, "education", Role.CLIENT)
        fed.build()
        fed.start()
        yield fed


def parents(city) -> list[str]:
    c, _ = city
    return sorted(
        {
            x
            for row in c.roster
            for x in (c.canonical(row.father_id), c.canonical(row.mother_id))
            if x
        }
    )


def channel(fed, node: str, name: str | None = CLIENT, ca_dir: Path | None = None):
    ca = ((ca_dir or fed.certs) / "ca.pem").read_bytes()
    if name is None:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    else:
        directory = ca_dir or fed.certs
        credentials = grpc.ssl_channel_credentials(
            ca,
            (directory / f"{name}-key.pem").read_bytes(),
            (directory / f"{name}.pem").read_bytes(),
        )
    return grpc.secure_channel(f"127.0.0.1:{fed.ports[node]}", credentials, GRPC_OPTIONS)


def open_session(stub, **overrides):
    request = dict(
        dataset_id="prison",
        purpose_code="screening",
        element_count=10,
        suite="ristretto255-SHA512",
        protocol_version=1,
    )
    request.update(overrides)
    return stub.OpenSession(psi_pb2.OpenSessionRequest(**request), timeout=10)


def test_matches_equal_the_plaintext_join_across_five_nodes(city, federation):
    c, _ = city
    ids = parents(city)
    with Client(load_federation(federation.federation_file)) as client:
        results = client.query_many(
            [(d, d) for d in federation.registers], ids, purpose="screening"
        )
        for (node, _), result in results.items():
            assert not isinstance(result, NodeError), result
            assert {x for x, _ in result.matches} == expected_matches(c)[node], node
            assert result.receipt.elements_evaluated == len(ids)
        assert sum(len(r.matches) for r in results.values()) > 50
        # A rerun evaluates nothing: outputs are cached per epoch, the table is up to date.
        again = client.query("prison", "prison", ids, purpose="screening")
        assert again.evaluated == 0 and again.receipt is None
        assert {x for x, _ in again.matches} == expected_matches(c)["prison"]


def test_streams_in_blocks_when_nodes_need_different_identifiers(city, federation, monkeypatch):
    """Many small blinding blocks, and a node that already holds a third of the identifiers: each
    node's stream takes only its own rows of each block, and every answer lands on its row."""
    monkeypatch.setattr("nodes.client.client.STREAM_CHUNK", 37)
    c, _ = city
    ids = parents(city)
    config = load_federation(federation.federation_file)
    for cached in config.cache.rglob("derived.bin"):  # the audit log stays: reviewers check it
        cached.unlink()
    with Client(config) as client:
        client.query("prison", "prison", ids[::3], purpose="screening")
        results = client.query_many(
            [(d, d) for d in federation.registers], ids, purpose="screening"
        )
    for (node, _), result in results.items():
        assert {x for x, _ in result.matches} == expected_matches(c)[node], node
        assert result.evaluated == len(ids) - (len(ids[::3]) if node == "prison" else 0)


def test_labels_carry_statuses_and_handles(city, federation):
    with Client(load_federation(federation.federation_file)) as client:
        result = client.query("disability", "disability", parents(city), purpose="screening")
    records = [r for _, label in result.matches for r in label.records]
    assert {r.status for r in records} == {"severe_disability"}
    assert all(r.disability_grade in (1, 2, 3, 4) and len(r.handle) == 16 for r in records)


def test_health_and_catalogue(federation):
    with channel(federation, "court") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        status = health.Check(health_pb2.HealthCheckRequest(service="court"), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        catalogue = psi_pb2_grpc.DepartmentNodeStub(ch).GetCatalogue(psi_pb2.CatalogueRequest())
        [dataset] = catalogue.datasets
        assert dataset.dataset_id == "court" and dataset.key_epoch == 1 and dataset.table_size > 0
        assert "screening" in dataset.allowed_purposes


@pytest.mark.parametrize("who", ["no certificate", "another CA"])
def test_refuses_clients_without_a_federation_certificate(federation, tmp_path, who):
    if who == "another CA":
        init_federation(tmp_path, clients=[CLIENT])
        ch = channel(federation, "prison", CLIENT, ca_dir=tmp_path)
        ch.close()
        ca = (federation.certs / "ca.pem").read_bytes()
        creds = grpc.ssl_channel_credentials(
            ca,
            (tmp_path / f"{CLIENT}-key.pem").read_bytes(),
            (tmp_path / f"{CLIENT}.pem").read_bytes(),
        )
        ch = grpc.secure_channel(f"127.0.0.1:{federation.ports['prison']}", creds)
    else:
        ch = channel(federation, "prison", None)
    with ch, pytest.raises(grpc.RpcError) as info:
        psi_pb2_grpc.DepartmentNodeStub(ch).GetCatalogue(psi_pb2.CatalogueRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_refuses_plaintext(federation):
    with (
        grpc.insecure_channel(f"127.0.0.1:{federation.ports['prison']}") as ch,
        pytest.raises(grpc.RpcError) as info,
    ):
        psi_pb2_grpc.DepartmentNodeStub(ch).GetCatalogue(psi_pb2.CatalogueRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("who", "overrides", "code", "message"),
    [
        ("education", {}, grpc.StatusCode.PERMISSION_DENIED, "not granted dataset 'prison'"),
        (CLIENT, {"dataset_id": "tax"}, grpc.StatusCode.NOT_FOUND, "no dataset 'tax'"),
        (
            CLIENT,
            {"purpose_code": "marketing"},
            grpc.StatusCode.PERMISSION_DENIED,
            "purpose 'marketing' is not granted",
        ),
        (CLIENT, {"key_epoch": 7}, grpc.StatusCode.NOT_FOUND, "there is no epoch 7"),
        (CLIENT, {"suite": "P256-SHA256"}, grpc.StatusCode.INVALID_ARGUMENT, "not offered"),
        (CLIENT, {"protocol_version": 9}, grpc.StatusCode.FAILED_PRECONDITION, "version 9"),
    ],
)
def test_session_refusals(federation, who, overrides, code, message):
    with channel(federation, "prison", who) as ch, pytest.raises(grpc.RpcError) as info:
        open_session(psi_pb2_grpc.DepartmentNodeStub(ch), **overrides)
    assert info.value.code() == code
    assert message in info.value.details()


def evaluate(stub, session_id, elements: bytes, count: int):
    chunk = psi_pb2.EvaluateChunk(session_id=session_id, sequence=0, count=count, elements=elements)
    return list(stub.Evaluate(iter([chunk]), timeout=20))


def test_malformed_elements_are_rejected(federation):
    with channel(federation, "prison") as ch:
        stub = psi_pb2_grpc.DepartmentNodeStub(ch)
        session = open_session(stub, element_count=3)
        with pytest.raises(grpc.RpcError) as info:
            evaluate(stub, session.session_id, b"\xff" * 32 * 3, 3)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a canonical ristretto255 encoding" in info.value.details()
        session = open_session(stub, element_count=3)
        with pytest.raises(grpc.RpcError) as info:
            evaluate(stub, session.session_id, bytes(32) * 2, 3)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_messages_and_undeclared_elements_are_refused(federation):
    with channel(federation, "prison") as ch:
        stub = psi_pb2_grpc.DepartmentNodeStub(ch)
        session = open_session(stub, element_count=100_000)  # the default per-session budget
        with pytest.raises(grpc.RpcError) as info:
            evaluate(stub, session.session_id, os.urandom(32 * 140_000), 140_000)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        session = open_session(stub, element_count=1)
        good = np.frombuffer(
            bytes.fromhex("609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c"),
            np.uint8,
        )
        with pytest.raises(grpc.RpcError) as info:
            evaluate(stub, session.session_id, np.tile(good, 2).tobytes(), 2)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "declared 1 elements" in info.value.details()


def test_budgets_hold_across_a_node_restart(city, tmp_path):
    _, paths = city
    limits = Limits(per_session=400, per_day=500, per_epoch=None)
    ids = parents(city)[:400]
    with LocalFederation(tmp_path, {"prison": paths["prison"]}, limits=limits) as fed:
        fed.setup()
        fed.build()
        fed.start()
        with Client(load_federation(fed.federation_file)) as client:
            with pytest.raises(NodeError, match="at most 400 elements") as info:
                client.query("prison", "prison", parents(city)[:401], purpose="screening")
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            client.query("prison", "prison", ids, purpose="screening")
        fed.stop()
        fed.start()
        with Client(load_federation(fed.federation_file)) as client:
            with pytest.raises(NodeError, match=r"daily budget .* renews at") as info:
                client.query("prison", "prison", parents(city)[400:800], purpose="screening")
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_node_files_and_logs_hold_no_query_identifier(city, federation):
    ids = parents(city)
    with Client(load_federation(federation.federation_file)) as client:
        client.query("health", "health", ids, purpose="screening")
    needles = [re.escape(x) for x in ids] + [re.escape(x[:17]) for x in ids]
    pattern = re.compile("|".join(needles).encode())
    searched = 0
    for department in federation.registers:
        for path in (federation.root / department).rglob("*"):
            if path.is_file():
                searched += 1
                assert not pattern.search(path.read_bytes()), path
    assert searched > 20
    assert (federation.root / "health" / "state" / "node.log").read_text().count(
        "session_opened"
    ) >= 1


def test_both_logs_verify_and_every_receipt_is_on_both_sides(city, federation):
    with Client(load_federation(federation.federation_file)) as client:
        client.query("court", "court", parents(city)[:50], purpose="screening")
    client_log = federation.root / "client-cache" / "audit.sqlite"
    node_log = federation.root / "court" / "state" / "audit.sqlite"
    for log, key in (
        (client_log, federation.root / "client-cache" / "audit-key.pub.pem"),
        (node_log, federation.root / "court" / "state" / "audit-key.pub.pem"),
    ):
        report = verify_log(log, key.read_bytes())
        assert report.ok, report.problems
    check = cross_check(client_log, node_log)
    assert check.ok and check.matched >= 1, check.differences
    events = {e["event"] for e in read_log(node_log).entries}
    assert {"session_opened", "elements_evaluated", "receipt_issued", "table_fetched"} <= events


def test_cross_check_finds_a_receipt_missing_on_one_side(city, federation, tmp_path):
    import sqlite3

    with Client(load_federation(federation.federation_file)) as client:
        client.query("police", "police", parents(city)[:20], purpose="screening")
    node_log = tmp_path / "node.sqlite"
    with (
        sqlite3.connect(federation.root / "police" / "state" / "audit.sqlite") as source,
        sqlite3.connect(node_log) as copy,
    ):
        source.backup(copy)  # the log is in WAL mode: copy it the way SQLite does
    with sqlite3.connect(node_log) as db:  # the node "forgets" its last receipt
        db.execute(
            "DELETE FROM entries WHERE idx = (SELECT MAX(idx) FROM entries "
            "WHERE data LIKE '%receipt_issued%')"
        )
    check = cross_check(federation.root / "client-cache" / "audit.sqlite", node_log)
    assert not check.ok
    kinds = [d.kind for d in check.differences]
    assert kinds[0] == "missing-at-node"
    # The head the client kept with that receipt covers the deleted entry: the log was rewritten.
    assert kinds[1:] and set(kinds[1:]) <= {"rewritten", "cut-off"}


def test_receipts_are_signed_and_pinned(city, federation, tmp_path):
    from nodes.shared.audit.log import generate_key, public_key_pem
    from nodes.shared.audit.receipts import ReceiptError, verify_receipt

    with Client(load_federation(federation.federation_file)) as client:
        result = client.query("health", "health", ["11010519491231002X"], purpose="screening")
        client.catalogue("prison")  # pins prison's key
    receipt = result.receipt
    key = (federation.root / "client-cache" / "node-keys" / "health.pem").read_bytes()
    verify_receipt(receipt, key)
    assert receipt.tree_head.size >= 3 and receipt.transcript_hash
    receipt.elements_evaluated += 1
    with pytest.raises(ReceiptError):
        verify_receipt(receipt, key)
    receipt.elements_evaluated -= 1
    other = public_key_pem(generate_key(tmp_path / "other.pem"))
    with pytest.raises(ReceiptError, match="pinned audit key"):
        verify_receipt(receipt, other)

    pinned = federation.root / "client-cache" / "node-keys" / "prison.pem"
    original = pinned.read_bytes()
    pinned.write_bytes(other)
    try:
        with (
            Client(load_federation(federation.federation_file)) as client,
            pytest.raises(NodeError, match="another audit key"),
        ):
            client.query("prison", "prison", parents(city)[:5], purpose="screening")
    finally:
        pinned.write_bytes(original)


def test_node_stays_responsive_during_a_large_query(federation):
    import threading
    import time

    from psi.ids import check_character

    bodies = [f"150102{1960 + i // 1000}0101{i % 1000:03d}" for i in range(18_000)]
    ids = [body + check_character(body) for body in bodies]  # 18,000 fresh people
    done = threading.Event()

    def big_query():
        with Client(load_federation(federation.federation_file)) as client:
            client.query("disability", "disability", ids, purpose="screening")
        done.set()

    worker = threading.Thread(target=big_query)
    worker.start()
    latencies = []
    with channel(federation, "disability") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        while not done.is_set():
            started = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(service="disability"), timeout=10)
            latencies.append(time.perf_counter() - started)
            time.sleep(0.2)
    worker.join()
    assert len(latencies) >= 3 and max(latencies) < 2.0, latencies


def test_labels_open_on_demand_and_fingerprints_mark_entries(city, federation):
    """``found(rows)`` opens only the rows asked for, and agrees with ``matches``; an identifier
    has a fingerprint exactly when the table holds an entry for it."""
    ids = parents(city)
    with Client(load_federation(federation.federation_file)) as client:
        result = client.query("health", "health", ids, purpose="screening")
    matched = {x for x, _ in result.matches}
    rows = np.arange(0, len(ids), 2)
    assert {ids[f.index] for f in result.found(rows)} == {ids[i] for i in rows} & matched
    assert {ids[i] for i in np.flatnonzero(result.fingerprints)} == matched


def test_warm_caches_then_query_and_a_corrupt_cache_is_reported_by_the_query(
    city, federation, capsys
):
    """Warming reads every cache in the background; a bad one is left for the query to report,
    with no traceback."""
    ids = parents(city)
    config = load_federation(federation.federation_file)
    with Client(config) as client:  # the cache filled, whatever ran before
        client.query("court", "court", ids, purpose="screening")
    with Client(config) as client:
        client.warm().join()
        result = client.query("court", "court", ids, purpose="screening")
    assert (
        result.evaluated == 0
        and {x for x, _ in result.matches} == expected_matches(city[0])["court"]
    )
    [cache] = config.cache.glob("court/court/e*/*/derived.bin")
    good = cache.read_bytes()
    try:
        cache.write_bytes(b"not a cache" * 10)
        with Client(config) as client:
            client.warm().join()
            with pytest.raises(InputError, match="not an output cache"):
                client.query("court", "court", ids, purpose="screening")
    finally:
        cache.write_bytes(good)
    assert "Traceback" not in capsys.readouterr().err
