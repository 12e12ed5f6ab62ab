"""Catalogue requests and disputes (POLICY.md mechanisms 4 and 5), both ends.

Node side: ``AccountabilityServicer``, mixed into ``nodes.node.DepartmentNode``, answers
``RequestAccess``, ``ListAccessRequests``, ``RaiseDispute`` and ``ListDisputes`` from the node's
``nodes.registry.Registry``. Client side: ``AccountabilityClient`` makes those calls over a
``nodes.client.Client``'s channels and keeps civil affairs' own record of the disputes it raised
(``DisputeCases``), which the screening workflow reads: a record under verification must not
stop a person who has shown valid legal proof from being served as normal.

Free text that travels (reasons, justifications, notes) is checked on both ends to hold no
identity number: a dispute names its record by the handle, which only the department resolves.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from nodes.client import CALL_TIMEOUT, Client
from nodes.config import FederationConfig, Grant, NodeConfig
from nodes.registry import AccessRecord, Conflict, DisputeRecord, NotFound, Registry, Store
from nodes.tls import Peer
from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc
from psi.errors import InputError
from psi.ids import contains_identifier
from psi.labels import FIELDS, HANDLE_BYTES

MAX_TEXT = 1000  # characters of one free-text field
MAX_VOLUME = 10**9  # identifiers a month: about every plausible number of a province's adults
UNDER_VERIFICATION = "under_verification"  # open dispute, no legal proof recorded
PROOF_SHOWN = "proof_shown"  # open dispute, the caseworker saw valid legal proof

_CODE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_REQUEST_PREFIX, _DISPUTE_PREFIX = "REQUEST_STATUS_", "DISPUTE_STATUS_"


T = TypeVar("T")


# -- checks shared by both ends ------------------------------------------------------------------
def check_text(name: str, value: str) -> str:
    """Free text as it may travel and be stored: present, within MAX_TEXT and without a long
    digit run (never echoed: it may be exactly the identity number that must not appear)."""
    value = value.strip()
    if not value:
        raise InputError(f"{name} is required")
    if len(value) > MAX_TEXT:
        raise InputError(f"{name} is {len(value)} characters; at most {MAX_TEXT}")
    if contains_identifier(value):
        raise InputError(
            f"{name} seems to hold an identity or card number; leave it out (a dispute names its "
            "record by the handle, which only the department can resolve)"
        )
    return value


def check_purposes(purposes: Iterable[str]) -> tuple[str, ...]:
    """Purpose codes: at least one, each a lowercase word; duplicates dropped, order kept."""
    codes = tuple(dict.fromkeys(p.strip() for p in purposes))
    if not codes:
        raise InputError("name at least one purpose")
    bad = [p for p in codes if not _CODE.fullmatch(p)]
    if bad:
        raise InputError(
            f"{len(bad)} purpose code(s) are not lowercase words of at most 32 characters "
            "(letters, digits, _ and -)"
        )
    return codes


def check_fields(fields: Iterable[str]) -> frozenset[str]:
    """Label fields asked for; "status" is always part of a label."""
    asked = frozenset(f.strip() for f in fields) | {"status"}
    if asked - FIELDS:
        raise InputError(
            f"unknown label field(s) {', '.join(sorted(_code(f) for f in asked - FIELDS))}; "
            f"known: {', '.join(sorted(FIELDS))}"
        )
    return asked


def parse_handle(text: str) -> bytes:
    """A record handle as printed in matches (``record_handle``): hexadecimal."""
    try:
        handle = bytes.fromhex(text.strip())
    except ValueError:
        raise InputError("a record handle is hexadecimal (the record_handle column)") from None
    if len(handle) != HANDLE_BYTES:
        raise InputError(f"a record handle is {HANDLE_BYTES} bytes ({2 * HANDLE_BYTES} hex digits)")
    return handle


def _code(value: str) -> str:
    """Echo a client-supplied code only when it looks like one."""
    return repr(value) if _CODE.fullmatch(value) else "value"


def request_hint(node: str, dataset: str, purpose: str) -> str:
    """How a refused client asks for what it was refused (the lead's `_grant` messages end so)."""
    code = purpose if _CODE.fullmatch(purpose) else "PURPOSE"
    return (
        f"ask for it with `psi catalog request --federation FILE --node {node} --dataset "
        f"{dataset} --purpose {code} --legal-basis REF --reason TEXT`"
    )


# -- wire form of the registry's records ---------------------------------------------------------
def _stamp(seconds: int | None) -> Timestamp | None:
    return None if seconds is None else Timestamp(seconds=seconds)


def request_message(record: AccessRecord) -> psi_pb2.AccessRequestStatus:
    return psi_pb2.AccessRequestStatus(
        request_id=record.id,
        dataset_id=record.dataset,
        purposes=record.purposes,
        label_fields=sorted(record.fields),
        expected_volume=record.volume,
        legal_basis_ref=record.legal_basis_ref,
        justification=record.justification,
        status=psi_pb2.RequestStatus.Value(_REQUEST_PREFIX + record.status.upper()),
        filed_at=_stamp(record.filed_at),
        decided_at=_stamp(record.decided_at),
        decision_note=record.note,
        catalogue_version=record.catalogue_version,
    )


def dispute_message(record: DisputeRecord) -> psi_pb2.Dispute:
    return psi_pb2.Dispute(
        dispute_id=record.id,
        dataset_id=record.dataset,
        record_handle=record.handle,
        reason=record.reason,
        evidence_ref=record.evidence_ref,
        status=psi_pb2.DisputeStatus.Value(_DISPUTE_PREFIX + record.status.upper()),
        raised_at=_stamp(record.raised_at),
        resolved_at=_stamp(record.resolved_at),
        resolution_note=record.note,
    )


def request_status(message: psi_pb2.AccessRequestStatus) -> str:
    """``pending``, ``approved`` or ``rejected``."""
    return psi_pb2.RequestStatus.Name(message.status).removeprefix(_REQUEST_PREFIX).lower()


def dispute_status(message: psi_pb2.Dispute) -> str:
    """``open``, ``confirmed``, ``corrected`` or ``withdrawn``."""
    return psi_pb2.DisputeStatus.Name(message.status).removeprefix(_DISPUTE_PREFIX).lower()


# -- node side -----------------------------------------------------------------------------------
class AccountabilityServicer:
    """The RPCs of mechanisms 4 and 5, for ``DepartmentNode`` to inherit. Needs ``config``,
    ``registry``, ``_peer(context)`` and ``_grant_for`` from it (``nodes.service``); every answer
    is the calling client's own."""

    config: NodeConfig
    registry: Registry
    _peer: Callable[[grpc.ServicerContext], Peer]
    _record: Callable[[dict], None]
    _grant_for: Callable[[str, str], Grant | None]

    def _known_dataset(self, context: grpc.ServicerContext, dataset: str) -> None:
        if dataset not in self.config.datasets:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"node {self.config.id!r} has no dataset {dataset!r}; "
                "see GetCatalogue for what it serves",
            )

    def RequestAccess(
        self, request: psi_pb2.AccessRequest, context: grpc.ServicerContext
    ) -> psi_pb2.AccessRequestStatus:
        peer = self._peer(context)
        self._known_dataset(context, request.dataset_id)
        try:
            purposes = check_purposes(request.purposes)
            fields = check_fields(request.label_fields)
            if request.expected_volume > MAX_VOLUME:
                raise InputError(f"expected_volume is over {MAX_VOLUME} identifiers a month")
            legal_basis_ref = check_text("legal_basis_ref", request.legal_basis_ref)
            justification = check_text("justification", request.justification)
        except InputError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        held = self._grant_for(peer.common_name, request.dataset_id)
        if held and set(purposes) <= set(held.purposes) and fields <= held.fields:
            context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"dataset {request.dataset_id!r} is already granted for those purposes and "
                "fields; see GetCatalogue",
            )
        try:
            record = self.registry.file_request(
                peer.common_name,
                request.dataset_id,
                purposes,
                fields,
                request.expected_volume,
                legal_basis_ref,
                justification,
            )
        except Conflict as exc:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        self._record(
            {
                "event": "catalogue_request",
                "peer": {"cn": peer.common_name},
                "dataset": record.dataset,
                "outcome": "pending",
                "detail": f"request {record.id}",
            }
        )
        return request_message(record)

    def ListAccessRequests(
        self, request: psi_pb2.ListAccessRequestsRequest, context: grpc.ServicerContext
    ) -> psi_pb2.AccessRequestList:
        peer = self._peer(context)
        try:
            records = self.registry.requests(peer.common_name, list(request.request_ids))
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return psi_pb2.AccessRequestList(requests=[request_message(r) for r in records])

    def RaiseDispute(
        self, request: psi_pb2.DisputeRequest, context: grpc.ServicerContext
    ) -> psi_pb2.Dispute:
        peer = self._peer(context)
        self._known_dataset(context, request.dataset_id)
        if self._grant_for(peer.common_name, request.dataset_id) is None:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"client {peer.common_name!r} is not granted dataset {request.dataset_id!r}, so "
                "it holds no record of it to dispute",
            )
        if len(request.record_handle) != HANDLE_BYTES:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"record_handle is {len(request.record_handle)} bytes; a handle is {HANDLE_BYTES}",
            )
        try:
            reason = check_text("reason", request.reason)
            evidence = check_text("evidence_ref", request.evidence_ref)
        except InputError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            record = self.registry.raise_dispute(
                peer.common_name, request.dataset_id, request.record_handle, reason, evidence
            )
        except Conflict as exc:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        self._record(
            {
                "event": "dispute_raised",
                "peer": {"cn": peer.common_name},
                "dataset": record.dataset,
                "outcome": "open",
                "detail": f"dispute {record.id}",
            }
        )
        return dispute_message(record)

    def ListDisputes(
        self, request: psi_pb2.ListDisputesRequest, context: grpc.ServicerContext
    ) -> psi_pb2.DisputeList:
        peer = self._peer(context)
        try:
            records = self.registry.disputes(peer.common_name, list(request.dispute_ids))
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return psi_pb2.DisputeList(disputes=[dispute_message(d) for d in records])


