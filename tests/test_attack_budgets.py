"""Attacks on budgets left unlimited by omission (issue 13, finding 2), each written as the attack
against real node processes over mutual TLS: a grant that states no budget, a budget lifted in
silence, a demo that grants millions, and a session resumed to get more than it was charged."""

import re
import sqlite3
from datetime import date

import grpc
import pytest
from test_federation import channel, open_session

from nodes.demo.federation import CLIENT, LocalFederation, demo_limits
from nodes.demo.synth import generate_city, write_city
from nodes.shared.audit.report import build_report
from nodes.shared.config import Limits, load_node_config
from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc
from psi.errors import InputError

SWEEPER = "education"  # a second client, whose budgets the sweep spends
COUNTY = 36_000_000  # about a county's identifier space
BUDGET_LINE = re.compile(r"^per_(session|day|epoch) = .*\n", re.M)


@pytest.fixture(scope="module")
def registers(tmp_path_factory):
    city = generate_city(children=300, as_of=date(2026, 11, 30), seed=13)
    return write_city(city, tmp_path_factory.mktemp("data"))


def federation(root, registers, budgets: str, clients=(CLIENT,)):
    """A prison node whose last grant carries ``budgets`` (node.toml lines) as the only budget
    lines."""
    fed = LocalFederation(root, {"prison": registers["prison"]}, clients=clients)
    fed.setup()
    path = fed.config_file("prison")
    path.write_text(BUDGET_LINE.sub("", path.read_text()) + budgets, encoding="utf-8")
    fed.build()
    fed.start()
    return fed


@pytest.fixture(scope="module")
def silent(registers, tmp_path_factory):
    root = tmp_path_factory.mktemp("silent")
    with federation(root, registers, "", clients=(CLIENT, SWEEPER)) as fed:
        yield fed


@pytest.fixture(scope="module")
def lifted(registers, tmp_path_factory):
    budgets = 'per_session = 1000\nper_day = "unlimited"\nper_epoch = "unlimited"\n'
    with federation(tmp_path_factory.mktemp("lifted"), registers, budgets) as fed:
        yield fed


def charged(fed, client: str = CLIENT) -> int:
    with sqlite3.connect(fed.root / "prison" / "state" / "budgets.sqlite") as db:
        return db.execute(
            "SELECT COALESCE(SUM(elements), 0) FROM charges WHERE client=?", (client,)
        ).fetchone()[0]


