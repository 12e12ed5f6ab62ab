"""Attacks by a hostile client's inputs (issue 13, finding 5), over gRPC with mutual TLS against
a real node process: fields of any size, numbers past what the stores hold, identity numbers
spelled to slip past the filter, and refusals crafted so that the log would drop the event.
Every field is bounded before it is stored or logged; every event is logged."""

from datetime import date
from pathlib import Path

import grpc
import pytest

from nodes.client.client import Client
from nodes.demo.federation import LocalFederation
from nodes.demo.synth import generate_city, write_city
from nodes.shared.audit.log import encode_entry, read_log
from nodes.shared.config import load_federation, load_node_config
from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc, stats_pb2, stats_pb2_grpc
from psi.ids import contains_identifier

AS_OF = date(2026, 11, 30)
MB = 1 << 20
# The spellings of 150102 19800517 123X, and more: any separator, full-width digits.
LOOKALIKES = [
    "150102_19800517_1237",
    "150102.19800517.123X",
    "150102/19800517/1237",
    "150102  19800517  1237",
    "１５０１０２－１９８００５１７－１２３Ｘ",
    "１５０１０２．１９８００５１７．１２３７",
    "150102,198005,171237",
    "①⑤⓪①⓪②①⑨⑧⓪⓪⑤①⑦①②③⑦",
    "150102 - 800517 - 123",  # the legacy 15-digit form
]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    city = generate_city(children=40, as_of=AS_OF, seed=11)
    paths = write_city(city, tmp_path_factory.mktemp("data"))
    with LocalFederation(tmp_path_factory.mktemp("fed"), {"prison": paths["prison"]}) as fed:
        fed.setup()
        fed.build()
        fed.start()
        yield fed


@pytest.fixture(scope="module")
def client(node):
    with Client(load_federation(node.federation_file)) as client:
        yield client


@pytest.fixture
def stub(client):
    return psi_pb2_grpc.DepartmentNodeStub(client.channel("prison"))


def state(node) -> Path:
    return load_node_config(node.config_file("prison")).state


def entries(node) -> list[dict]:
    return read_log(state(node) / "audit.sqlite").entries


def logged_bytes(node) -> int:
    """Bytes of the entries of the node's audit log (as stored: canonical JSON)."""
    return sum(len(encode_entry(e).encode()) for e in entries(node))


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def open_session(stub, **overrides) -> psi_pb2.Session:
    request = dict(
        dataset_id="prison",
        purpose_code="screening",
        element_count=2,
        suite="ristretto255-SHA512",
        protocol_version=1,
    )
    return stub.OpenSession(psi_pb2.OpenSessionRequest(**{**request, **overrides}), timeout=20)


@pytest.mark.parametrize("text", LOOKALIKES)
def test_the_filter_catches_identifiers_with_any_separator(text):
    assert contains_identifier(text)
    assert contains_identifier(f"parent {text} was released")


