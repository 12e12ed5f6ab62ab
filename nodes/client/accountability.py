"""Catalogue requests and disputes (POLICY.md mechanisms 4 and 5), the client's end:
``AccountabilityClient`` makes the calls over a ``nodes.client.client.Client``'s channels and keeps
civil affairs' own record of the disputes it raised (``DisputeCases``), which the screening workflow
reads: a record under verification must not stop a person who has shown valid legal proof from
being served as normal."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from nodes.client.client import CALL_TIMEOUT, Client
from nodes.shared.accountability import check_fields, check_purposes, check_text, dispute_status
from nodes.shared.config import FederationConfig
from nodes.shared.store import Store
from protocols.bounds import MAX_REF
from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc
from psi.errors import InputError

UNDER_VERIFICATION = "under_verification"  # open dispute, no legal proof recorded
PROOF_SHOWN = "proof_shown"  # open dispute, the caseworker saw valid legal proof
T = TypeVar("T")


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
            legal_basis_ref=check_text("legal basis reference", legal_basis_ref, MAX_REF),
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
