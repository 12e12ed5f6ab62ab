"""Issue 13, findings 4 and 5, replayed through public interfaces only: the `psi` command line in
subprocesses sets up a node (synthetic data, certificates, node.toml, build, serve), the attacks
go over gRPC with the generated stubs and a federation certificate, and what the node kept is read
as bytes on disk (its SQLite files) and with `psi audit verify`. Nothing here imports the node's or
the client's code: the properties hold, not the names of the tests that check them."""

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc

PASSPHRASE = "replay passphrase, not for production"
# RFC 9497 A.1.1's first BlindedElement, and RFC 9496 A.2 invalid encodings.
VALID = bytes.fromhex("609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c")
TOP_BIT = VALID[:31] + bytes([VALID[31] | 0x80])
INVALID = [
    TOP_BIT,
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("0100000000000000000000000000000000000000000000000000000000000000"),
    bytes.fromhex("26948d35ca62e643e26a83177332e6b6afeb9d08e4268b650f1f5bbd8d81d371"),
]
LOOKALIKES = [
    "150102_19800517_1237",
    "150102.19800517.123X",
    "１５０１０２－１９８００５１７－１２３７",
]


def psi(*args: str, env: dict, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "nodes.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class Node:
    """One department node run as an operator runs it, and a client's channel to it."""

    def __init__(self, root: Path):
        self.root, self.tmp = root, root / "tmp"
        self.tmp.mkdir()
        self.env = {**os.environ, "KINLINK_KEY_PASSPHRASE": PASSPHRASE, "TMPDIR": str(self.tmp)}
        psi("synth", "--out", "data", "--children", "40", "--as-of", "2026-11-30", **self.kw)
        psi("certs", "init", "--out", "certs", "--nodes", "prison", "--clients", "ca-x", **self.kw)
        (root / "node.toml").write_text(
            '[node]\nid = "prison"\nlisten = "127.0.0.1:0"\nstate = "state"\n'
            'tls = { ca = "certs/ca.pem", cert = "certs/prison.pem", key = "certs/prison-key.pem" }'
            '\n\n[datasets.prison]\ncsv = "data/prison.csv"\nstatuses = ["imprisoned"]\n\n'
            '[[grants]]\nclient = "ca-x"\ndatasets = ["prison"]\npurposes = ["screening"]\n'
            'fields = ["status"]\n',
            encoding="utf-8",
        )
        psi("node", "build", "--config", "node.toml", **self.kw)
        serve = ["node", "serve", "--config", "node.toml", "--port-file", "port"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nodes.cli", *serve],
            env=self.env,
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not ((root / "port").exists() and (root / "port").read_text().strip()):
            assert self.process.poll() is None and time.monotonic() < deadline, "no node"
            time.sleep(0.05)
        certs = root / "certs"
        credentials = grpc.ssl_channel_credentials(
            *((certs / name).read_bytes() for name in ("ca.pem", "ca-x-key.pem", "ca-x.pem"))
        )
        port = int((root / "port").read_text())
        self.channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials)
        self.stub = psi_pb2_grpc.DepartmentNodeStub(self.channel)

    @property
    def kw(self) -> dict:
        return {"env": self.env, "cwd": self.root}

    def entries(self) -> list[dict]:
        """The node's audit log entries, read from the file (the format of reviewer-guide.md)."""
        with sqlite3.connect(
            f"file:{self.root / 'state' / 'audit.sqlite'}?mode=ro", uri=True
        ) as db:
            return [json.loads(data) for (data,) in db.execute("SELECT data FROM entries")]

    def stop(self) -> None:
        self.channel.close()
        self.process.terminate()
        self.process.wait(timeout=20)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    node = Node(tmp_path_factory.mktemp("replay-inputs"))
    yield node
    node.stop()


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def open_session(node: Node, **fields) -> psi_pb2.Session:
    request = dict(
        dataset_id="prison", purpose_code="screening", element_count=1, suite="ristretto255-SHA512"
    )
    request.update(protocol_version=1, **fields)
    return node.stub.OpenSession(psi_pb2.OpenSessionRequest(**request), timeout=20)


def evaluate(node: Node, *chunks: psi_pb2.EvaluateChunk) -> list:
    return list(node.stub.Evaluate(iter(chunks), timeout=20))


def chunk(session: str, element: bytes, sequence: int = 0) -> psi_pb2.EvaluateChunk:
    return psi_pb2.EvaluateChunk(session_id=session, sequence=sequence, count=1, elements=element)


def test_a_valid_element_is_evaluated(node):
    session = open_session(node).session_id
    (answer,) = evaluate(node, chunk(session, VALID))
    assert len(answer.elements) == 32


@pytest.mark.parametrize("element", INVALID, ids=lambda e: e.hex()[:8] + e.hex()[-2:])
def test_no_invalid_encoding_is_evaluated(node, element):
    session = open_session(node).session_id
    error = refused(lambda: evaluate(node, chunk(session, element)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_megabytes_of_legal_basis_are_refused_and_not_logged(node):
    before = len(json.dumps(node.entries()))
    for _ in range(3):
        request = psi_pb2.FetchTableRequest(
            dataset_id="prison", purpose_code="screening", legal_basis_ref="L" * 3_000_000
        )
        error = refused(lambda request=request: list(node.stub.FetchTable(request, timeout=20)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(json.dumps(node.entries())) - before < 3000


def test_an_element_count_of_2_to_the_63_is_invalid(node):
    error = refused(lambda: open_session(node, element_count=2**63))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_refused_fifteen_digit_sequence_leaves_the_evaluation_logged(node):
    session = open_session(node, element_count=2).session_id
    error = refused(lambda: evaluate(node, chunk(session, VALID), chunk("", VALID, 10**15)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    logged = [
        e
        for e in node.entries()
        if e["event"] == "elements_evaluated" and e.get("session_id") == session
    ]
    assert [e["evaluated"] for e in logged] == [1]


@pytest.mark.parametrize("text", LOOKALIKES)
def test_identifier_lookalikes_never_reach_the_disk(node, text):
    request = psi_pb2.DisputeRequest(
        dataset_id="prison", record_handle=bytes(16), reason=f"parent {text}", evidence_ref="x"
    )
    assert refused(lambda: node.stub.RaiseDispute(request, timeout=20)).code() == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    error = refused(lambda: open_session(node, legal_basis_ref=text))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    for path in (node.root / "state").glob("*.sqlite*"):
        data = path.read_bytes()
        assert b"19800517" not in data and "１９８００５１７".encode() not in data, path.name


def test_the_log_verifies_and_no_temporary_file_is_left(node):
    state = node.root / "state"
    out = psi(
        "audit",
        "verify",
        "--key",
        str(state / "audit-key.pub.pem"),
        str(state / "audit.sqlite"),
        **node.kw,
    )
    assert "verified: no tampering found" in out
    assert sorted(p.name for p in node.tmp.iterdir()) == []
