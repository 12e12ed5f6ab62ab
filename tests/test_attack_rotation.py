"""Rotation without downtime, as the attack on availability it was: after ``psi node rotate`` every
query failed ("no table for epoch 2 yet") until the next build. Make before break: the old epoch
serves until the new epoch's tables are published, then is retired at once (its seed dropped), so
a client can neither be starved by a rotation nor follow anyone across it."""

import subprocess
import sys
import time
from datetime import date

import grpc
import pytest

from nodes.client.client import Client
from nodes.demo.federation import LocalFederation
from nodes.demo.synth import expected_matches, generate_city, write_city
from nodes.department.service import SESSION_SECONDS
from nodes.department.state import NodeState
from nodes.shared.config import load_federation, load_node_config
from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc
from psi.labels import FIELDS

NODE = "prison"


def psi(fed, *args):
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=fed.env(),
        timeout=120,
    )


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    city = generate_city(children=150, as_of=date(2026, 11, 30), seed=18)
    paths = write_city(city, tmp_path_factory.mktemp("data"))
    with LocalFederation(tmp_path_factory.mktemp("fed"), {NODE: paths[NODE]}) as fed:
        fed.setup()
        fed.build()
        fed.start()
        fed.matched = sorted(expected_matches(city)[NODE])
        yield fed


def query(fed):
    with Client(load_federation(fed.federation_file)) as client:
        return client.query(NODE, NODE, fed.matched, purpose="screening")


def open_session(fed, epoch: int) -> psi_pb2.Session:
    with Client(load_federation(fed.federation_file)) as client:
        stub = psi_pb2_grpc.DepartmentNodeStub(client.channel(NODE))
        request = psi_pb2.OpenSessionRequest(
            dataset_id=NODE,
            purpose_code="screening",
            element_count=1,
            suite=client.oprf.suite.name,
            key_epoch=epoch,
            protocol_version=1,
        )
        return stub.OpenSession(request, timeout=10)


def test_the_old_epoch_serves_until_the_new_one_is_published(fed):
    before = query(fed)
    assert before.epoch == 1 and before.matches
    rotated = psi(fed, "node", "rotate", "--config", fed.config_file(NODE))
    assert rotated.returncode == 0, rotated.stderr
    during = query(fed)  # was: exit 3, "dataset 'prison' has no table for epoch 2 yet"
    assert during.epoch == 1
    assert {x for x, _ in during.matches} == {x for x, _ in before.matches}
    assert "epoch 2 prepared" in rotated.stdout and "epoch 1 serves" in rotated.stdout
    again = psi(fed, "node", "rotate", "--config", fed.config_file(NODE))
    assert again.returncode == 2 and "epoch 2 is already prepared" in again.stderr

    built = psi(fed, "node", "build", "--config", fed.config_file(NODE))
    assert built.returncode == 0, built.stderr
    assert "epoch 2: version 1 published" in built.stdout
    assert "epoch 1 retired" in built.stdout
    after = query(fed)
    assert after.epoch == 2
    assert {x for x, _ in after.matches} == {x for x, _ in before.matches}
    # Unlinkable across the rotation: no tag of the old table is in the new one.
    assert not set(before.tags.tolist()) & set(after.tags.tolist())
    with pytest.raises(grpc.RpcError) as retired:
        open_session(fed, 1)
    assert retired.value.code() == grpc.StatusCode.NOT_FOUND
    assert "epoch 1 was retired" in retired.value.details()
    assert not list((fed.root / NODE / "state" / NODE / "e1").rglob("outputs.bin"))


def test_a_prepared_epoch_is_not_served_before_its_tables(fed):
    rotated = psi(fed, "node", "rotate", "--config", fed.config_file(NODE))
    assert rotated.returncode == 0, rotated.stderr
    with pytest.raises(grpc.RpcError) as early:
        open_session(fed, 3)
    assert early.value.code() == grpc.StatusCode.NOT_FOUND
    assert open_session(fed, 0).key_epoch == 2


def fetch_table(fed, epoch: int) -> psi_pb2.TableHeader:
    with Client(load_federation(fed.federation_file)) as client:
        stub = psi_pb2_grpc.DepartmentNodeStub(client.channel(NODE))
        request = psi_pb2.FetchTableRequest(
            dataset_id=NODE, key_epoch=epoch, purpose_code="screening", label_fields=FIELDS
        )
        return next(iter(stub.FetchTable(request, timeout=10))).header


def test_a_query_in_flight_when_the_new_epoch_starts_still_gets_its_table(fed):
    """Its session was opened, and its elements evaluated, under the old epoch: the table of
    that epoch stays served for as long as such a session lives, though its seed is gone."""
    old = open_session(fed, 0).key_epoch
    built = psi(fed, "node", "build", "--config", fed.config_file(NODE))  # starts the prepared
    assert built.returncode == 0 and f"epoch {old} retired" in built.stdout, built.stdout
    assert fetch_table(fed, old).key_epoch == old  # was: NOT_FOUND, "epoch 2 was retired"
    assert fetch_table(fed, 0).key_epoch == old + 1
    with pytest.raises(grpc.RpcError) as retired:
        open_session(fed, old)  # nothing is evaluated under a retired epoch
    assert retired.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_retired_epochs_tables_go_once_no_session_can_need_them(fed):
    config = load_node_config(fed.config_file(NODE))
    state = NodeState(config, fed.passphrase.encode())
    ring = state.keyring()
    retired = max(e for e in range(1, ring.current(NODE)[0]) if ring.retired_at(NODE, e))
    folder = state.root / NODE / f"e{retired}"
    assert folder.is_dir() and not list(folder.rglob("outputs.bin"))  # outputs go at once
    state.sweep(NODE, now=time.time())
    assert folder.is_dir()
    state.sweep(NODE, now=time.time() + SESSION_SECONDS + 1)
    assert not folder.exists()