def test_a_grant_that_states_no_budget_cannot_sweep_a_county(silent):
    """The grant names no per_session, per_day or per_epoch: a client declares a county's whole
    identifier space in one session, then asks day after day in sessions of the default."""
    with channel(silent, "prison", SWEEPER) as ch:
        stub = psi_pb2_grpc.DepartmentNodeStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            open_session(stub, element_count=COUNTY)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"at most {Limits.per_session} elements" in info.value.details()
        for _ in range(Limits.per_day // Limits.per_session):
            open_session(stub, element_count=Limits.per_session)
        with pytest.raises(grpc.RpcError, match="daily budget") as info:
            open_session(stub, element_count=1)
    assert charged(silent, SWEEPER) == Limits.per_day


@pytest.mark.parametrize("value", ["0", "-5", '"lots"', "1.5", "true", '"Unlimited"'])
def test_a_budget_that_means_nothing_is_refused_with_what_to_write(silent, value):
    path = silent.config_file("prison")
    bad = path.with_name("bad.toml")
    bad.write_text(path.read_text() + f"per_day = {value}\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_node_config(bad)
    message = str(info.value)
    assert "grants[1].per_day" in message and str(bad) in message
    assert '"unlimited"' in message and f"default {Limits.per_day}" in message


def test_an_unlimited_budget_is_written_out_warned_at_start_and_flagged(lifted):
    """An operator lifts the daily and epoch budgets: the node must say so when it starts, and a
    reviewer reading only the node's audit log must see it."""
    [grant] = load_node_config(lifted.config_file("prison")).grants
    assert grant.limits == Limits(1000, None, None)
    log = (lifted.root / "prison" / "state" / "node.log").read_text()
    assert re.search(r"WARNING .*civil-affairs.*prison.* unlimited per_day, per_epoch", log)
    report = build_report(lifted.root / "prison" / "state" / "audit.sqlite")
    [flag] = [a for a in report.anomalies if a.kind == "unlimited"]
    assert (flag.peer, flag.dataset) == (CLIENT, "prison")
    assert "per_day, per_epoch" in flag.message
    with channel(lifted, "prison") as ch:  # what is still limited holds
        with pytest.raises(grpc.RpcError) as info:
            open_session(psi_pb2_grpc.DepartmentNodeStub(ch), element_count=1001)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_demo_grants_what_its_roster_needs_not_fifty_million():
    """The demo federation's budgets are sized to the parents it asks about, not to a county."""
    parents = 3862  # a 2,000-child synthetic city
    limits = demo_limits(parents)
    assert parents <= limits.per_session <= 2 * parents
    assert limits.per_day <= 4 * limits.per_session
    assert limits.per_epoch <= 12 * limits.per_day < COUNTY // 10
    assert None not in (limits.per_session, limits.per_day, limits.per_epoch)


def chunk(session_id: str, sequence: int, elements: int) -> psi_pb2.EvaluateChunk:
    """``elements`` copies of a valid ristretto255 element (RFC 9497 A.1.1's blinded element)."""
    good = bytes.fromhex("609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c")
    return psi_pb2.EvaluateChunk(
        session_id=session_id, sequence=sequence, count=elements, elements=good * elements
    )


def resume(stub, session, **overrides) -> psi_pb2.Session:
    return open_session(
        stub,
        **{"element_count": session.element_count, **overrides},
        resume_session_id=session.session_id,
    )


def test_a_resumed_session_evaluates_only_what_it_was_charged_for(silent):
    """A client opens a session for 10, has 6 evaluated, then resumes it (as after a crash) and
    tries to get 5 more, and to open the same session twice at once: the node evaluates only the
    4 that remain, charges nothing more, and the receipt accounts for all 10."""
    before = charged(silent)
    with channel(silent, "prison") as ch:
        stub = psi_pb2_grpc.DepartmentNodeStub(ch)
        session = open_session(stub, element_count=10)
        answers = list(stub.Evaluate(iter([chunk(session.session_id, 0, 6)]), timeout=20))
        assert [a.count for a in answers] == [6]
        again = resume(stub, session)
        assert (again.session_id, again.elements_evaluated, again.chunks_evaluated) == (
            session.session_id,
            6,
            1,
        )
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Evaluate(iter([chunk(session.session_id, 1, 5)]), timeout=20))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "declared 10 elements; 11 sent" in info.value.details()
        with pytest.raises(grpc.RpcError, match="out of order"):  # the sequence goes on
            list(stub.Evaluate(iter([chunk(session.session_id, 0, 4)]), timeout=20))
        answers = list(stub.Evaluate(iter([chunk(session.session_id, 1, 4)]), timeout=20))
        assert [a.count for a in answers] == [4]
        receipt = stub.CloseSession(
            psi_pb2.CloseSessionRequest(session_id=session.session_id), timeout=10
        )
        assert (receipt.elements_declared, receipt.elements_evaluated) == (10, 10)
        assert receipt.chunks_evaluated == 2
        with pytest.raises(grpc.RpcError) as info:  # a closed session is over
            resume(stub, session)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert charged(silent) == before + 10


@pytest.mark.parametrize(
    ("who", "overrides", "code"),
    [
        (SWEEPER, {}, grpc.StatusCode.NOT_FOUND),  # another client's session
        (CLIENT, {"purpose_code": "verification"}, grpc.StatusCode.INVALID_ARGUMENT),
        (CLIENT, {"element_count": 11}, grpc.StatusCode.INVALID_ARGUMENT),
        (CLIENT, {"legal_basis_ref": "another case"}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_a_session_is_resumed_only_by_its_client_as_it_was_opened(silent, who, overrides, code):
    before = charged(silent)
    with channel(silent, "prison") as ch:
        session = open_session(psi_pb2_grpc.DepartmentNodeStub(ch), element_count=10)
    with channel(silent, "prison", who) as ch, pytest.raises(grpc.RpcError) as info:
        resume(psi_pb2_grpc.DepartmentNodeStub(ch), session, **overrides)
    assert info.value.code() == code
    assert charged(silent) == before + 10


@pytest.mark.parametrize("text", ["11010519491231002X" + "A" * 14, "x" * 10_000, "x" * 31 + "!"])
def test_a_resume_id_carrying_an_identifier_is_refused_and_never_logged(silent, text):
    """The session id to resume is the client's free text: an identity number hidden in it, or a
    flood, must not reach the node's log or files."""
    with channel(silent, "prison") as ch, pytest.raises(grpc.RpcError) as info:
        open_session(psi_pb2_grpc.DepartmentNodeStub(ch), resume_session_id=text)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "resume_session_id" in info.value.details()
    for path in (silent.root / "prison" / "state").rglob("*"):
        if path.is_file():
            assert b"110105194912" not in path.read_bytes(), path