# -- client side ---------------------------------------------------------------------------------
_CASES_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    node TEXT NOT NULL,
    dispute_id INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    handle BLOB NOT NULL,
    reason TEXT NOT NULL,
    evidence_ref TEXT NOT NULL,
    status TEXT NOT NULL,
    raised_at INTEGER NOT NULL,
    resolved_at INTEGER,
    resolution_note TEXT NOT NULL,
    proof_note TEXT,
    proof_at INTEGER,
    PRIMARY KEY (node, dispute_id)
);
CREATE INDEX IF NOT EXISTS cases_handle ON cases (handle);
"""
_CASE_COLUMNS = (
    "node, dispute_id, dataset, handle, reason, evidence_ref, status, raised_at, resolved_at, "
    "resolution_note, proof_note, proof_at"
)


@dataclass(frozen=True)
class Case:
    """A dispute civil affairs raised, as last heard from the node, with the caseworker's note
    of legal proof if one was recorded."""

    node: str
    dispute_id: int
    dataset: str
    handle: bytes
    reason: str
    evidence_ref: str
    status: str  # the node's: open, confirmed, corrected, withdrawn
    raised_at: int
    resolved_at: int | None
    resolution_note: str
    proof_note: str | None
    proof_at: int | None

    @property
    def state(self) -> str:
        """The node's resolution once there is one; while open, UNDER_VERIFICATION, or
        PROOF_SHOWN after the caseworker recorded valid legal proof."""
        if self.status != "open":
            return self.status
        return PROOF_SHOWN if self.proof_at is not None else UNDER_VERIFICATION


class DisputeCases:
    """Civil affairs' own record of its disputes (``disputes.sqlite`` in the federation cache).
    Statuses are as of the last ``AccountabilityClient.disputes`` call (``psi disputes list``);
    reading them needs no node."""

    def __init__(self, path: Path):
        self._store = Store(path, _CASES_SCHEMA)

    @classmethod
    def of(cls, federation: FederationConfig) -> DisputeCases:
        return cls(federation.cache / "disputes.sqlite")

    def record(self, node: str, disputes: Iterable[psi_pb2.Dispute]) -> None:
        """Add disputes as the node describes them, or bring known ones up to date."""
        rows = [
            (
                node,
                d.dispute_id,
                d.dataset_id,
                d.record_handle,
                d.reason,
                d.evidence_ref,
                dispute_status(d),
                d.raised_at.seconds,
                d.resolved_at.seconds if d.HasField("resolved_at") else None,
                d.resolution_note,
            )
            for d in disputes
        ]
        with self._store.transaction() as db:
            db.executemany(
                f"INSERT INTO cases ({_CASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "NULL, NULL) ON CONFLICT (node, dispute_id) DO UPDATE SET status = "
                "excluded.status, resolved_at = excluded.resolved_at, "
                "resolution_note = excluded.resolution_note",
                rows,
            )

    def case(self, node: str, dispute_id: int) -> Case:
        with self._store.connection() as db:
            return self._case(db, node, dispute_id)

    def proof(self, node: str, dispute_id: int, note: str) -> Case:
        """Record that the caseworker saw valid legal proof: the case proceeds as normal while
        the department verifies (POLICY.md 5)."""
        note = check_text("note", note)
        with self._store.transaction() as db:
            case = self._case(db, node, dispute_id)
            if case.status != "open":
                raise InputError(
                    f"dispute {dispute_id} of node {node!r} is already {case.status}; "
                    "nothing is pending"
                )
            db.execute(
                "UPDATE cases SET proof_note = ?, proof_at = ? WHERE node = ? AND dispute_id = ?",
                (note, int(time.time()), node, dispute_id),
            )
            return self._case(db, node, dispute_id)

    def _case(self, db: sqlite3.Connection, node: str, dispute_id: int) -> Case:
        found = self._cases(db, "node = ? AND dispute_id = ?", (node, dispute_id))
        if not found:
            raise InputError(
                f"no dispute {dispute_id} of node {node!r} in the local record; "
                "`psi disputes list` fetches the node's"
            )
        return found[0]

    def cases(self, node: str | None = None) -> list[Case]:
        """Every case, or one node's, oldest first."""
        with self._store.connection() as db:
            return self._cases(db, "node = ?", (node,)) if node else self._cases(db)

    @staticmethod
    def _cases(
        db: sqlite3.Connection, where: str = "", values: Sequence[object] = ()
    ) -> list[Case]:
        condition = f" WHERE {where}" if where else ""
        rows = db.execute(
            f"SELECT {_CASE_COLUMNS} FROM cases{condition} ORDER BY raised_at, rowid", values
        )
        return [Case(*row) for row in rows]

    def disputes_for(self, handles: Iterable[bytes]) -> dict[bytes, str]:
        """For each handle civil affairs disputed, the ``Case.state`` of its latest dispute:
        ``under_verification``, ``proof_shown``, ``confirmed``, ``corrected`` or ``withdrawn``.
        Handles never disputed are absent."""
        asked = list(dict.fromkeys(handles))
        states: dict[bytes, str] = {}
        with self._store.connection() as db:
            for lo in range(0, len(asked), 500):
                part = asked[lo : lo + 500]
                marks = ",".join("?" * len(part))
                states.update(
                    (c.handle, c.state) for c in self._cases(db, f"handle IN ({marks})", part)
                )
        return states

    def is_proceeding(self, handle: bytes) -> bool:
        """Whether a case resting on this record goes on as normal: yes unless the record is
        under verification with no legal proof recorded. A case that is not proceeding goes to a
        caseworker, who must still serve a person with valid legal proof (``proof``): a pending
        check never refuses anyone."""
        return self.disputes_for([handle]).get(handle) != UNDER_VERIFICATION


