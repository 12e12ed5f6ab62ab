"""Catalogue requests and disputes (POLICY.md mechanisms 4 and 5) end to end: real node processes
over mutual TLS on loopback, the operator's commands, the client's commands and local record."""

import csv
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import grpc
import pytest

from nodes.cli import main
from nodes.client.accountability import (
    PROOF_SHOWN,
    UNDER_VERIFICATION,
    AccountabilityClient,
    DisputeCases,
)
from nodes.client.client import Client, NodeError
from nodes.demo.federation import CLIENT, LocalFederation
from nodes.demo.synth import generate_city, write_city
from nodes.department.state import NodeState
from nodes.shared.certs import Role, issue
from nodes.shared.config import load_federation, load_node_config
from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc
from psi.keys import PASSPHRASE_VAR
from psi.labels import record_handle

NODE = "prison"
EDUCATION = "education"


@dataclass
class World:
    fed: LocalFederation
    parents: list[str]  # the roster's parents, canonical: what a screening asks about
    register: Path  # the prison's register file
    education: Path  # a second client's federation file


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    city = generate_city(children=300, as_of=date(2026, 11, 30), seed=11)
    paths = write_city(city, tmp_path_factory.mktemp("data"))
    with LocalFederation(tmp_path_factory.mktemp("fed"), {NODE: paths[NODE]}) as fed:
        fed.setup()
        issue(fed.certs, EDUCATION, Role.CLIENT)
        fed.build()
        fed.start()
        education = fed.root / "education.toml"
        education.write_text(
            fed.federation_toml()
            .replace(CLIENT, EDUCATION)
            .replace("client-cache", "education-cache"),
            encoding="utf-8",
        )
        parents = {
            x
            for row in city.roster
            for x in (city.canonical(row.father_id), city.canonical(row.mother_id))
            if x
        }
        yield World(fed, sorted(parents), paths[NODE], education)


@pytest.fixture
def psi(world, monkeypatch, capsys):
    """``psi ...`` in this process (the node's passphrase in the environment, as an operator
    has it); returns (exit status, stdout, stderr)."""
    monkeypatch.setenv(PASSPHRASE_VAR, world.fed.passphrase)

    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def refused(call) -> NodeError:
    with pytest.raises(NodeError) as caught:
        call()
    return caught.value


def open_session(client: Client, purpose: str) -> None:
    stub = psi_pb2_grpc.DepartmentNodeStub(client.channel(NODE))
    request = psi_pb2.OpenSessionRequest(
        dataset_id=NODE,
        purpose_code=purpose,
        element_count=1,
        suite=client.oprf.suite.name,
        protocol_version=1,
    )
    client.call(NODE, lambda: stub.OpenSession(request, timeout=10))


def raw_dispute(client: Client, handle: bytes, reason: str) -> None:
    """RaiseDispute without the client library's own checks, to see the node's."""
    stub = psi_pb2_grpc.DepartmentNodeStub(client.channel(NODE))
    request = psi_pb2.DisputeRequest(
        dataset_id=NODE, record_handle=handle, reason=reason, evidence_ref="case 1"
    )
    client.call(NODE, lambda: stub.RaiseDispute(request, timeout=10))


