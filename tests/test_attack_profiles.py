"""Attack: a client granted only ``status`` reads fields it was not granted from tables it can get.

Tables are meant to be copyable (anyone may hold them: they are pseudorandom without OPRF outputs),
so a grant holds only if a client's own OPRF outputs open nothing beyond its grant in *any* table
of the dataset: another client's copy of a fuller profile, or every table file in the node's state
folder. Real node process, mutual TLS on loopback, real files."""

import shutil
from datetime import date
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest

from nodes.client.client import Client, QueryResult
from nodes.demo.federation import CLIENT, LocalFederation
from nodes.demo.synth import generate_city, write_city
from nodes.shared.atrest import TRAILER
from nodes.shared.config import load_federation
from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc
from psi.labels import FIELDS
from psi.matching import lookup_tags
from psi.table import KEY_BYTES, TAG_BYTES, Table

NODE = "prison"
STATUS_ONLY = "education"
PURPOSE = "screening"


class World(NamedTuple):
    fed: LocalFederation
    parents: list[str]  # the roster's parents, canonical: what both clients ask about


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    city = generate_city(children=200, as_of=date(2026, 11, 30), seed=13)
    paths = write_city(city, tmp_path_factory.mktemp("data"))
    with LocalFederation(
        tmp_path_factory.mktemp("fed"),
        {NODE: paths[NODE]},
        clients=(CLIENT, STATUS_ONLY),
        fields={STATUS_ONLY: ["status"]},
    ) as fed:
        fed.setup()
        fed.build()
        fed.start()
        parents = {
            x
            for row in city.roster
            for x in (city.canonical(row.father_id), city.canonical(row.mother_id))
            if x
        }
        yield World(fed, sorted(parents))


def query(world: World, client: str) -> QueryResult:
    with Client(load_federation(world.fed.federation_file_of(client))) as session:
        return session.query(NODE, NODE, world.parents, purpose=PURPOSE)


def copies(folder: Path) -> list[Path]:
    """A client's table copies, wherever its cache keeps them."""
    return sorted(folder.rglob("table.kltb"))


def opened_fields(table: Table, result: QueryResult) -> set[str]:
    """Every label field the status-only client's own outputs open in ``table``."""
    tags = result.tags
    keys = result.derived[:, TAG_BYTES : TAG_BYTES + KEY_BYTES]
    found, _ = lookup_tags(table, tags, keys)
    return set().union(*(f.label.fields for f in found))


def test_a_status_only_client_opens_nothing_beyond_status_in_any_table(world):
    fed = world.fed
    full = query(world, CLIENT)
    assert any("start" in label.fields for _, label in full.matches)
    mine = query(world, STATUS_ONLY)
    assert mine.matches, "the status-only client must match through its own grant"
    assert {f for _, label in mine.matches for f in label.fields} == {"status"}

    stolen = copies(load_federation(fed.federation_file).cache)
    stolen += sorted((fed.root / NODE / "state").rglob("*.table"))
    assert len(stolen) >= 3  # civil affairs' copy, and the node's table of each profile
    for path in stolen:
        table = Table.from_bytes(path.read_bytes()[: -TRAILER.size])  # its MAC trailer cut off
        assert opened_fields(table, mine) <= {"status"}, path.name


def test_a_swapped_table_copy_gives_the_status_only_client_no_more_fields(world):
    fed = world.fed
    query(world, CLIENT)
    query(world, STATUS_ONLY)
    [full_copy] = copies(load_federation(fed.federation_file).cache)
    [own_copy] = copies(load_federation(fed.federation_file_of(STATUS_ONLY)).cache)
    shutil.copyfile(full_copy, own_copy)  # same dataset, epoch and version: the node sends nothing
    again = query(world, STATUS_ONLY)
    assert {f for _, label in again.matches for f in label.fields} <= {"status"}


def test_naming_another_profile_in_a_request_is_refused(world):
    """The node picks the key from the grant, never from the request: a status-only client that
    names the full profile is refused (the field exists so an honest client whose grant changed
    since its catalogue does not cache outputs under the wrong profile)."""
    with Client(load_federation(world.fed.federation_file_of(STATUS_ONLY))) as client:
        stub = psi_pb2_grpc.DepartmentNodeStub(client.channel(NODE))
        full = sorted(FIELDS)
        opening = psi_pb2.OpenSessionRequest(
            dataset_id=NODE,
            purpose_code=PURPOSE,
            element_count=1,
            suite=client.oprf.suite.name,
            protocol_version=1,
            label_fields=full,
        )
        fetching = psi_pb2.FetchTableRequest(
            dataset_id=NODE, purpose_code=PURPOSE, label_fields=full
        )
        for call in (lambda: stub.OpenSession(opening), lambda: list(stub.FetchTable(fetching))):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "label fields are now status" in refused.value.details()
        opening.label_fields[:] = ["status"]
        assert stub.OpenSession(opening).session_id
