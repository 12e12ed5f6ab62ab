from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OpenStatisticsRequest(_message.Message):
    __slots__ = ("dataset_id", "purpose_code", "legal_basis_ref", "protocol", "element_count", "protocol_version", "paillier_public_key", "ciphertexts_per_element", "groups")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_CODE_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_REF_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PAILLIER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_PER_ELEMENT_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    purpose_code: str
    legal_basis_ref: str
    protocol: str
    element_count: int
    protocol_version: int
    paillier_public_key: bytes
    ciphertexts_per_element: int
    groups: int
    def __init__(self, dataset_id: _Optional[str] = ..., purpose_code: _Optional[str] = ..., legal_basis_ref: _Optional[str] = ..., protocol: _Optional[str] = ..., element_count: _Optional[int] = ..., protocol_version: _Optional[int] = ..., paillier_public_key: _Optional[bytes] = ..., ciphertexts_per_element: _Optional[int] = ..., groups: _Optional[int] = ...) -> None: ...

class StatisticsSession(_message.Message):
    __slots__ = ("session_id", "dataset_id", "protocol", "element_count", "node_set_size", "max_elements_per_chunk", "max_pairs_per_chunk", "max_message_bytes", "expires_at", "protocol_version", "key_epoch")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    NODE_SET_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_ELEMENTS_PER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    MAX_PAIRS_PER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    dataset_id: str
    protocol: str
    element_count: int
    node_set_size: int
    max_elements_per_chunk: int
    max_pairs_per_chunk: int
    max_message_bytes: int
    expires_at: _timestamp_pb2.Timestamp
    protocol_version: int
    key_epoch: int
    def __init__(self, session_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., protocol: _Optional[str] = ..., element_count: _Optional[int] = ..., node_set_size: _Optional[int] = ..., max_elements_per_chunk: _Optional[int] = ..., max_pairs_per_chunk: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., protocol_version: _Optional[int] = ..., key_epoch: _Optional[int] = ...) -> None: ...

class NodeSetRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ElementChunk(_message.Message):
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

class SumChunk(_message.Message):
    __slots__ = ("session_id", "sequence", "node_set", "pairs")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    NODE_SET_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sequence: int
    node_set: ElementBlock
    pairs: PairBlock
    def __init__(self, session_id: _Optional[str] = ..., sequence: _Optional[int] = ..., node_set: _Optional[_Union[ElementBlock, _Mapping]] = ..., pairs: _Optional[_Union[PairBlock, _Mapping]] = ...) -> None: ...

class ElementBlock(_message.Message):
    __slots__ = ("count", "elements")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    count: int
    elements: bytes
    def __init__(self, count: _Optional[int] = ..., elements: _Optional[bytes] = ...) -> None: ...

class PairBlock(_message.Message):
    __slots__ = ("count", "elements", "ciphertexts")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    count: int
    elements: bytes
    ciphertexts: bytes
    def __init__(self, count: _Optional[int] = ..., elements: _Optional[bytes] = ..., ciphertexts: _Optional[bytes] = ...) -> None: ...

class SumResult(_message.Message):
    __slots__ = ("intersection_size", "sums")
    INTERSECTION_SIZE_FIELD_NUMBER: _ClassVar[int]
    SUMS_FIELD_NUMBER: _ClassVar[int]
    intersection_size: int
    sums: bytes
    def __init__(self, intersection_size: _Optional[int] = ..., sums: _Optional[bytes] = ...) -> None: ...
