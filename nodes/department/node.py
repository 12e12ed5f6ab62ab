"""The department node: a gRPC server answering labelled-PSI queries over mutual TLS.

Every call is tied to the caller's verified certificate name. A session is opened for one dataset,
purpose and element count; the count is charged against the client's budgets before anything is
evaluated, and the node then evaluates at most that many elements. A session whose stream broke
(the client crashed) can be resumed by its client until it expires: nothing is charged again, and
it evaluates only what it declared and has not had answered, so a rerun after a crash costs the
budget nothing more. A chunk counts as evaluated once its answer is handed to gRPC; one whose
client went away before that is not counted. The node logs events with counts only: it never
writes a query element, blinded or not, anywhere. The checks are shared with the statistics
service (``nodes.department.service``); ``nodes.department.server`` serves both.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np

from nodes.department.accountability import AccountabilityServicer
from nodes.department.admission import Aborted
from nodes.department.service import (
    SESSION_SECONDS,
    NodeService,
    Problem,
    chunk_problem,
    outcome,
    peer_field,
    timestamp,
)
from nodes.department.state import Served
from nodes.department.statistics import statistics_offer
from nodes.shared.atrest import DamagedFile
from nodes.shared.audit.receipts import receipt_fields, sign_receipt, tree_head_message
from nodes.shared.tls import Peer
from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc
from protocols.limits import (
    ELEMENTS_PER_CHUNK,
    MAX_MESSAGE_BYTES,
    SUPPORTED_PROTOCOL_VERSIONS,
    TABLE_CHUNK_BYTES,
)
from psi.errors import CryptoError, InputError
from psi.oprf import KeyPair
from psi.table import FORMAT as TABLE_FORMAT
from psi.table import Delta

EVALUATE_STEP = 8192  # rows per task: what a stopping node may still finish per core
SERVICE = psi_pb2.DESCRIPTOR.services_by_name["DepartmentNode"].full_name
# How long a resume waits for the broken stream it takes over to end (the node notices a client
# gone at its next read or answer: well under a second, a chunk's evaluation at most).
RESUME_WAIT_SECONDS = 10.0
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{32}")  # secrets.token_urlsafe(24)
_GONE = "the client went away; a chunk whose answer was not sent is not counted"

log = logging.getLogger("kinlink.node")


@dataclass
class _Session:
    id: str
    client: Peer
    dataset: str
    purpose: str
    legal_basis_ref: str
    epoch: int
    table_version: int
    key: KeyPair = field(repr=False)
    declared: int
    opened: float
    expires: float
    evaluated: int = 0
    chunks: int = 0
    streaming: bool = False  # a stream holds the session: one at a time
    # Guards the counts and ``streaming``; a resume waits on it for a broken stream to end.
    lock: threading.Condition = field(default_factory=threading.Condition, repr=False)
    transcript: hashlib._Hash = field(default_factory=hashlib.sha256, repr=False)

    def answer(self, protocol_version: int, suite: str) -> psi_pb2.Session:
        return psi_pb2.Session(
            session_id=self.id,
            dataset_id=self.dataset,
            key_epoch=self.epoch,
            suite=suite,
            table_version=self.table_version,
            max_elements_per_chunk=ELEMENTS_PER_CHUNK,
            max_message_bytes=MAX_MESSAGE_BYTES,
            expires_at=timestamp(self.expires),
            protocol_version=protocol_version,
            element_count=self.declared,
            elements_evaluated=self.evaluated,
            chunks_evaluated=self.chunks,
        )


class DepartmentNode(
    NodeService[_Session], AccountabilityServicer, psi_pb2_grpc.DepartmentNodeServicer
):
    # -- the service ----------------------------------------------------------------------------
    def GetCatalogue(self, request, context):
        peer = self._peer(context)
        self._bounded(context, peer, request)
        datasets = []
        for dataset in self.config.datasets.values():
            grant = self._grant_for(peer.common_name, dataset.id)
            if grant is None or (request.dataset_ids and dataset.id not in request.dataset_ids):
                continue
            try:
                epoch = self.state.keyring().current(dataset.id)[0]
            except InputError:
                epoch = 0
            version = self.state.latest(dataset.id, epoch, grant.fields) if epoch else 0
            size = 0
            if version:
                try:
                    size = self.state.table(
                        dataset.id, epoch, grant.fields, version
                    ).stored.header.count
                except DamagedFile as error:  # FetchTable refuses it; the catalogue still lists
                    log.error("%s", error)
            datasets.append(
                psi_pb2.Dataset(
                    dataset_id=dataset.id,
                    title=dataset.title,
                    status_codes=dataset.statuses,
                    label_fields=sorted(grant.fields),
                    legal_basis=dataset.legal_basis,
                    update_frequency=dataset.update_frequency,
                    responsible_unit=dataset.responsible_unit,
                    key_epoch=epoch,
                    table_version=version,
                    table_size=size,
                    allowed_purposes=grant.purposes,
                    suites=[self.state.oprf.suite.name],
                    statistics=statistics_offer(dataset.statistics, grant),
                )
            )
        return psi_pb2.Catalogue(
            node_id=self.config.id,
            protocol_versions=SUPPORTED_PROTOCOL_VERSIONS,
            datasets=datasets,
            catalogue_version=self.registry.catalogue_version(),
            audit_public_key=self.audit.public_key_pem,
        )

    def OpenSession(self, request, context):
        peer = self._peer(context)
        self._bounded(context, peer, request)
        event = self._event(
            peer,
            dataset=request.dataset_id,
            purpose=request.purpose_code,
            legal_basis_ref=request.legal_basis_ref,
        )
        event["declared"] = request.element_count
        grant = self._grant(context, peer, request.dataset_id, request.purpose_code, event)
        self._profile(context, grant, request.label_fields, event)
        self._admit_session(context, peer, event)
        self._version(context, request.protocol_version, event)
        if request.resume_session_id:
            return self._resume(context, peer, request, event)
        if request.suite != self.state.oprf.suite.name:
            self._refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"ciphersuite {request.suite!r} is not offered; offered: "
                f"{self.state.oprf.suite.name}",
                event,
            )
        if request.element_count < 1:
            self._refuse(
                context, grpc.StatusCode.INVALID_ARGUMENT, "element_count must be at least 1", event
            )
        epoch, key = self._epoch(context, request.dataset_id, request.key_epoch, grant, event)
        event["key_epoch"] = epoch
        version = self.state.latest(request.dataset_id, epoch, grant.fields)
        self._charge(context, peer, request.dataset_id, epoch, request.element_count, grant, event)
        now = time.time()
        session = _Session(
            secrets.token_urlsafe(24),
            peer,
            request.dataset_id,
            request.purpose_code,
            request.legal_basis_ref,
            epoch,
            version,
            key,
            request.element_count,
            now,
            now + SESSION_SECONDS,
        )
        with self._lock:
            for stale in [s for s in self._sessions.values() if s.expires < now]:
                del self._sessions[stale.id]  # charged in full; nothing left to resume
            self._sessions[session.id] = session
        limit = {"limit": grant.limits.per_session} if grant.limits.per_session else {}
        self._record(
            {
                **event,
                **limit,
                "event": "session_opened",
                "session_id": session.id,
                "table_version": version,
            }
        )
        return session.answer(request.protocol_version, self.state.oprf.suite.name)

    def _resume(self, context, peer: Peer, request, event: dict) -> psi_pb2.Session:
        """Take up a session of this client that is open and unexpired, as it was opened: the
        grant is checked again, nothing is charged, and a stream that is still ending (its
        client gone) is waited for, so that the counts are final."""
        if not _SESSION_ID.fullmatch(request.resume_session_id):
            # bounded already (protocols.bounds); named in the log only if it is a session id
            self._refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "resume_session_id is not a session id of this node",
                event,
            )
        # A refusal names the session in ``detail``: only a resume that succeeds joins its entries.
        event["detail"] = f"resume of session {request.resume_session_id}"
        with self._lock:
            session = self._sessions.get(request.resume_session_id)
        if session is None or session.client.fingerprint != peer.fingerprint:
            self._refuse(
                context,
                grpc.StatusCode.NOT_FOUND,
                "no open session of this client to resume (closed, or never opened here; a "
                "node restart ends its sessions); open a new one",
                event,
            )
        if time.time() > session.expires:
            self._refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the session expired at {timestamp(session.expires).ToJsonString()}; "
                "open a new one",
                event,
            )
        differing = [
            name
            for name, asked, held in (
                ("dataset_id", request.dataset_id, session.dataset),
                ("purpose_code", request.purpose_code, session.purpose),
                ("legal_basis_ref", request.legal_basis_ref, session.legal_basis_ref),
                ("element_count", request.element_count, session.declared),
                ("suite", request.suite, self.state.oprf.suite.name),
                ("key_epoch", request.key_epoch or session.epoch, session.epoch),
            )
            if asked != held
        ]
        if differing:
            self._refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a session is resumed as it was opened; {', '.join(differing)} differ",
                event,
            )
        with session.lock:
            if not session.lock.wait_for(lambda: not session.streaming, RESUME_WAIT_SECONDS):
                problem = "the session's stream is still open; a session has one at a time"
            else:
                problem = None
                answer = session.answer(request.protocol_version, self.state.oprf.suite.name)
        if problem:
            self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, problem, event)
        del event["detail"]
        self._record(
            {
                **event,
                "event": "session_resumed",
                "session_id": session.id,
                "key_epoch": session.epoch,
                "table_version": session.table_version,
                "evaluated": answer.elements_evaluated,
                "chunks": answer.chunks_evaluated,
            }
        )
        return answer

    async def Evaluate(
        self, requests: AsyncIterator[psi_pb2.EvaluateChunk], context
    ) -> AsyncIterator[psi_pb2.EvaluatedChunk]:
        peer = self._peer(context)
        self._may_stream(context, peer)
        session: _Session | None = None
        held = False  # whether this stream holds the session
        problem: tuple[grpc.StatusCode, str] | None = None
        try:
            async for chunk in requests:
                if session is None:
                    session = self._session(context, chunk.session_id, peer)
                with session.lock:  # check, hold and count under one lock: streams may race
                    if not held and session.streaming:
                        problem = (
                            grpc.StatusCode.FAILED_PRECONDITION,
                            "the session is being evaluated by another stream",
                        )
                        break
                    session.streaming = held = True
                    problem = self._chunk_problem(session, chunk)
                    if problem:
                        break
                    session.evaluated += chunk.count
                    session.chunks += 1
                blinded = np.frombuffer(chunk.elements, dtype=np.uint8).reshape(
                    -1, self.state.oprf.suite.element_size
                )
                try:
                    evaluated = await self._evaluate(session.key, blinded)
                except CryptoError as exc:
                    problem = (
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"chunk {chunk.sequence}: {exc}; nothing in it was evaluated",
                    )
                if problem is None and not context.is_active():
                    problem = (grpc.StatusCode.CANCELLED, _GONE)
                if problem:  # no answer leaves the node: the chunk is not counted
                    with session.lock:
                        session.evaluated -= chunk.count
                        session.chunks -= 1
                    break
                answer = evaluated.tobytes()
                with session.lock:
                    session.transcript.update(
                        chunk.sequence.to_bytes(8, "big") + chunk.elements + answer
                    )
                yield psi_pb2.EvaluatedChunk(
                    sequence=chunk.sequence, count=chunk.count, elements=answer
                )
        except Aborted as exc:  # a deadline passed (nodes.department.admission)
            problem = exc.problem
            raise
        except (GeneratorExit, asyncio.CancelledError):  # the client went away mid-stream
            problem = (grpc.StatusCode.CANCELLED, _GONE)
            raise
        finally:
            if held:
                with session.lock:
                    session.streaming = False
                    session.lock.notify_all()
            if session is not None:
                self._record(
                    {
                        "event": "elements_evaluated",
                        "peer": peer_field(peer),
                        "session_id": session.id,
                        "dataset": session.dataset,
                        "evaluated": session.evaluated,
                        "chunks": session.chunks,
                        **outcome(problem),
                    }
                )
        if problem:
            context.abort(*problem)

    async def _evaluate(self, key: KeyPair, blinded: np.ndarray) -> np.ndarray:
        """k·B for each blinded element, ``EVALUATE_STEP`` rows per task in the thread pool: a
        node that stops cancels a large chunk between steps instead of finishing it."""
        parts = []
        for lo in range(0, len(blinded), EVALUATE_STEP):
            step = blinded[lo : lo + EVALUATE_STEP]
            try:
                parts.append(
                    await self._compute(self.state.oprf.blind_evaluate_batch, key.sk, step)
                )
            except CryptoError as exc:
                raise CryptoError(f"{exc} (counting from row {lo})" if lo else str(exc)) from None
        return np.concatenate(parts)

    def _chunk_problem(self, session: _Session, chunk) -> Problem | None:
        """Why a chunk breaks the session's contract, or None; chunks are numbered across the
        session's streams."""
        return chunk_problem(
            session.id,
            chunk,
            session.chunks,
            width=self.state.oprf.suite.element_size,
            per_chunk=ELEMENTS_PER_CHUNK,
            done=session.evaluated,
            declared=session.declared,
        )

    def FetchTable(self, request, context) -> Iterator[psi_pb2.TableChunk]:
        peer = self._peer(context)
        self._bounded(context, peer, request)
        event = self._event(
            peer,
            dataset=request.dataset_id,
            purpose=request.purpose_code,
            legal_basis_ref=request.legal_basis_ref,
        )
        grant = self._grant(context, peer, request.dataset_id, request.purpose_code, event)
        self._profile(context, grant, request.label_fields, event)
        epoch = self._table_epoch(context, request.dataset_id, request.key_epoch, grant, event)
        latest = self.state.latest(request.dataset_id, epoch, grant.fields)
        if not latest:
            self._refuse(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"dataset {request.dataset_id!r} has no table for epoch {epoch} yet",
                event,
            )
        base = request.since_version
        if base >= latest or base not in self.state.versions(
            request.dataset_id, epoch, grant.fields
        ):
            base = 0 if base < latest else latest
        served = None
        if base != latest:
            base, served = self._served(
                context, request.dataset_id, epoch, grant, base, latest, event
            )
        payload = served.stored if served else None
        size = len(served.body) if served else 0
        digest = served.sha256 if served else hashlib.sha256().digest()
        header = payload.header if payload is not None else None
        yield psi_pb2.TableChunk(
            header=psi_pb2.TableHeader(
                format_version=TABLE_FORMAT,
                dataset_id=request.dataset_id,
                key_epoch=epoch,
                version=latest,
                base_version=base,
                entry_count=(header.added if isinstance(payload, Delta) else header.count)
                if header
                else 0,
                label_size=header.label_size if header else 0,
                total_bytes=size,
                sha256=digest,
                suite=self.state.oprf.suite.name,
            )
        )
        for start in range(0, size, TABLE_CHUNK_BYTES):  # the checked bytes, not the file again
            yield psi_pb2.TableChunk(data=bytes(served.body[start : start + TABLE_CHUNK_BYTES]))
        self._record(
            {
                **event,
                "event": "table_fetched",
                "key_epoch": epoch,
                "table_version": latest,
                "base_version": base,
                "bytes": size,
            }
        )

    def _served(
        self, context, dataset: str, epoch: int, grant, base: int, latest: int, event: dict
    ) -> tuple[int, Served]:
        """The delta from ``base`` (0: none) to ``latest``, else the whole table; a damaged
        delta base costs the client a whole table, a damaged table is refused (the operator's
        log names the file)."""
        if base:
            try:
                return base, self.state.delta(dataset, epoch, grant.fields, base, latest)
            except DamagedFile as error:
                log.error("%s; the whole table is sent instead", error)
        try:
            return 0, self.state.table(dataset, epoch, grant.fields, latest)
        except DamagedFile as error:
            log.error("%s", error)
            self._refuse(
                context,
                grpc.StatusCode.DATA_LOSS,
                f"table version {latest} of {dataset!r} is damaged on the node; it is not "
                "served until the operator builds a new version",
                event,
            )
            raise AssertionError("unreachable") from None

    def CloseSession(self, request, context):
        peer = self._peer(context)
        self._bounded(context, peer, request)
        session = self._session(context, request.session_id, peer)
        with self._lock:
            self._sessions.pop(session.id, None)
        receipt = psi_pb2.SessionReceipt(
            session_id=session.id,
            node_id=self.config.id,
            client_id=peer.common_name,
            dataset_id=session.dataset,
            purpose_code=session.purpose,
            legal_basis_ref=session.legal_basis_ref,
            key_epoch=session.epoch,
            table_version=session.table_version,
            elements_declared=session.declared,
            elements_evaluated=session.evaluated,
            chunks_evaluated=session.chunks,
            opened_at=timestamp(session.opened),
            closed_at=timestamp(time.time()),
            transcript_hash=session.transcript.digest(),
        )
        self._record(
            {
                "event": "receipt_issued",
                **receipt_fields(receipt),
                "peer": peer_field(peer),
                "outcome": "ok",
            }
        )
        sign_receipt(receipt, self.audit, self.audit.sign_tree_head())
        return receipt

    def ProveConsistency(self, request, context):
        """Gossip (RFC 9162 section 8.1.4): any federation peer may check the heads it holds."""
        peer = self._peer(context)
        self._bounded(context, peer, request)
        sizes, to = list(request.from_sizes), request.to_size
        event = {"peer": peer_field(peer), "proofs": len(sizes)}
        if to > self.audit.size:
            self._refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"to_size {to} is beyond the log's {self.audit.size} entries",
                event,
            )
        self._record({**event, "event": "consistency_proved", "outcome": "ok"})
        head, proofs = self.audit.prove(sizes, to)
        return psi_pb2.ConsistencyProofs(
            node_id=self.config.id,
            head=tree_head_message(head) if head else None,
            proofs=[
                psi_pb2.ConsistencyProof(from_size=n, hashes=p)
                for n, p in zip(sizes, proofs, strict=True)
            ],
        )