def test_a_megabyte_legal_basis_is_refused_and_the_log_stays_small(node, stub):
    """10 FetchTable calls with a 3 MB legal_basis_ref grew the log by 31.7 MB, nothing charged."""
    before = len(entries(node)), logged_bytes(node)
    for _ in range(10):
        error = refused(
            lambda: list(
                stub.FetchTable(
                    psi_pb2.FetchTableRequest(
                        dataset_id="prison", purpose_code="screening", legal_basis_ref="L" * 3 * MB
                    ),
                    timeout=20,
                )
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "legal_basis_ref" in error.details() and len(error.details()) < 200
    assert len(entries(node)) - before[0] == 10  # each refusal logged,
    assert logged_bytes(node) - before[1] < 10 * 1024  # in a few hundred bytes
    refusal = entries(node)[-1]
    assert refusal["event"] == "session_refused" and refusal["detail"] == "FetchTableRequest"


def test_a_megabyte_dataset_name_is_neither_echoed_nor_stored(node, stub):
    before = logged_bytes(node)
    error = refused(lambda: open_session(stub, dataset_id="d" * MB))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(error.details()) < 200
    assert logged_bytes(node) - before < 1024


def test_an_element_count_past_sqlite_is_invalid_not_unknown(node, stub):
    error = refused(lambda: open_session(stub, element_count=2**63))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "element_count" in error.details()


def test_a_long_out_of_order_sequence_still_logs_the_evaluation(node, stub, client):
    """Answers were sent for chunk 0; chunk 10^15 is refused; the evaluation is logged."""
    session = open_session(stub)
    element = bytes.fromhex("609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c")
    chunks = [
        psi_pb2.EvaluateChunk(session_id=session.session_id, sequence=0, count=1, elements=element),
        psi_pb2.EvaluateChunk(sequence=10**15, count=1, elements=element),
    ]
    answers = []
    error = refused(lambda: answers.extend(stub.Evaluate(iter(chunks), timeout=20)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(answers) == 1
    logged = [
        e
        for e in entries(node)
        if e["event"] == "elements_evaluated" and e.get("session_id") == session.session_id
    ]
    assert [(e["evaluated"], e["outcome"]) for e in logged] == [(1, "invalid_argument")]
    assert "10000000" not in str(logged)


@pytest.mark.parametrize("text", LOOKALIKES[:5])
def test_identifier_lookalikes_reach_no_registry_and_no_log(node, stub, text):
    before = {p: p.read_bytes() for p in state(node).glob("*.sqlite*")}
    calls = [
        lambda: stub.RaiseDispute(
            psi_pb2.DisputeRequest(
                dataset_id="prison",
                record_handle=bytes(16),
                reason=f"parent {text} was released",
                evidence_ref="letter of 3 March",
            ),
            timeout=20,
        ),
        lambda: stub.RequestAccess(
            psi_pb2.AccessRequest(
                dataset_id="prison",
                purposes=["tuition_aid"],
                legal_basis_ref=text,
                justification="needed",
            ),
            timeout=20,
        ),
        lambda: open_session(stub, legal_basis_ref=text),
    ]
    for call in calls:
        assert refused(call).code() == grpc.StatusCode.INVALID_ARGUMENT
    digits = text.translate({0xFF10 + i: str(i) for i in range(10)})
    for path in state(node).glob("*.sqlite*"):
        added = path.read_bytes()[len(before.get(path, b"")) :]
        for form in ("19800517", "１９８００５１７", "800517"):
            assert form.encode() not in added, (path.name, digits)


OVERSIZED = [
    ("GetCatalogue", psi_pb2.CatalogueRequest(dataset_ids=["x"] * 1001)),
    ("OpenSession", psi_pb2.OpenSessionRequest(dataset_id="prison", suite="s" * 65)),
    ("FetchTable", psi_pb2.FetchTableRequest(dataset_id="prison", since_version=2**63)),
    ("CloseSession", psi_pb2.CloseSessionRequest(session_id="s" * 65)),
    ("RequestAccess", psi_pb2.AccessRequest(dataset_id="prison", expected_volume=10**12)),
    ("ListAccessRequests", psi_pb2.ListAccessRequestsRequest(request_ids=[2**64 - 1])),
    ("RaiseDispute", psi_pb2.DisputeRequest(dataset_id="prison", reason="r" * 1001)),
    ("ListDisputes", psi_pb2.ListDisputesRequest(dispute_ids=[2**63])),
    ("OpenStatistics", stats_pb2.OpenStatisticsRequest(dataset_id="prison", groups=2**20)),
    ("FetchNodeSet", stats_pb2.NodeSetRequest(session_id="s\n")),
]


@pytest.mark.parametrize(("rpc", "request_"), OVERSIZED, ids=[r for r, _ in OVERSIZED])
def test_every_call_refuses_a_field_past_its_bound_and_logs_it(node, client, rpc, request_):
    channel = client.channel("prison")
    stats = isinstance(request_, stats_pb2.OpenStatisticsRequest | stats_pb2.NodeSetRequest)
    stub = (stats_pb2_grpc.StatisticsStub if stats else psi_pb2_grpc.DepartmentNodeStub)(channel)

    def call():
        answer = getattr(stub, rpc)(request_, timeout=20)
        return list(answer) if rpc in ("FetchTable", "FetchNodeSet") else answer

    error = refused(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith("request refused: " + request_.DESCRIPTOR.name)
    last = entries(node)[-1]
    assert (last["event"], last["detail"]) == ("session_refused", request_.DESCRIPTOR.name)