def test_a_request_outside_the_catalogue_is_filed_approved_and_served(world, psi):
    config = world.fed.config_file(NODE)
    with Client(load_federation(world.education)) as client:
        accountability = AccountabilityClient(client)
        before = client.catalogue(NODE)
        assert not before.datasets and before.catalogue_version >= 1

        denied = refused(lambda: open_session(client, "tuition_aid"))
        assert denied.code == grpc.StatusCode.PERMISSION_DENIED
        assert (
            f"psi catalog request --federation FILE --node {NODE} --dataset {NODE} "
            "--purpose tuition_aid" in str(denied)
        )
        foreign = refused(lambda: raw_dispute(client, b"\1" * 16, "not a record of ours"))
        assert foreign.code == grpc.StatusCode.PERMISSION_DENIED

        status, out, err = psi(
            "catalog", "request", "--federation", world.education, "--node", NODE,
            "--dataset", NODE, "--purpose", "tuition_aid", "--fields", "status,start,end",
            "--volume", "800", "--legal-basis", "Education aid rules art. 7",
            "--reason", "tuition aid for orphans and de facto unattended children",
        )  # fmt: skip
        assert status == 0, err
        [filed] = accountability.access_requests(NODE)
        assert filed.status == psi_pb2.REQUEST_STATUS_PENDING
        assert f"request {filed.request_id}: {NODE}, pending" in out
        again = refused(
            lambda: accountability.request_access(
                NODE, NODE, ["tuition_aid"], legal_basis_ref="ref", justification="again"
            )
        )
        assert again.code == grpc.StatusCode.ALREADY_EXISTS

        status, out, err = psi("node", "catalog", "approve", filed.request_id, "--config", config)
        assert status == 0, err
        assert "per session 800, per day 800, per epoch 9600" in out
        assert "new profile" in out and "psi node build" in out
        status, _, err = psi("node", "catalog", "approve", filed.request_id, "--config", config)
        assert status == 2 and "already approved" in err and "Traceback" not in err

        world.fed.build()  # the new field profile's table; the running node picks it up
        after = client.catalogue(NODE)
        assert after.catalogue_version == before.catalogue_version + 1
        [dataset] = after.datasets
        assert list(dataset.allowed_purposes) == ["tuition_aid"]
        assert set(dataset.label_fields) == {"status", "start", "end"}
        [approved] = accountability.access_requests(NODE, [filed.request_id])
        assert approved.status == psi_pb2.REQUEST_STATUS_APPROVED
        assert approved.catalogue_version == after.catalogue_version

        result = client.query(NODE, NODE, world.parents, purpose="tuition_aid")
        with Client(load_federation(world.fed.federation_file)) as civil_affairs:
            reference = civil_affairs.query(NODE, NODE, world.parents, purpose="screening")
        assert result.matches
        assert {x for x, _ in result.matches} == {x for x, _ in reference.matches}
        assert all(label.fields == {"status", "start", "end"} for _, label in result.matches)

        # A rejected request stays refused, and the client is told why.
        research = accountability.request_access(
            NODE, NODE, ["research"], legal_basis_ref="none", justification="curiosity"
        )
        status, _, err = psi(
            "node", "catalog", "reject", research.request_id,
            "--reason", "no legal basis for research use", "--config", config,
        )  # fmt: skip
        assert status == 0, err
        [rejected] = accountability.access_requests(NODE, [research.request_id])
        assert rejected.status == psi_pb2.REQUEST_STATUS_REJECTED
        assert rejected.decision_note == "no legal basis for research use"
        assert client.catalogue(NODE).catalogue_version == after.catalogue_version
        assert refused(lambda: open_session(client, "research")).code == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        missing = refused(lambda: accountability.access_requests(NODE, [999]))
        assert missing.code == grpc.StatusCode.NOT_FOUND

    status, out, err = psi("node", "catalog", "list", "--config", config)
    assert status == 0 and out.count(f"from {EDUCATION}") == 2, err
    status, out, err = psi("catalog", "show", "--federation", world.education, "--node", NODE)
    assert status == 0 and f"catalogue version {after.catalogue_version}" in out, err


def record_refs(world: World) -> dict[bytes, str]:
    """Handle -> record_ref, recomputed from the register file with the node's handle key."""
    config = load_node_config(world.fed.config_file(NODE))
    key = NodeState(config, world.fed.passphrase.encode()).keyring().handle_key(NODE)
    with open(world.register, encoding="utf-8", newline="") as handle:
        refs = [row["record_ref"] for row in csv.DictReader(handle)]
    return {record_handle(key, ref): ref for ref in refs}


