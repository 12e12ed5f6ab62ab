"""Catalogue requests and disputes (POLICY.md mechanisms 4 and 5), the node's end:
``AccountabilityServicer``, mixed into ``nodes.department.node.DepartmentNode``, answers
``RequestAccess``, ``ListAccessRequests``, ``RaiseDispute`` and ``ListDisputes`` from the node's
``nodes.department.registry.Registry``."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from nodes.department.registry import (
    AccessRecord,
    Conflict,
    DisputeRecord,
    NotFound,
    Registry,
)
from nodes.shared.accountability import (
    DISPUTE_PREFIX,
    REQUEST_PREFIX,
    check_fields,
    check_purposes,
    check_text,
)
from nodes.shared.config import Grant, NodeConfig
from nodes.shared.tls import Peer
from protocols.bounds import MAX_REF
from protocols.kinlink.v1 import psi_pb2
from psi.errors import InputError
from psi.labels import HANDLE_BYTES


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
        status=psi_pb2.RequestStatus.Value(REQUEST_PREFIX + record.status.upper()),
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
        status=psi_pb2.DisputeStatus.Value(DISPUTE_PREFIX + record.status.upper()),
        raised_at=_stamp(record.raised_at),
        resolved_at=_stamp(record.resolved_at),
        resolution_note=record.note,
    )


# -- node side -----------------------------------------------------------------------------------
class AccountabilityServicer:
    """The RPCs of mechanisms 4 and 5, for ``DepartmentNode`` to inherit. Needs ``config``,
    ``registry``, ``_peer(context)``, ``_bounded`` and ``_grant_for`` from it
    (``nodes.department.service``); every answer is the calling client's own."""

    config: NodeConfig
    registry: Registry
    _peer: Callable[[grpc.ServicerContext], Peer]
    _bounded: Callable[[grpc.ServicerContext, Peer, object], None]
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
        self._bounded(context, peer, request)
        self._known_dataset(context, request.dataset_id)
        try:
            purposes = check_purposes(request.purposes)
            fields = check_fields(request.label_fields)
            legal_basis_ref = check_text("legal_basis_ref", request.legal_basis_ref, MAX_REF)
            justification = check_text("justification", request.justification)
        except InputError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        problem = self.config.datasets[request.dataset_id].unservable(purposes)
        if problem:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, problem)
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
        self._bounded(context, peer, request)
        try:
            records = self.registry.requests(peer.common_name, list(request.request_ids))
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return psi_pb2.AccessRequestList(requests=[request_message(r) for r in records])

    def RaiseDispute(
        self, request: psi_pb2.DisputeRequest, context: grpc.ServicerContext
    ) -> psi_pb2.Dispute:
        peer = self._peer(context)
        self._bounded(context, peer, request)
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
        self._bounded(context, peer, request)
        try:
            records = self.registry.disputes(peer.common_name, list(request.dispute_ids))
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return psi_pb2.DisputeList(disputes=[dispute_message(d) for d in records])
