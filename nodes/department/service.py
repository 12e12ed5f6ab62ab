"""What every query service of a node checks and records, whatever it computes: the caller's
certificate, every field of the request within its bound (``protocols.bounds``: sizes, and text
that must not carry an identifier), its grant and purpose on the dataset, the protocol version,
the budgets, and the session it names; refusals and events go to the audit
log with counts and names only.

The labelled-PSI service (``nodes.department.node.DepartmentNode``) and the statistics service
(``nodes.department.statistics.StatisticsServicer``) inherit it, so both refuse alike, charge the
same budgets and write the same log.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from nodes.department.budgets import BudgetExceeded, Budgets
from nodes.department.build import server_key
from nodes.department.state import SESSION_SECONDS, NodeState
from nodes.shared.accountability import request_hint
from nodes.shared.audit.log import AuditLog
from nodes.shared.config import STATISTICS_PURPOSE, Grant, NodeConfig
from nodes.shared.tls import Peer, peer_identity
from protocols.bounds import violation
from protocols.limits import SUPPORTED_PROTOCOL_VERSIONS
from psi.errors import InputError, KinlinkError
from psi.keys import KeyRingError
from psi.labels import profile_name
from psi.oprf import KeyPair, cpu_count

if TYPE_CHECKING:
    from nodes.department.metrics import NodeMetrics


log = logging.getLogger("kinlink.node")


class _Owned(Protocol):
    client: Peer
    expires: float


S = TypeVar("S", bound=_Owned)
T = TypeVar("T")


Problem = tuple[grpc.StatusCode, str]


def bounds_problem(message) -> Problem | None:
    """A field of a request past its bound (``protocols.bounds``), as a refusal, or None."""
    found = violation(message)
    if found is None:
        return None
    code = (
        grpc.StatusCode.RESOURCE_EXHAUSTED if found.exhausted else grpc.StatusCode.INVALID_ARGUMENT
    )
    return code, f"request refused: {found}"


def chunk_problem(
    session_id: str, chunk, expected: int, *, width: int, per_chunk: int, done: int, declared: int
) -> Problem | None:
    """Why a chunk of elements (``session_id``, ``sequence``, ``count``, ``elements``) breaks a
    session's contract, or None: a field past its bound, another session, out of order, too many
    elements, bytes that are not ``count`` elements of ``width``, or more than the session
    declared."""
    bounds = bounds_problem(chunk)
    if bounds:
        return bounds
    if chunk.session_id and chunk.session_id != session_id:
        return grpc.StatusCode.INVALID_ARGUMENT, "a stream serves one session"
    if chunk.sequence != expected:
        return (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"chunk sequence {chunk.sequence} out of order; expected {expected}",
        )
    if chunk.count > per_chunk:
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"chunk of {chunk.count} elements; at most {per_chunk}",
        )
    if len(chunk.elements) != chunk.count * width:
        return (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"chunk {chunk.sequence}: {len(chunk.elements)} bytes for {chunk.count} "
            f"elements of {width} bytes",
        )
    if done + chunk.count > declared:
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the session declared {declared} elements; {done + chunk.count} sent",
        )
    return None


def outcome(problem: Problem | None) -> dict:
    """How a call ended, for its log entry."""
    if problem is None:
        return {"outcome": "ok"}
    return {"outcome": problem[0].name.lower(), "reason": problem[1]}


def peer_field(peer: Peer) -> dict:
    return {"cn": peer.common_name, "fingerprint": peer.fingerprint}


def timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class NodeService(Generic[S]):
    """Checks shared by a node's services; ``S`` is the service's session type."""

    metrics: NodeMetrics | None = None  # set by start_node where metrics are served

    def __init__(self, config: NodeConfig, state: NodeState, budgets: Budgets, audit: AuditLog):
        self.config, self.state, self.budgets, self.audit = config, state, budgets, audit
        self.registry = state.registry
        self._sessions: dict[str, S] = {}
        self._lock = threading.Lock()
        self._cores = asyncio.Semaphore(cpu_count())

    async def _compute(self, work: Callable[..., T], *args) -> T:
        """``work(*args)`` in the server's thread pool, as many at once as there are cores: a
        stream's computation never holds the event loop, and a stopping node waits for little."""
        async with self._cores:
            return await asyncio.get_running_loop().run_in_executor(None, work, *args)

    def _peer(self, context: grpc.ServicerContext) -> Peer:
        peer = peer_identity(context)
        if peer is None:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "a federation client certificate is required"
            )
        return peer

    def _record(self, event: dict) -> None:
        """Append to the audit log (counts and names only), under a head signed with it, so a
        live node's log never ends in entries no signature covers; mirror a line to the node
        log."""
        self.audit.append(event, sign=True)
        if self.metrics is not None:
            self.metrics.observe(event)
        counts = " ".join(f"{k}={v}" for k, v in event.items() if isinstance(v, int))
        log.info(
            "%s client=%s dataset=%s %s",
            event["event"],
            event.get("peer", {}).get("cn"),
            event.get("dataset", "-"),
            counts,
        )

    def _refuse(self, context, code: grpc.StatusCode, message: str, event: dict) -> None:
        """Log a refusal with its reason, then end the call with ``code``."""
        self._record(
            {**event, "event": "session_refused", "outcome": code.name.lower(), "reason": message}
        )
        context.abort(code, message)

    def _bounded(self, context, peer: Peer, request) -> None:
        """Refuse a request with a field past its bound (``protocols.bounds``) before anything of
        it is stored or computed; the refusal is logged, naming the field but not its value."""
        problem = bounds_problem(request)
        if problem:
            event = {"peer": peer_field(peer), "detail": request.DESCRIPTOR.name}
            self._refuse(context, *problem, event)

    @staticmethod
    def _event(peer: Peer, **text: str) -> dict:
        """The caller's text fields, held to their bounds by ``_bounded`` already (no identity
        number, printable, short), as the base of the call's audit events."""
        return {"peer": peer_field(peer), **{k: v for k, v in text.items() if v}}

    def _grant_for(self, client: str, dataset: str) -> Grant | None:
        """The grant in force: node.toml's, or a later approval (nodes.department.registry)."""
        return self.registry.grant(self.config, client, dataset)

    def _grant(
        self,
        context,
        peer: Peer,
        dataset: str,
        purpose: str,
        event: dict,
        protocol: str | None = None,
    ) -> Grant:
        """The client's grant on ``dataset`` for ``purpose``. A statistics ``protocol`` must be
        one the dataset offers (checked before the purpose, so that a dataset serving none does
        not invite a request it could never serve), under a purpose it reserves for statistics;
        a labelled query (``protocol`` None) may not use such a purpose, nor ``statistics`` on
        any dataset, so that a client granted statistics never receives a match."""
        if dataset not in self.config.datasets:
            self._refuse(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"node {self.config.id!r} has no dataset {dataset!r}; "
                "see GetCatalogue for what it serves",
                event,
            )
        grant = self._grant_for(peer.common_name, dataset)
        if grant is None:
            self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"client {peer.common_name!r} is not granted dataset {dataset!r} on "
                f"node {self.config.id!r}; {request_hint(self.config.id, dataset, purpose)}",
                event,
            )
        policy = self.config.datasets[dataset].statistics
        if protocol is not None and protocol not in policy.protocols:
            offered = ", ".join(policy.protocols) or "none"
            self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"dataset {dataset!r} on node {self.config.id!r} does not allow the statistics "
                f"protocol {protocol!r}; it allows: {offered}",
                event,
            )
        if purpose not in grant.purposes:
            self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"purpose {purpose!r} is not granted to {peer.common_name!r} on dataset "
                f"{dataset!r}; granted: {', '.join(grant.purposes)}; "
                + request_hint(self.config.id, dataset, purpose),
                event,
            )
        reserved = policy.purposes if policy.protocols else ()
        if protocol is None and (purpose in reserved or purpose == STATISTICS_PURPOSE):
            self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"purpose {purpose!r} is for statistics only on dataset {dataset!r} "
                "(psi stats); a labelled query needs another purpose",
                event,
            )
        if protocol is not None and purpose not in reserved:
            self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"purpose {purpose!r} is not a statistics purpose on dataset {dataset!r}; "
                f"statistics purposes: {', '.join(reserved)}; "
                + request_hint(self.config.id, dataset, reserved[0]),
                event,
            )
        return grant

    def _profile(self, context, grant: Grant, planned: Sequence[str], event: dict) -> None:
        """Refuse a client that planned with other label fields than its grant's (the grant
        changed since it read the catalogue): what it caches per field profile would be filed
        under the wrong one. The client's text is not echoed: it could carry anything."""
        if planned and frozenset(planned) != grant.fields:
            self._refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the grant's label fields are now {profile_name(grant.fields)}, not those "
                "the request names; read the catalogue again and query afresh",
                event,
            )

    def _version(self, context, version: int, event: dict) -> None:
        if version not in SUPPORTED_PROTOCOL_VERSIONS:
            self._refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version {version} is not spoken here; node "
                f"speaks {', '.join(map(str, SUPPORTED_PROTOCOL_VERSIONS))}",
                event,
            )

    def _epoch(
        self, context, dataset: str, asked: int, grant: Grant, event: dict
    ) -> tuple[int, KeyPair]:
        """The epoch asked for (0: the current one) and the OPRF key of the grant's field
        profile in it: a client is only ever evaluated under its own profile's key."""
        try:
            ring = self.state.keyring()
            epoch = asked or ring.current(dataset)[0]
            return epoch, server_key(self.state.oprf, ring, dataset, epoch, grant.fields)
        except KeyRingError as exc:
            self._refuse(context, grpc.StatusCode.NOT_FOUND, str(exc), event)
        except InputError as exc:
            self._refuse(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"dataset {dataset!r} is not built: {exc}",
                event,
            )

    def _table_epoch(self, context, dataset: str, asked: int, grant: Grant, event: dict) -> int:
        """The epoch whose table is asked for: one retired less than a session's lifetime ago
        (a session opened under it may still need its table, though nothing is evaluated under
        it any more), else what ``_epoch`` allows."""
        try:
            retired = self.state.keyring().retired_at(dataset, asked) if asked else None
        except KinlinkError:
            retired = None  # refused below, with _epoch's reason
        if retired is not None and time.time() - retired.timestamp() < SESSION_SECONDS:
            return asked
        return self._epoch(context, dataset, asked, grant, event)[0]

    def _charge(
        self, context, peer: Peer, dataset: str, epoch: int, count: int, grant: Grant, event: dict
    ) -> None:
        """Charge ``count`` elements against the client's budgets on the dataset, durably,
        before anything is computed for them; or refuse."""
        try:
            self.budgets.charge(peer.common_name, dataset, epoch, count, grant.limits)
        except BudgetExceeded as exc:
            self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), event)

    def _may_stream(self, context, peer: Peer) -> None:
        """Before a stream waits for its first message: its caller must hold a grant on this
        node and a session of this service, or it is refused at once (and logged)."""
        event = {"peer": peer_field(peer)}
        if not any(self._grant_for(peer.common_name, d) for d in self.config.datasets):
            self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"client {peer.common_name!r} holds no grant on node {self.config.id!r}; "
                "see GetCatalogue, and psi catalog request to ask for one",
                event,
            )
        now = time.time()
        with self._lock:
            held = any(
                s.client.common_name == peer.common_name and s.expires > now
                for s in self._sessions.values()
            )
        if not held:
            self._refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "no open session for this client: open one before streaming",
                event,
            )

    def _admit_session(self, context, peer: Peer, event: dict) -> None:
        """Refuse a session beyond the client's bound (``[serve] sessions_per_client``);
        expired sessions are dropped first."""
        limit, now = self.config.serve.sessions_per_client, time.time()
        with self._lock:
            for stale in [k for k, s in self._sessions.items() if s.expires <= now]:
                del self._sessions[stale]
            held = sum(s.client.common_name == peer.common_name for s in self._sessions.values())
        if held >= limit:
            self._refuse(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"client {peer.common_name!r} has {limit} sessions open on node "
                f"{self.config.id!r}, the most it may ([serve] sessions_per_client); close one "
                f"or let one expire (after {SESSION_SECONDS // 60} minutes)",
                event,
            )

    def _session(self, context, session_id: str, peer: Peer) -> S:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None or session.client.fingerprint != peer.fingerprint:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such open session for this client")
        if time.time() > session.expires:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "the session expired; open a new one"
            )
        return session
