"""Why a node could not be reached, in words an officer can act on.

gRPC reports every failure to connect as UNAVAILABLE with a transport detail ("Socket closed",
"CERTIFICATE_VERIFY_FAILED", ...); ``likely_cause`` turns the detail into the probable cause and
which side's file to check. The TLS cases are told apart by who gave up: the client refusing the
node's certificate (this client's CA), or the node closing the handshake (the node's CA does not
trust this client's certificate).
"""

from __future__ import annotations

import grpc

# Seconds within which an unreachable node is reported: attempts with backoff stop once the next
# one would start later than this after the first.
REACH_SECONDS = 4.0

# (detail fragment, cause), first match wins; {address} is filled in.
_CAUSES = (
    (
        "Connection refused",
        "nothing listens at {address}: the node is down, or the address is wrong",
    ),
    (
        "CERTIFICATE_VERIFY_FAILED",
        "TLS: the node's certificate is not signed by the CA this client trusts (tls.ca of the "
        "federation file): another federation's node, or the wrong CA file",
    ),
    (
        "Peer name",
        "TLS: the node's certificate does not name the address dialled "
        "(see docs/operator-guide.md)",
    ),
    ("expired", "TLS: a certificate has expired: renew it (psi certs)"),
    (
        "Socket closed",
        "TLS: the node closed the handshake: its CA likely does not trust this client's "
        "certificate (tls.cert of the federation file is signed by another CA), or what listens "
        "at {address} is not a kinlink node",
    ),
    ("Connection reset", "the node closed the connection: it may be restarting or not kinlink"),
    ("resolv", "the host name of {address} does not resolve: check the address"),
    ("Deadline", "no answer from {address}: the host is down or a firewall drops the connection"),
)


def likely_cause(code: grpc.StatusCode | None, details: str, address: str) -> str | None:
    """The probable cause of a failure to reach ``address``, or None when the node answered."""
    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return None
    for fragment, cause in _CAUSES:
        if fragment.lower() in details.lower():
            return cause.format(address=address)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {address} in time: the host is down or a firewall drops it"
    return f"cannot connect to {address}: {details.split('last error:')[-1].strip()}"
