from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RequestStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUEST_STATUS_UNSPECIFIED: _ClassVar[RequestStatus]
    REQUEST_STATUS_PENDING: _ClassVar[RequestStatus]
    REQUEST_STATUS_APPROVED: _ClassVar[RequestStatus]
    REQUEST_STATUS_REJECTED: _ClassVar[RequestStatus]

class DisputeStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISPUTE_STATUS_UNSPECIFIED: _ClassVar[DisputeStatus]
    DISPUTE_STATUS_OPEN: _ClassVar[DisputeStatus]
    DISPUTE_STATUS_CONFIRMED: _ClassVar[DisputeStatus]
    DISPUTE_STATUS_CORRECTED: _ClassVar[DisputeStatus]
    DISPUTE_STATUS_WITHDRAWN: _ClassVar[DisputeStatus]
REQUEST_STATUS_UNSPECIFIED: RequestStatus
REQUEST_STATUS_PENDING: RequestStatus
REQUEST_STATUS_APPROVED: RequestStatus
REQUEST_STATUS_REJECTED: RequestStatus
DISPUTE_STATUS_UNSPECIFIED: DisputeStatus
DISPUTE_STATUS_OPEN: DisputeStatus
DISPUTE_STATUS_CONFIRMED: DisputeStatus
DISPUTE_STATUS_CORRECTED: DisputeStatus
DISPUTE_STATUS_WITHDRAWN: DisputeStatus