def test_a_dispute_is_verified_and_a_withdrawn_record_leaves_the_next_table(world, psi):
    config = world.fed.config_file(NODE)
    with Client(load_federation(world.fed.federation_file)) as client:
        accountability = AccountabilityClient(client)
        first = client.query(NODE, NODE, world.parents, purpose="screening")
        single = [
            (x, label.records[0].handle) for x, label in first.matches if len(label.records) == 1
        ]
        (gone_person, gone), (_, kept), (_, pending) = single[:3]

        withdrawn = accountability.raise_dispute(
            NODE, NODE, gone, reason="release order shows the term ended", evidence_ref="case 17"
        )
        confirmed = accountability.raise_dispute(
            NODE, NODE, kept, reason="start date looks wrong", evidence_ref="case 18"
        )
        assert withdrawn.status == confirmed.status == psi_pb2.DISPUTE_STATUS_OPEN
        twice = refused(
            lambda: accountability.raise_dispute(
                NODE, NODE, gone, reason="again", evidence_ref="case 17"
            )
        )
        assert twice.code == grpc.StatusCode.ALREADY_EXISTS
        short = refused(lambda: raw_dispute(client, gone[:15], "a handle cut short"))
        assert short.code == grpc.StatusCode.INVALID_ARGUMENT
        leaked = refused(lambda: raw_dispute(client, gone, "parent 11010519491231002X is free"))
        assert leaked.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "11010519491231002X" not in str(leaked)
        unknown = refused(lambda: accountability.disputes(NODE, [999]))
        assert unknown.code == grpc.StatusCode.NOT_FOUND

        refs = record_refs(world)
        status, out, err = psi("node", "disputes", "list", "--open", "--config", config)
        assert status == 0, err
        assert f"record {refs[gone]}" in out and f"record {refs[kept]}" in out
        assert f"from {CLIENT}" in out

        status, out, err = psi(
            "node", "disputes", "resolve", withdrawn.dispute_id, "--as", "withdrawn",
            "--note", "term ended; record withdrawn", "--config", config,
        )  # fmt: skip
        assert status == 0 and "psi node build" in out, err
        status, _, err = psi(
            "node", "disputes", "resolve", confirmed.dispute_id, "--as", "confirmed",
            "--note", "checked against the court file", "--config", config,
        )  # fmt: skip
        assert status == 0, err
        status, _, err = psi(
            "node", "disputes", "resolve", withdrawn.dispute_id, "--as", "confirmed",
            "--note", "again", "--config", config,
        )  # fmt: skip
        assert status == 2 and "already withdrawn" in err and "Traceback" not in err

        reports = world.fed.build()[NODE]
        assert all(r.published and r.removed == 1 for r in reports)
        second = client.query(NODE, NODE, world.parents, purpose="screening")
        handles = {r.handle for _, label in second.matches for r in label.records}
        assert gone not in handles and kept in handles
        assert gone_person not in {x for x, _ in second.matches}
        assert second.table_version == first.table_version + 1

        statuses = {d.dispute_id: d.status for d in accountability.disputes(NODE)}
        assert statuses[withdrawn.dispute_id] == psi_pb2.DISPUTE_STATUS_WITHDRAWN
        assert statuses[confirmed.dispute_id] == psi_pb2.DISPUTE_STATUS_CONFIRMED

        # The local record: a pending check never blocks a person who showed legal proof.
        checking = accountability.raise_dispute(
            NODE, NODE, pending, reason="family reports a release", evidence_ref="case 20"
        )
        cases = DisputeCases.of(client.config)
        never = b"\0" * 16
        assert cases.disputes_for([gone, kept, pending, never]) == {
            gone: "withdrawn",
            kept: "confirmed",
            pending: UNDER_VERIFICATION,
        }
        assert not cases.is_proceeding(pending)
        assert cases.is_proceeding(gone) and cases.is_proceeding(never)

    federation = world.fed.federation_file
    status, out, err = psi("disputes", "list", "--federation", federation)
    assert status == 0, err
    assert "case: under verification" in out and "term ended; record withdrawn" in out
    status, out, err = psi(
        "disputes", "proof", "--federation", federation, "--node", NODE,
        "--id", checking.dispute_id, "--note", "court judgment seen by the caseworker",
    )  # fmt: skip
    assert status == 0 and "proceeds as normal" in out, err
    assert cases.disputes_for([pending]) == {pending: PROOF_SHOWN}
    assert cases.is_proceeding(pending)


def test_mistakes_on_the_command_line_are_one_line(world, psi):
    federation = world.fed.federation_file
    status, _, err = psi(
        "disputes", "raise", "--federation", federation, "--node", NODE,
        "--dataset", NODE, "--handle", "zz", "--reason", "r", "--evidence", "e",
    )  # fmt: skip
    assert status == 2 and "hexadecimal" in err and "Traceback" not in err
    status, _, err = psi(
        "disputes", "proof", "--federation", federation, "--node", NODE, "--id", 999, "--note", "n"
    )
    assert status == 2 and "no dispute 999" in err and len(err.splitlines()) == 1
    status, _, err = psi(
        "catalog", "request", "--federation", federation, "--node", NODE, "--dataset", NODE,
        "--purpose", "screening", "--legal-basis", "ref", "--reason", "for 110105194912310021",
    )  # fmt: skip
    assert status == 2 and "110105194912310021" not in err and len(err.splitlines()) == 1
