"""The wire contract: generated code matches the .proto, messages round-trip, chunking stays under
the message limit and reassembles exactly, versions negotiate."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from protocols import generate
from protocols.bounds import BOUNDS, violation
from protocols.kinlink.v1 import psi_pb2 as pb
from protocols.kinlink.v1 import psi_pb2_grpc as pb_grpc
from protocols.kinlink.v1 import stats_pb2
from protocols.limits import (
    ELEMENTS_PER_CHUNK,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    SUPPORTED_PROTOCOL_VERSIONS,
    TABLE_CHUNK_BYTES,
    ProtocolVersionError,
    Reassembler,
    WireError,
    chunk_elements,
    chunk_payload,
    negotiate,
    unpack,
)

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_current():
    """The documented check: fails when someone edits the .proto and forgets to regenerate."""
    result = subprocess.run(
        [sys.executable, "-m", "protocols.generate", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_check_names_changed_missing_and_orphaned_files():
    fresh = generate.generate()
    grpc_module = Path("protocols/kinlink/v1/psi_pb2_grpc.py")
    orphan = Path("protocols/kinlink/v0/old_pb2.py")
    current = {path: data for path, data in fresh.items() if path != grpc_module}
    first = next(iter(current))
    current[first] += b"# edited\n"
    current[orphan] = b""
    assert generate.stale(fresh, current) == sorted([first, grpc_module, orphan])
    assert generate.stale(fresh, dict(fresh)) == []


def test_generated_imports_use_the_package_path():
    source = (ROOT / "protocols/kinlink/v1/psi_pb2_grpc.py").read_text()
    assert "from protocols.kinlink.v1 import psi_pb2" in source
    assert pb.DESCRIPTOR.package == "kinlink.v1"


def test_messages_round_trip():
    expires = Timestamp(seconds=1_750_000_000)
    messages = [
        pb.Catalogue(
            node_id="prison",
            protocol_versions=[PROTOCOL_VERSION],
            datasets=[
                pb.Dataset(
                    dataset_id="prison.inmates",
                    title="Persons in custody",
                    status_codes=["imprisoned"],
                    label_fields=["status", "start", "end"],
                    legal_basis="Prison Law art. 1",
                    update_frequency="P1D",
                    responsible_unit="Records office",
                    key_epoch=3,
                    table_version=17,
                    table_size=120_000,
                    allowed_purposes=["child-welfare-screening"],
                    suites=["ristretto255-SHA512"],
                )
            ],
        ),
        pb.Session(
            session_id="s-1",
            dataset_id="prison.inmates",
            key_epoch=3,
            suite="ristretto255-SHA512",
            table_version=17,
            max_elements_per_chunk=ELEMENTS_PER_CHUNK,
            max_message_bytes=MAX_MESSAGE_BYTES,
            expires_at=expires,
            protocol_version=PROTOCOL_VERSION,
            element_count=10_000_000,
        ),
        pb.EvaluateChunk(session_id="s-1", sequence=4, count=2, elements=bytes(range(64))),
        pb.TableChunk(header=pb.TableHeader(dataset_id="prison.inmates", sha256=bytes(32))),
        pb.TableChunk(data=b"\x00\x01"),
        pb.SessionReceipt(session_id="s-1", elements_evaluated=2, closed_at=expires),
    ]
    for message in messages:
        assert type(message).FromString(message.SerializeToString()) == message
    assert messages[3].WhichOneof("chunk") == "header"
    assert messages[4].WhichOneof("chunk") == "data"


def test_service_has_the_query_methods():
    methods = pb.DESCRIPTOR.services_by_name["DepartmentNode"].methods_by_name
    assert {"GetCatalogue", "OpenSession", "Evaluate", "FetchTable", "CloseSession"} <= set(methods)
    assert methods["Evaluate"].client_streaming and methods["Evaluate"].server_streaming
    assert methods["FetchTable"].server_streaming and not methods["FetchTable"].client_streaming
    assert hasattr(pb_grpc, "DepartmentNodeStub")
    assert hasattr(pb_grpc, "add_DepartmentNodeServicer_to_server")


def _requests() -> dict[str, list[str]]:
    """Every message a node receives (the inputs of both services, and the messages inside
    them): its fields, from the .proto files."""
    found: dict[str, list[str]] = {}

    def walk(message) -> None:
        if message.name not in found:
            found[message.name] = [f.name for f in message.fields]
            for field in message.fields:
                if field.message_type is not None:
                    walk(field.message_type)

    for file in (pb.DESCRIPTOR, stats_pb2.DESCRIPTOR):
        for service in file.services_by_name.values():
            for method in service.methods:
                walk(method.input_type)
    return found


def test_every_request_field_has_a_bound_listed_in_the_protocol_doc():
    """No field a client sends goes unbounded by omission: the table is the .proto's fields,
    exactly, and docs/protocol.md lists each bound as the code has it."""
    assert {m: sorted(f) for m, f in _requests().items()} == {
        m: sorted(f) for m, f in BOUNDS.items()
    }
    doc = (ROOT / "docs" / "protocol.md").read_text()
    for message, fields in BOUNDS.items():
        for field, bound in fields.items():
            assert f"| `{message}.{field}` | {bound.describe()} |" in doc, (message, field)


def test_a_violation_names_the_field_and_never_the_value():
    found = violation(pb.OpenSessionRequest(legal_basis_ref="1" * 300, element_count=2**63))
    assert str(found) == "OpenSessionRequest.legal_basis_ref is 300 characters; at most 200"
    found = violation(pb.ListDisputesRequest(dispute_ids=[1, 2**63]))
    assert "2^63 - 1" in str(found) and "9223" not in str(found)
    nested = stats_pb2.SumChunk(pairs=stats_pb2.PairBlock(count=70_000))
    assert (
        str(violation(nested)) == "PairBlock.count is over 65,536" and violation(nested).exhausted
    )
    assert violation(pb.OpenSessionRequest(dataset_id="prison", element_count=10)) is None


def test_ten_million_elements_chunk_under_the_limit_and_reassemble():
    n = 10_000_000
    elements = np.zeros((n, 32), dtype=np.uint8)
    elements.view(np.uint64)[:, 0] = np.arange(n)  # every row distinct: misplacing one shows
    received = Reassembler(n, 32)
    sizes = []
    for sequence, chunk in enumerate(chunk_elements(elements)):
        assert np.shares_memory(chunk, elements)  # a view, not a copy
        message = pb.EvaluateChunk(
            session_id="s" * 64, sequence=sequence, count=len(chunk), elements=chunk.tobytes()
        )
        sizes.append(message.ByteSize())
        wire = pb.EvaluateChunk.FromString(message.SerializeToString())
        received.add(wire.elements, wire.count, wire.sequence)
    assert len(sizes) == -(-n // ELEMENTS_PER_CHUNK) == 153
    assert max(sizes) < MAX_MESSAGE_BYTES
    assert np.array_equal(received.result().view(np.uint64), elements.view(np.uint64))


def test_table_payload_chunks_and_reassembles():
    payload = np.random.default_rng(1).bytes(2 * TABLE_CHUNK_BYTES + 12345)
    received = Reassembler(len(payload), 1)
    for piece in chunk_payload(payload):
        message = pb.TableChunk(data=bytes(piece))
        assert message.ByteSize() < MAX_MESSAGE_BYTES
        received.add(pb.TableChunk.FromString(message.SerializeToString()).data)
    assert received.chunks == 3
    assert hashlib.sha256(received.result()).digest() == hashlib.sha256(payload).digest()


def test_reassembler_rejects_broken_streams():
    row = bytes(32)
    out_of_order = Reassembler(2, 32)
    with pytest.raises(WireError, match="chunk 1 arrived where chunk 0 was due"):
        out_of_order.add(row, 1, 1)
    too_many = Reassembler(1, 32)
    with pytest.raises(WireError, match="more than the 1 rows"):
        too_many.add(row * 2, 2, 0)
    short = Reassembler(2, 32)
    short.add(row, 1, 0)
    with pytest.raises(WireError, match="after 1 of 2 rows"):
        short.result()
    with pytest.raises(WireError, match="declares 2 elements of 32 bytes but carries 32"):
        unpack(row, 2, 32)
    with pytest.raises(WireError, match="not whole rows"):
        Reassembler(4, 32).add(bytes(40))


def test_chunking_rejects_a_flat_array():
    with pytest.raises(ValueError, match="shape"):
        next(chunk_elements(np.zeros(64, dtype=np.uint8)))


def test_negotiate_picks_the_highest_common_version():
    assert negotiate([1, 2, 3], [2, 3, 4]) == 3
    assert negotiate([PROTOCOL_VERSION], SUPPORTED_PROTOCOL_VERSIONS) == PROTOCOL_VERSION
    with pytest.raises(ProtocolVersionError, match="client speaks 1, 2, node speaks 3"):
        negotiate([2, 1], [3])
