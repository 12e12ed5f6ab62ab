"""Federation certificates and mutual TLS over a real loopback gRPC server: only clients holding a
certificate from the federation CA get through, and the server sees who they are."""

import hashlib
import os
import stat
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nodes.shared.certs import Role, fingerprint, init_federation, issue, subject_cn
from nodes.shared.tls import Peer, TlsFiles, channel_credentials, peer_identity, server_credentials
from protocols.limits import GRPC_OPTIONS
from psi.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
NODES, CLIENTS = ["prison", "police"], ["civil-affairs"]
TIMEOUT = 5  # seconds; a refused handshake fails at once, this only bounds a hang


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("federation")
    init_federation(out, NODES, CLIENTS, days=30)
    return out


@pytest.fixture(scope="module")
def other_federation(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("other")
    init_federation(out, ["prison"], ["civil-affairs"], days=30)
    return out


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _usages(cert: x509.Certificate) -> list:
    return list(cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value)


def test_init_writes_keys_private_and_certificates_for_their_role(federation):
    names = ["ca", *NODES, *CLIENTS]
    assert sorted(p.name for p in federation.iterdir()) == sorted(
        f for n in names for f in (f"{n}.pem", f"{n}-key.pem")
    )
    for name in names:
        assert stat.S_IMODE(os.stat(federation / f"{name}-key.pem").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(federation / f"{name}.pem").st_mode) == 0o644

    ca = _cert(federation / "ca.pem")
    assert ca.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca
    prison = _cert(federation / "prison.pem")
    prison.verify_directly_issued_by(ca)
    assert _usages(prison) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = prison.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "prison"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]

    client = _cert(federation / "civil-affairs.pem")
    client.verify_directly_issued_by(ca)
    assert _usages(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "kinlink federation"
    )


def test_fingerprint_and_common_name(federation):
    pem = (federation / "civil-affairs.pem").read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    assert fingerprint(pem) == hashlib.sha256(der).hexdigest()
    assert subject_cn(pem) == "civil-affairs"
    with pytest.raises(InputError, match="not a PEM certificate"):
        fingerprint(b"garbage")


def test_issue_adds_one_and_refuses_to_overwrite_without_force(tmp_path):
    init_federation(tmp_path, ["prison"], [])
    added = issue(tmp_path, "education", Role.CLIENT, days=10)
    assert subject_cn(added.cert.read_bytes()) == "education"
    assert stat.S_IMODE(os.stat(added.key).st_mode) == 0o600
    before = added.cert.read_bytes()
    with pytest.raises(InputError, match=r"already has education\.pem, education-key\.pem"):
        issue(tmp_path, "education", Role.CLIENT)
    assert added.cert.read_bytes() == before
    assert issue(tmp_path, "education", Role.NODE, force=True).fingerprint != fingerprint(before)


def test_input_errors(tmp_path):
    init_federation(tmp_path / "fed", ["prison"], [])
    with pytest.raises(InputError, match=r"already has ca\.pem, ca-key\.pem, prison\.pem"):
        init_federation(tmp_path / "fed", ["prison"], [])
    for bad in ("Prison", "pri son", "-x", "ca", "x" * 64):
        with pytest.raises(InputError, match=r"invalid name|reserved"):
            init_federation(tmp_path / "bad", [bad], [])
    with pytest.raises(InputError, match="given twice"):
        init_federation(tmp_path / "bad", ["prison"], ["prison"])
    assert not (tmp_path / "bad" / "ca.pem").exists()  # nothing written on a refused init
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot create directory"):
        init_federation(blocker / "sub", ["prison"], [])
    with pytest.raises(InputError, match="run 'psi certs init' first"):
        issue(tmp_path / "empty", "prison", Role.NODE)
    with pytest.raises(InputError, match="CA expires"):
        issue(tmp_path / "fed", "court", Role.NODE, days=100 * 365)


class RecordingHealth(health.HealthServicer):
    """The standard health service, noting who called."""

    def __init__(self):
        super().__init__()
        self.peers: list[Peer | None] = []

    def Check(self, request, context):
        self.peers.append(peer_identity(context))
        return super().Check(request, context)


@pytest.fixture(scope="module")
def node(federation):
    servicer = RecordingHealth()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=GRPC_OPTIONS)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port(
        "localhost:0", server_credentials(TlsFiles.in_dir(federation, "prison"))
    )
    server.start()
    yield f"localhost:{port}", servicer
    server.stop(grace=None)


def _check(target: str, credentials: grpc.ChannelCredentials | None) -> int:
    if credentials is None:
        channel = grpc.insecure_channel(target, options=GRPC_OPTIONS)
    else:
        channel = grpc.secure_channel(target, credentials, options=GRPC_OPTIONS)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status


def test_federation_client_is_served_and_identified(node, federation):
    target, servicer = node
    files = TlsFiles.in_dir(federation, "civil-affairs")
    assert _check(target, channel_credentials(files)) == health_pb2.HealthCheckResponse.SERVING
    assert servicer.peers[-1] == Peer("civil-affairs", fingerprint(files.cert.read_bytes()))


@pytest.mark.parametrize("client", ["no certificate", "another CA", "plaintext"])
def test_other_clients_are_refused(node, federation, other_federation, client):
    target, servicer = node
    calls = len(servicer.peers)
    ca = (federation / "ca.pem").read_bytes()
    credentials = {
        "no certificate": grpc.ssl_channel_credentials(root_certificates=ca),
        "another CA": grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(other_federation / "civil-affairs-key.pem").read_bytes(),
            certificate_chain=(other_federation / "civil-affairs.pem").read_bytes(),
        ),
        "plaintext": None,
    }[client]
    with pytest.raises(grpc.RpcError) as refused:
        _check(target, credentials)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(servicer.peers) == calls  # the servicer never ran


def test_client_refuses_a_node_of_another_federation(node, other_federation):
    target, _ = node
    with pytest.raises(grpc.RpcError) as refused:
        _check(target, channel_credentials(TlsFiles.in_dir(other_federation, "civil-affairs")))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_missing_tls_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read TLS file"):
        channel_credentials(TlsFiles.in_dir(tmp_path, "civil-affairs"))


def _psi(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", "certs", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_init_and_issue(tmp_path):
    out = tmp_path / "fed"
    init = ["init", "--out", str(out), "--nodes", "prison,police,court,health,disability"]
    done = _psi(*init, "--clients", "civil-affairs", "--days", "30")
    assert done.returncode == 0, done.stderr
    assert "civil-affairs" in done.stdout and "sha256:" in done.stdout
    assert stat.S_IMODE(os.stat(out / "ca-key.pem").st_mode) == 0o600

    again = _psi(*init)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"psi certs: error: {out} already has ca.pem, ca-key.pem, prison.pem, prison-key.pem, "
        "police.pem, police-key.pem, court.pem, court-key.pem, health.pem, health-key.pem, "
        "disability.pem, disability-key.pem; pass --force to replace them"
    ]

    added = _psi("issue", "--ca", str(out), "--name", "education", "--role", "client")
    assert added.returncode == 0, added.stderr
    assert subject_cn((out / "education.pem").read_bytes()) == "education"
