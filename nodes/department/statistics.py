"""The node's statistics service (``kinlink.v1.Statistics``, stats.proto): PSI-cardinality and
intersection-sums over a dataset's register, by the steps of ``psi.stats``.

It runs on the node's gRPC server beside the labelled service and inherits its checks
(``nodes.department.service``): the same mutual TLS, grants, purposes and budgets, and the same
audit log.
A dataset serves only the protocols its ``[datasets.<id>.statistics]`` table lists, under the
purposes that table reserves for statistics. A session runs its protocol once, over exactly the
number of distinct elements it declared (at least the dataset's ``min_elements``), which was
charged when it opened. The log holds the protocol and the sizes (|X|, |Y|, and |X ∩ Y| where the
node learns it), never an element, identifier, value or ciphertext. docs/statistics.md.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np

from nodes.department.admission import Aborted
from nodes.department.service import (
    SESSION_SECONDS,
    NodeService,
    Problem,
    bounds_problem,
    chunk_problem,
    outcome,
    peer_field,
    timestamp,
)
from nodes.shared.config import Grant, StatisticsPolicy
from nodes.shared.tls import Peer
from protocols.kinlink.v1 import psi_pb2, stats_pb2, stats_pb2_grpc
from protocols.limits import (
    ELEMENTS_PER_CHUNK,
    MAX_MESSAGE_BYTES,
    Reassembler,
    WireError,
    chunk_elements,
    elements_per_chunk,
    unpack,
)
from psi.errors import CryptoError, KinlinkError
from psi.paillier import PublicKey
from psi.stats import (
    CARDINALITY,
    GROUPED_SUM,
    PROTOCOLS,
    Blinder,
    ElementSet,
    SumAccumulator,
    node_set_chunks,
    pair_size,
    require_distinct,
    shuffled,
)

STATISTICS_SERVICE = stats_pb2.DESCRIPTOR.services_by_name["Statistics"].full_name


def statistics_offer(policy: StatisticsPolicy, grant: Grant) -> psi_pb2.StatisticsOffer | None:
    """What the catalogue tells a client about a dataset's statistics: nothing unless the dataset
    offers some and the client holds one of their purposes."""
    purposes = [p for p in grant.purposes if p in policy.purposes]
    if not (policy.protocols and purposes):
        return None
    return psi_pb2.StatisticsOffer(
        protocols=policy.protocols,
        purposes=purposes,
        min_elements=policy.min_elements,
        max_groups=policy.max_groups,
        min_key_bits=policy.min_key_bits,
    )


@dataclass
class _Session:
    id: str
    client: Peer
    dataset: str
    protocol: str
    declared: int
    set_size: int
    expires: float
    blinder: Blinder = field(repr=False)  # b, fresh for this session
    people: list[str] = field(repr=False)  # the node's set; dropped once sent
    public: PublicKey | None = field(default=None, repr=False)
    per_element: int = 0
    groups: int = 0
    node_set_sent: bool = False
    used: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def width(self) -> int:
        """Bytes of one group element."""
        return self.blinder.suite.element_size


class StatisticsServicer(NodeService[_Session], stats_pb2_grpc.StatisticsServicer):
    def OpenStatistics(self, request, context):
        peer = self._peer(context)
        self._bounded(context, peer, request)
        event = self._event(
            peer,
            dataset=request.dataset_id,
            purpose=request.purpose_code,
            legal_basis_ref=request.legal_basis_ref,
            protocol=request.protocol,
        )
        event["declared"] = request.element_count
        if request.protocol not in PROTOCOLS:
            self._refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown statistics protocol; known: {', '.join(PROTOCOLS)}",
                event,
            )
        dataset = request.dataset_id
        grant = self._grant(
            context, peer, dataset, request.purpose_code, event, protocol=request.protocol
        )
        self._version(context, request.protocol_version, event)
        policy = self.config.datasets[dataset].statistics
        if request.element_count < policy.min_elements:
            self._refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a statistics session on {dataset!r} needs at least {policy.min_elements} "
                f"elements; {request.element_count} declared",
                event,
            )
        public = self._paillier(context, request, policy, event)
        epoch, _ = self._epoch(context, dataset, 0, grant, event)  # whose budget is charged
        try:
            people = list(self.state.served_register(dataset).people)
        except KinlinkError as exc:
            self._refuse(
                context, grpc.StatusCode.UNAVAILABLE, f"cannot read {dataset!r}: {exc}", event
            )
        self._admit_session(context, peer, event)
        self._charge(context, peer, dataset, epoch, request.element_count, grant, event)
        now = time.time()
        session = _Session(
            secrets.token_urlsafe(24),
            peer,
            dataset,
            request.protocol,
            request.element_count,
            len(people),
            now + SESSION_SECONDS,
            Blinder(self.state.oprf.suite),
            people,
            public,
            request.ciphertexts_per_element,
            request.groups,
        )
        with self._lock:
            self._sessions[session.id] = session
        limit = {"limit": grant.limits.per_session} if grant.limits.per_session else {}
        groups = {"groups": request.groups} if request.groups else {}
        self._record(
            {
                **event,
                **limit,
                **groups,
                "event": "session_opened",
                "session_id": session.id,
                "key_epoch": epoch,
                "set_size": session.set_size,
            }
        )
        per_pair = (
            pair_size(public, session.per_element, session.width) if public else session.width
        )
        return stats_pb2.StatisticsSession(
            session_id=session.id,
            dataset_id=dataset,
            protocol=session.protocol,
            element_count=session.declared,
            node_set_size=session.set_size,
            max_elements_per_chunk=ELEMENTS_PER_CHUNK,
            max_pairs_per_chunk=elements_per_chunk(per_pair),
            max_message_bytes=MAX_MESSAGE_BYTES,
            expires_at=timestamp(session.expires),
            protocol_version=request.protocol_version,
            key_epoch=epoch,
        )

    def _paillier(
        self, context, request, policy: StatisticsPolicy, event: dict
    ) -> PublicKey | None:
        """The client's Paillier key and layout for a sum; none may come with cardinality."""
        key, per_element, groups = (
            request.paillier_public_key,
            request.ciphertexts_per_element,
            request.groups,
        )
        if request.protocol == CARDINALITY:
            if key or per_element or groups:
                self._refuse(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "cardinality takes no Paillier key, ciphertexts or groups",
                    event,
                )
            return None
        grouped = request.protocol == GROUPED_SUM
        if grouped and not 1 <= groups <= policy.max_groups:
            problem = f"a grouped sum takes 1 to {policy.max_groups} groups; {groups} declared"
        elif not grouped and groups:
            problem = "only a grouped sum takes groups"
        elif not 1 <= per_element <= 2 * max(groups, 1):
            problem = f"{per_element} ciphertexts per element for {max(groups, 1)} groups"
        else:
            try:
                return PublicKey.from_bytes(key, min_bits=policy.min_key_bits)
            except CryptoError as exc:
                problem = str(exc)
        self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, problem, event)

    def _start(self, context, session_id: str, peer: Peer, sums: bool) -> _Session:
        """The session a protocol step names; each session runs its protocol once."""
        session = self._session(context, session_id, peer)
        with session.lock:
            if (session.protocol != CARDINALITY) != sums:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"the session was opened for {session.protocol}",
                )
            if not session.node_set_sent:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION, "fetch the node's set (FetchNodeSet) first"
                )
            if session.used:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "a statistics session computes once; open a new one",
                )
            session.used = True
        return session

    def _finish(self, peer: Peer, session: _Session, problem: Problem | None, counts: dict) -> None:
        """End the session and log what the node computed: sizes only."""
        with self._lock:
            self._sessions.pop(session.id, None)
        self._record(
            {
                "event": "elements_evaluated",
                "peer": peer_field(peer),
                "session_id": session.id,
                "dataset": session.dataset,
                "protocol": session.protocol,
                "set_size": session.set_size,
                **counts,
                **outcome(problem),
            }
        )

    def FetchNodeSet(self, request, context) -> Iterator[stats_pb2.ElementChunk]:
        peer = self._peer(context)
        self._bounded(context, peer, request)
        session = self._session(context, request.session_id, peer)
        with session.lock:
            if session.node_set_sent:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION, "the node's set was sent already"
                )
            session.node_set_sent = True
            people, session.people = session.people, []
        for sequence, block in enumerate(
            node_set_chunks(session.blinder, people, ELEMENTS_PER_CHUNK)
        ):
            yield stats_pb2.ElementChunk(
                sequence=sequence, count=len(block), elements=block.tobytes()
            )

    async def Cardinality(
        self, requests: AsyncIterator[stats_pb2.ElementChunk], context
    ) -> AsyncIterator[stats_pb2.ElementChunk]:
        peer = self._peer(context)
        self._may_stream(context, peer)
        session: _Session | None = None
        problem: Problem | None = None
        parts: list[np.ndarray] = []
        received = 0
        try:
            async for chunk in requests:
                if session is None:
                    session = self._start(context, chunk.session_id, peer, sums=False)
                problem = chunk_problem(
                    session.id,
                    chunk,
                    len(parts),
                    width=session.width,
                    per_chunk=ELEMENTS_PER_CHUNK,
                    done=received,
                    declared=session.declared,
                )
                if problem:
                    break
                elements = unpack(chunk.elements, chunk.count, session.width)
                try:
                    parts.append(await self._compute(session.blinder.blind, elements))
                except CryptoError as exc:
                    problem = _invalid(f"chunk {chunk.sequence}: {exc}; nothing was answered")
                    break
                received += chunk.count
            if session is None:
                problem = _invalid("the stream carried no elements")
            elif problem is None:
                problem = _short(session, received) or await self._compute(_distinct, parts)
        except Aborted as exc:  # a deadline passed (nodes.department.admission)
            problem = exc.problem
            raise
        finally:
            if session is not None:
                self._finish(peer, session, problem, {"evaluated": received})
        if problem:
            context.abort(*problem)
        answer = await self._compute(lambda: shuffled(np.concatenate(parts)))
        for sequence, block in enumerate(chunk_elements(answer)):
            yield stats_pb2.ElementChunk(
                sequence=sequence, count=len(block), elements=block.tobytes()
            )

    async def IntersectionSum(
        self, requests: AsyncIterator[stats_pb2.SumChunk], context
    ) -> stats_pb2.SumResult:
        peer = self._peer(context)
        self._may_stream(context, peer)
        run: _SumRun | None = None
        problem: Problem | None = None
        result: tuple[int, bytes] | None = None
        expected = 0
        try:
            async for chunk in requests:
                if run is None:
                    run = _SumRun(self._start(context, chunk.session_id, peer, sums=True))
                problem = await self._compute(run.add, chunk, expected)
                if problem:
                    break
                expected += 1
            if run is None:
                problem = _invalid("the stream carried nothing")
            elif problem is None:
                problem, result = await self._compute(run.result)
        except Aborted as exc:  # a deadline passed (nodes.department.admission)
            problem = exc.problem
            raise
        finally:
            if run is not None:
                self._finish(peer, run.session, problem, run.counts())
        if problem:
            context.abort(*problem)
        return stats_pb2.SumResult(intersection_size=result[0], sums=result[1])


