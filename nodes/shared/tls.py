"""gRPC credentials for the federation's mutual TLS, and who is on the other end of a call.

A node accepts only clients whose certificate the federation CA signed; a client accepts only a
node whose certificate the same CA signed for the name it dialled (``localhost``, the loopback
addresses or the node's name; to dial a node by another address, set the channel option
``grpc.ssl_target_name_override`` to the node's name). The caller's identity is the common name of
its verified certificate, read from the call's auth context: no interceptor is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from nodes.shared.certs import CA_NAME, cert_path, fingerprint, key_path
from psi.errors import InputError


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one party: the federation CA it trusts, and its own certificate and key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: Path, name: str) -> TlsFiles:
        """The files ``psi certs init`` wrote for ``name`` in a federation directory."""
        return cls(
            cert_path(directory, CA_NAME), cert_path(directory, name), key_path(directory, name)
        )

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) contents; a missing or unreadable file is the user's to fix."""
        contents = []
        for path in (self.ca, self.cert, self.key):
            try:
                contents.append(path.read_bytes())
            except OSError as exc:
                raise InputError(f"cannot read TLS file {path}: {exc.strerror or exc}") from None
        ca, cert, key = contents
        return ca, cert, key


@dataclass(frozen=True)
class Peer:
    """A caller as its verified certificate names it."""

    common_name: str
    fingerprint: str  # SHA-256 of the certificate's DER, lowercase hex


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """A node's credentials: its certificate, and a client certificate demanded on every call."""
    ca, cert, key = files.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """A client's credentials: its certificate, and the federation CA to verify nodes with."""
    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def peer_identity(context: grpc.ServicerContext) -> Peer | None:
    """The caller's verified certificate, or None on a call without one (which a server built
    with ``server_credentials`` never accepts; a servicer answers None with UNAUTHENTICATED)."""
    auth = context.auth_context()
    pems, names = auth.get("x509_pem_cert"), auth.get("x509_common_name")
    if not pems or not names:
        return None
    return Peer(names[0].decode(), fingerprint(pems[0]))