class AccountabilityClient:
    """A client's catalogue requests and disputes, over ``client``'s channels and retries (the
    node refuses duplicates, so a retried call never files twice)."""

    def __init__(self, client: Client):
        self.client = client
        self.cases = DisputeCases.of(client.config)

    def _rpc(self, node: str, call: Callable[[psi_pb2_grpc.DepartmentNodeStub], T]) -> T:
        stub = psi_pb2_grpc.DepartmentNodeStub(self.client.channel(node))
        return self.client.call(node, lambda: call(stub))

    def request_access(
        self,
        node: str,
        dataset: str,
        purposes: Sequence[str],
        *,
        fields: Iterable[str] = (),
        volume: int = 0,
        legal_basis_ref: str,
        justification: str,
    ) -> psi_pb2.AccessRequestStatus:
        """File a request for access outside the catalogue; it is pending until the operator
        decides (see ``access_requests``)."""
        message = psi_pb2.AccessRequest(
            dataset_id=dataset,
            purposes=check_purposes(purposes),
            label_fields=sorted(check_fields(fields)),
            expected_volume=volume,
            legal_basis_ref=check_text("legal basis reference", legal_basis_ref),
            justification=check_text("justification", justification),
        )
        status = self._rpc(node, lambda s: s.RequestAccess(message, timeout=CALL_TIMEOUT))
        self.client.record(
            node,
            {
                "event": "catalogue_request",
                "dataset": dataset,
                "purpose": ",".join(message.purposes),
                "outcome": "pending",
                "detail": f"request {status.request_id}",
            },
        )
        return status

    def access_requests(
        self, node: str, ids: Sequence[int] = ()
    ) -> list[psi_pb2.AccessRequestStatus]:
        message = psi_pb2.ListAccessRequestsRequest(request_ids=ids)
        reply = self._rpc(node, lambda s: s.ListAccessRequests(message, timeout=CALL_TIMEOUT))
        return list(reply.requests)

    def raise_dispute(
        self, node: str, dataset: str, handle: bytes, *, reason: str, evidence_ref: str
    ) -> psi_pb2.Dispute:
        """Dispute one record of a label; the case is under verification from now on."""
        message = psi_pb2.DisputeRequest(
            dataset_id=dataset,
            record_handle=handle,
            reason=check_text("reason", reason),
            evidence_ref=check_text("evidence reference", evidence_ref),
        )
        dispute = self._rpc(node, lambda s: s.RaiseDispute(message, timeout=CALL_TIMEOUT))
        self.cases.record(node, [dispute])
        self.client.record(
            node,
            {
                "event": "dispute_raised",
                "dataset": dataset,
                "outcome": "open",
                "detail": f"dispute {dispute.dispute_id}",
            },
        )
        return dispute

    def disputes(self, node: str, ids: Sequence[int] = ()) -> list[psi_pb2.Dispute]:
        """The node's account of this client's disputes, also brought into the local record."""
        message = psi_pb2.ListDisputesRequest(dispute_ids=ids)
        reply = self._rpc(node, lambda s: s.ListDisputes(message, timeout=CALL_TIMEOUT))
        self.cases.record(node, reply.disputes)
        return list(reply.disputes)