class _SumRun:
    """One IntersectionSum stream at the node: the node's set as the client returned it, then
    the client's pairs folded into the sums chunk by chunk."""

    def __init__(self, session: _Session):
        self.session = session
        self.node_set = Reassembler(session.set_size, session.width)
        self.sums: SumAccumulator | None = None
        self.intersection: int | None = None  # once the sums are made
        pair = pair_size(session.public, session.per_element, session.width)
        self.per_chunk = elements_per_chunk(pair)

    def counts(self) -> dict[str, int]:
        """For the log: pairs received, groups, and (once known) the intersection size."""
        counts = {"evaluated": self.sums.received if self.sums else 0}
        if self.session.groups:
            counts["groups"] = self.session.groups
        if self.intersection is not None:
            counts["intersection"] = self.intersection
        return counts

    def add(self, chunk, expected: int) -> Problem | None:
        bounds = bounds_problem(chunk)
        if bounds:
            return bounds
        if chunk.session_id and chunk.session_id != self.session.id:
            return _invalid("a stream serves one session")
        if chunk.sequence != expected:
            return _invalid(f"chunk sequence {chunk.sequence} out of order; expected {expected}")
        if chunk.HasField("node_set") and self.sums is None:
            return self._node_set(chunk.node_set)
        if chunk.HasField("pairs"):
            return self._pairs(chunk.sequence, chunk.pairs)
        return _invalid("the node's set comes whole, before any pair")

    def _node_set(self, block) -> Problem | None:
        if block.count > ELEMENTS_PER_CHUNK:
            return _exhausted(f"a block of {block.count} elements; at most {ELEMENTS_PER_CHUNK}")
        try:
            self.node_set.add(block.elements, block.count)
        except WireError as exc:
            return _invalid(f"the node's set: {exc}")
        return None

    def _pairs(self, sequence: int, block) -> Problem | None:
        session = self.session
        if self.sums is None:  # the node's set is complete: match against it from now on
            try:
                returned = ElementSet(self.node_set.result())
            except WireError as exc:
                return _invalid(f"the node's set: {exc}")
            self.sums = SumAccumulator(
                session.blinder, returned, session.public, session.per_element
            )
        if block.count > self.per_chunk:
            return _exhausted(f"a block of {block.count} pairs; at most {self.per_chunk}")
        if self.sums.received + block.count > session.declared:
            return _exhausted(
                f"the session declared {session.declared} elements; "
                f"{self.sums.received + block.count} sent"
            )
        try:
            elements = unpack(block.elements, block.count, session.width)
            self.sums.add(elements, block.ciphertexts)
        except (CryptoError, WireError) as exc:
            return _invalid(f"chunk {sequence}: {exc}; nothing in it was counted")
        return None

    def result(self) -> tuple[Problem | None, tuple[int, bytes] | None]:
        if self.sums is None:
            return _invalid("the stream carried no pairs"), None
        problem = _short(self.session, self.sums.received)
        if problem:
            return problem, None
        try:
            result = self.sums.result()
        except CryptoError as exc:
            return _invalid(str(exc)), None
        self.intersection = result[0]
        return None, result


def _invalid(message: str) -> Problem:
    return grpc.StatusCode.INVALID_ARGUMENT, message


def _exhausted(message: str) -> Problem:
    return grpc.StatusCode.RESOURCE_EXHAUSTED, message


def _distinct(parts: list[np.ndarray]) -> Problem | None:
    try:
        require_distinct(np.concatenate(parts), "the client's set")
    except CryptoError as exc:
        return _invalid(str(exc))
    return None


def _short(session: _Session, received: int) -> Problem | None:
    """A session counts exactly the elements it declared: fewer would let a client shrink its set
    below the minimum after the node checked it."""
    if received == session.declared:
        return None
    return _invalid(f"the session declared {session.declared} elements; {received} sent")