class CatalogueRequest(_message.Message):
    __slots__ = ("dataset_ids",)
    DATASET_IDS_FIELD_NUMBER: _ClassVar[int]
    dataset_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dataset_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Catalogue(_message.Message):
    __slots__ = ("node_id", "protocol_versions", "datasets", "catalogue_version", "audit_public_key")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    CATALOGUE_VERSION_FIELD_NUMBER: _ClassVar[int]
    AUDIT_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    protocol_versions: _containers.RepeatedScalarFieldContainer[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    catalogue_version: int
    audit_public_key: bytes
    def __init__(self, node_id: _Optional[str] = ..., protocol_versions: _Optional[_Iterable[int]] = ..., datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., catalogue_version: _Optional[int] = ..., audit_public_key: _Optional[bytes] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("dataset_id", "title", "status_codes", "label_fields", "legal_basis", "update_frequency", "responsible_unit", "key_epoch", "table_version", "table_size", "allowed_purposes", "suites", "statistics")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELDS_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    RESPONSIBLE_UNIT_FIELD_NUMBER: _ClassVar[int]
    KEY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TABLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_PURPOSES_FIELD_NUMBER: _ClassVar[int]
    SUITES_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    title: str
    status_codes: _containers.RepeatedScalarFieldContainer[str]
    label_fields: _containers.RepeatedScalarFieldContainer[str]
    legal_basis: str
    update_frequency: str
    responsible_unit: str
    key_epoch: int
    table_version: int
    table_size: int
    allowed_purposes: _containers.RepeatedScalarFieldContainer[str]
    suites: _containers.RepeatedScalarFieldContainer[str]
    statistics: StatisticsOffer
    def __init__(self, dataset_id: _Optional[str] = ..., title: _Optional[str] = ..., status_codes: _Optional[_Iterable[str]] = ..., label_fields: _Optional[_Iterable[str]] = ..., legal_basis: _Optional[str] = ..., update_frequency: _Optional[str] = ..., responsible_unit: _Optional[str] = ..., key_epoch: _Optional[int] = ..., table_version: _Optional[int] = ..., table_size: _Optional[int] = ..., allowed_purposes: _Optional[_Iterable[str]] = ..., suites: _Optional[_Iterable[str]] = ..., statistics: _Optional[_Union[StatisticsOffer, _Mapping]] = ...) -> None: ...

class StatisticsOffer(_message.Message):
    __slots__ = ("protocols", "purposes", "min_elements", "max_groups", "min_key_bits")
    PROTOCOLS_FIELD_NUMBER: _ClassVar[int]
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    MIN_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_GROUPS_FIELD_NUMBER: _ClassVar[int]
    MIN_KEY_BITS_FIELD_NUMBER: _ClassVar[int]
    protocols: _containers.RepeatedScalarFieldContainer[str]
    purposes: _containers.RepeatedScalarFieldContainer[str]
    min_elements: int
    max_groups: int
    min_key_bits: int
    def __init__(self, protocols: _Optional[_Iterable[str]] = ..., purposes: _Optional[_Iterable[str]] = ..., min_elements: _Optional[int] = ..., max_groups: _Optional[int] = ..., min_key_bits: _Optional[int] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("dataset_id", "purpose_code", "legal_basis_ref", "element_count", "suite", "key_epoch", "protocol_version", "label_fields", "resume_session_id")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_CODE_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_REF_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    KEY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELDS_FIELD_NUMBER: _ClassVar[int]
    RESUME_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    purpose_code: str
    legal_basis_ref: str
    element_count: int
    suite: str
    key_epoch: int
    protocol_version: int
    label_fields: _containers.RepeatedScalarFieldContainer[str]
    resume_session_id: str
    def __init__(self, dataset_id: _Optional[str] = ..., purpose_code: _Optional[str] = ..., legal_basis_ref: _Optional[str] = ..., element_count: _Optional[int] = ..., suite: _Optional[str] = ..., key_epoch: _Optional[int] = ..., protocol_version: _Optional[int] = ..., label_fields: _Optional[_Iterable[str]] = ..., resume_session_id: _Optional[str] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "dataset_id", "key_epoch", "suite", "table_version", "max_elements_per_chunk", "max_message_bytes", "expires_at", "protocol_version", "element_count", "elements_evaluated", "chunks_evaluated")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_ELEMENTS_PER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_EVALUATED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_EVALUATED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    dataset_id: str
    key_epoch: int
    suite: str
    table_version: int
    max_elements_per_chunk: int
    max_message_bytes: int
    expires_at: _timestamp_pb2.Timestamp
    protocol_version: int
    element_count: int
    elements_evaluated: int
    chunks_evaluated: int
    def __init__(self, session_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., key_epoch: _Optional[int] = ..., suite: _Optional[str] = ..., table_version: _Optional[int] = ..., max_elements_per_chunk: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., protocol_version: _Optional[int] = ..., element_count: _Optional[int] = ..., elements_evaluated: _Optional[int] = ..., chunks_evaluated: _Optional[int] = ...) -> None: ...

class EvaluateChunk(_message.Message):
    __slots__ = ("session_id", "sequence", "count", "elements")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sequence: int
    count: int
    elements: bytes
    def __init__(self, session_id: _Optional[str] = ..., sequence: _Optional[int] = ..., count: _Optional[int] = ..., elements: _Optional[bytes] = ...) -> None: ...

class EvaluatedChunk(_message.Message):
    __slots__ = ("sequence", "count", "elements")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    count: int
    elements: bytes
    def __init__(self, sequence: _Optional[int] = ..., count: _Optional[int] = ..., elements: _Optional[bytes] = ...) -> None: ...

class FetchTableRequest(_message.Message):
    __slots__ = ("dataset_id", "key_epoch", "since_version", "purpose_code", "legal_basis_ref", "label_fields")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SINCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_CODE_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_REF_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELDS_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    key_epoch: int
    since_version: int
    purpose_code: str
    legal_basis_ref: str
    label_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dataset_id: _Optional[str] = ..., key_epoch: _Optional[int] = ..., since_version: _Optional[int] = ..., purpose_code: _Optional[str] = ..., legal_basis_ref: _Optional[str] = ..., label_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class TableChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: TableHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[TableHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class TableHeader(_message.Message):
    __slots__ = ("format_version", "dataset_id", "key_epoch", "version", "base_version", "entry_count", "label_size", "total_bytes", "sha256", "suite")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    LABEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    dataset_id: str
    key_epoch: int
    version: int
    base_version: int
    entry_count: int
    label_size: int
    total_bytes: int
    sha256: bytes
    suite: str
    def __init__(self, format_version: _Optional[int] = ..., dataset_id: _Optional[str] = ..., key_epoch: _Optional[int] = ..., version: _Optional[int] = ..., base_version: _Optional[int] = ..., entry_count: _Optional[int] = ..., label_size: _Optional[int] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ..., suite: _Optional[str] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class SessionReceipt(_message.Message):
    __slots__ = ("session_id", "node_id", "client_id", "dataset_id", "purpose_code", "legal_basis_ref", "key_epoch", "table_version", "elements_declared", "elements_evaluated", "chunks_evaluated", "opened_at", "closed_at", "transcript_hash", "signature", "signature_algorithm", "signing_key_id", "tree_head")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_CODE_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_REF_FIELD_NUMBER: _ClassVar[int]
    KEY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_DECLARED_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_EVALUATED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_EVALUATED_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_HASH_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TREE_HEAD_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    node_id: str
    client_id: str
    dataset_id: str
    purpose_code: str
    legal_basis_ref: str
    key_epoch: int
    table_version: int
    elements_declared: int
    elements_evaluated: int
    chunks_evaluated: int
    opened_at: _timestamp_pb2.Timestamp
    closed_at: _timestamp_pb2.Timestamp
    transcript_hash: bytes
    signature: bytes
    signature_algorithm: str
    signing_key_id: str
    tree_head: TreeHead
    def __init__(self, session_id: _Optional[str] = ..., node_id: _Optional[str] = ..., client_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., purpose_code: _Optional[str] = ..., legal_basis_ref: _Optional[str] = ..., key_epoch: _Optional[int] = ..., table_version: _Optional[int] = ..., elements_declared: _Optional[int] = ..., elements_evaluated: _Optional[int] = ..., chunks_evaluated: _Optional[int] = ..., opened_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., closed_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., transcript_hash: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., signature_algorithm: _Optional[str] = ..., signing_key_id: _Optional[str] = ..., tree_head: _Optional[_Union[TreeHead, _Mapping]] = ...) -> None: ...

class ConsistencyRequest(_message.Message):
    __slots__ = ("from_sizes", "to_size")
    FROM_SIZES_FIELD_NUMBER: _ClassVar[int]
    TO_SIZE_FIELD_NUMBER: _ClassVar[int]
    from_sizes: _containers.RepeatedScalarFieldContainer[int]
    to_size: int
    def __init__(self, from_sizes: _Optional[_Iterable[int]] = ..., to_size: _Optional[int] = ...) -> None: ...

class ConsistencyProof(_message.Message):
    __slots__ = ("from_size", "hashes")
    FROM_SIZE_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    from_size: int
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, from_size: _Optional[int] = ..., hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ConsistencyProofs(_message.Message):
    __slots__ = ("node_id", "head", "proofs")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    PROOFS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    head: TreeHead
    proofs: _containers.RepeatedCompositeFieldContainer[ConsistencyProof]
    def __init__(self, node_id: _Optional[str] = ..., head: _Optional[_Union[TreeHead, _Mapping]] = ..., proofs: _Optional[_Iterable[_Union[ConsistencyProof, _Mapping]]] = ...) -> None: ...

class TreeHead(_message.Message):
    __slots__ = ("size", "root_hash", "timestamp_ms", "signature")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    size: int
    root_hash: bytes
    timestamp_ms: int
    signature: bytes
    def __init__(self, size: _Optional[int] = ..., root_hash: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class AccessRequest(_message.Message):
    __slots__ = ("dataset_id", "purposes", "label_fields", "expected_volume", "legal_basis_ref", "justification")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELDS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VOLUME_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_REF_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    purposes: _containers.RepeatedScalarFieldContainer[str]
    label_fields: _containers.RepeatedScalarFieldContainer[str]
    expected_volume: int
    legal_basis_ref: str
    justification: str
    def __init__(self, dataset_id: _Optional[str] = ..., purposes: _Optional[_Iterable[str]] = ..., label_fields: _Optional[_Iterable[str]] = ..., expected_volume: _Optional[int] = ..., legal_basis_ref: _Optional[str] = ..., justification: _Optional[str] = ...) -> None: ...

class AccessRequestStatus(_message.Message):
    __slots__ = ("request_id", "dataset_id", "purposes", "label_fields", "expected_volume", "legal_basis_ref", "justification", "status", "filed_at", "decided_at", "decision_note", "catalogue_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELDS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VOLUME_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_REF_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FILED_AT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    DECISION_NOTE_FIELD_NUMBER: _ClassVar[int]
    CATALOGUE_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    dataset_id: str
    purposes: _containers.RepeatedScalarFieldContainer[str]
    label_fields: _containers.RepeatedScalarFieldContainer[str]
    expected_volume: int
    legal_basis_ref: str
    justification: str
    status: RequestStatus
    filed_at: _timestamp_pb2.Timestamp
    decided_at: _timestamp_pb2.Timestamp
    decision_note: str
    catalogue_version: int
    def __init__(self, request_id: _Optional[int] = ..., dataset_id: _Optional[str] = ..., purposes: _Optional[_Iterable[str]] = ..., label_fields: _Optional[_Iterable[str]] = ..., expected_volume: _Optional[int] = ..., legal_basis_ref: _Optional[str] = ..., justification: _Optional[str] = ..., status: _Optional[_Union[RequestStatus, str]] = ..., filed_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., decided_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., decision_note: _Optional[str] = ..., catalogue_version: _Optional[int] = ...) -> None: ...

class ListAccessRequestsRequest(_message.Message):
    __slots__ = ("request_ids",)
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    request_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, request_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class AccessRequestList(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[AccessRequestStatus]
    def __init__(self, requests: _Optional[_Iterable[_Union[AccessRequestStatus, _Mapping]]] = ...) -> None: ...

class DisputeRequest(_message.Message):
    __slots__ = ("dataset_id", "record_handle", "reason", "evidence_ref")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_HANDLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_REF_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    record_handle: bytes
    reason: str
    evidence_ref: str
    def __init__(self, dataset_id: _Optional[str] = ..., record_handle: _Optional[bytes] = ..., reason: _Optional[str] = ..., evidence_ref: _Optional[str] = ...) -> None: ...

class Dispute(_message.Message):
    __slots__ = ("dispute_id", "dataset_id", "record_handle", "reason", "evidence_ref", "status", "raised_at", "resolved_at", "resolution_note")
    DISPUTE_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_HANDLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_REF_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RAISED_AT_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_AT_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_NOTE_FIELD_NUMBER: _ClassVar[int]
    dispute_id: int
    dataset_id: str
    record_handle: bytes
    reason: str
    evidence_ref: str
    status: DisputeStatus
    raised_at: _timestamp_pb2.Timestamp
    resolved_at: _timestamp_pb2.Timestamp
    resolution_note: str
    def __init__(self, dispute_id: _Optional[int] = ..., dataset_id: _Optional[str] = ..., record_handle: _Optional[bytes] = ..., reason: _Optional[str] = ..., evidence_ref: _Optional[str] = ..., status: _Optional[_Union[DisputeStatus, str]] = ..., raised_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., resolved_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., resolution_note: _Optional[str] = ...) -> None: ...

class ListDisputesRequest(_message.Message):
    __slots__ = ("dispute_ids",)
    DISPUTE_IDS_FIELD_NUMBER: _ClassVar[int]
    dispute_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dispute_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DisputeList(_message.Message):
    __slots__ = ("disputes",)
    DISPUTES_FIELD_NUMBER: _ClassVar[int]
    disputes: _containers.RepeatedCompositeFieldContainer[Dispute]
    def __init__(self, disputes: _Optional[_Iterable[_Union[Dispute, _Mapping]]] = ...) -> None: ...
