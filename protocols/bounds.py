"""A bound on every field of every request a node receives, and the check that holds a request to
them before anything of it is stored, logged or computed.

A client controls every byte of its requests: a 3 MB ``legal_basis_ref`` would be written to the
audit log, a 1 MB dataset name echoed in refusals, an ``element_count`` of 2**63 overflow SQLite.
So each field has one bound here (``BOUNDS``, by message and field), the node checks each request
against it first (``violation``), and a refusal names the field and its bound, never the value.
docs/protocol.md lists the same table; tests hold it to the .proto files, so that a field added to
a request without a bound fails them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import Message

from protocols.limits import (
    CHUNK_BYTES,
    ELEMENTS_PER_CHUNK,
    MAX_CONSISTENCY_SIZES,
    MAX_MESSAGE_BYTES,
)
from psi.ids import contains_identifier
from psi.labels import HANDLE_BYTES
from psi.paillier import MAX_KEY_BITS

MAX_NAME = 64  # characters of a dataset id, purpose code, suite, protocol, session id, field name
MAX_REF = 200  # characters of a legal basis reference
MAX_TEXT = 1000  # characters of free text: a justification, a dispute's reason or evidence
MAX_ELEMENTS = 10**9  # elements of one session (32 GB of elements each way)
MAX_VOLUME = 10**9  # identifiers a month in an access request: more than a province's adults
MAX_IDS = 1000  # request or dispute numbers listed in one call
MAX_GROUPS = 2**16  # groups, and ciphertexts per element, of a statistics session


@dataclass(frozen=True)
class Text:
    """A string: at most ``chars`` characters, printable (no line break or control character,
    which could forge a line of the node's text log), and nothing like an identity number."""

    chars: int
    exhausted: bool = False

    def problem(self, value: str) -> str | None:
        if len(value) > self.chars:
            return f"is {len(value)} characters; at most {self.chars}"
        if not value.isprintable():
            return "holds a line break or control character"
        if contains_identifier(value):
            return "seems to hold an identity number; leave it out"
        return None

    def describe(self) -> str:
        return f"text, at most {self.chars:,} characters, printable, no identity number"


@dataclass(frozen=True)
class Number:
    """An unsigned integer of at most ``most`` (``shown`` so, where its digits would look like an
    identity number). ``exhausted``: past it, the request asks for more than a message carries
    (RESOURCE_EXHAUSTED), rather than being malformed."""

    most: int
    exhausted: bool = False
    shown: str = ""

    def problem(self, value: int) -> str | None:
        return f"is over {self.shown or f'{self.most:,}'}" if value > self.most else None

    def describe(self) -> str:
        return f"at most {self.shown or f'{self.most:,}'}"


@dataclass(frozen=True)
class Blob:
    """Bytes: at most ``most`` of them."""

    most: int
    exhausted: bool = False

    def problem(self, value: bytes) -> str | None:
        return f"is {len(value)} bytes; at most {self.most:,}" if len(value) > self.most else None

    def describe(self) -> str:
        return f"at most {self.most:,} bytes"


@dataclass(frozen=True)
class Many:
    """A repeated field: at most ``most`` entries, each within ``each``."""

    each: Text | Number
    most: int
    exhausted: bool = False

    def describe(self) -> str:
        return f"at most {self.most:,} entries, each {self.each.describe()}"


@dataclass(frozen=True)
class Part:
    """A message inside the request, whose own fields are bounded (``BOUNDS``)."""

    exhausted: bool = False

    def describe(self) -> str:
        return "a message, bounded field by field"


Bound = Text | Number | Blob | Many | Part

NAME, REF, TEXT = Text(MAX_NAME), Text(MAX_REF), Text(MAX_TEXT)
FIELDS = Many(NAME, 32)  # label field names (psi.labels.FIELDS has 6)
ELEMENTS = Blob(CHUNK_BYTES, exhausted=True)
COUNT = Number(ELEMENTS_PER_CHUNK, exhausted=True)
SEQUENCE = Number(MAX_ELEMENTS)  # a chunk holds at least one element
UINT32 = Number(2**32 - 1, shown="2^32 - 1 (the wire type: it fits every store)")
ROW_ID = Number(2**63 - 1, shown="2^63 - 1 (SQLite's largest integer)")
# version (1) | len(n) (2) | n | hs (the bytes of n²): psi.paillier.PublicKey.to_bytes
PAILLIER_KEY = Blob(3 + 3 * MAX_KEY_BITS // 8)

BOUNDS: Mapping[str, Mapping[str, Bound]] = {
    "CatalogueRequest": {"dataset_ids": Many(NAME, MAX_IDS)},
    "OpenSessionRequest": {
        "dataset_id": NAME,
        "purpose_code": NAME,
        "legal_basis_ref": REF,
        "element_count": Number(MAX_ELEMENTS),
        "suite": NAME,
        "key_epoch": UINT32,
        "protocol_version": UINT32,
        "label_fields": FIELDS,
        "resume_session_id": NAME,
    },
    "EvaluateChunk": {
        "session_id": NAME,
        "sequence": SEQUENCE,
        "count": COUNT,
        "elements": ELEMENTS,
    },
    "FetchTableRequest": {
        "dataset_id": NAME,
        "key_epoch": UINT32,
        "since_version": ROW_ID,
        "purpose_code": NAME,
        "legal_basis_ref": REF,
        "label_fields": FIELDS,
    },
    "CloseSessionRequest": {"session_id": NAME},
    "ConsistencyRequest": {"from_sizes": Many(ROW_ID, MAX_CONSISTENCY_SIZES), "to_size": ROW_ID},
    "AccessRequest": {
        "dataset_id": NAME,
        "purposes": Many(NAME, 32),
        "label_fields": FIELDS,
        "expected_volume": Number(MAX_VOLUME),
        "legal_basis_ref": REF,
        "justification": TEXT,
    },
    "ListAccessRequestsRequest": {"request_ids": Many(ROW_ID, MAX_IDS)},
    "DisputeRequest": {
        "dataset_id": NAME,
        "record_handle": Blob(HANDLE_BYTES),
        "reason": TEXT,
        "evidence_ref": TEXT,
    },
    "ListDisputesRequest": {"dispute_ids": Many(ROW_ID, MAX_IDS)},
    "OpenStatisticsRequest": {
        "dataset_id": NAME,
        "purpose_code": NAME,
        "legal_basis_ref": REF,
        "protocol": NAME,
        "element_count": Number(MAX_ELEMENTS),
        "protocol_version": UINT32,
        "paillier_public_key": PAILLIER_KEY,
        "ciphertexts_per_element": Number(2 * MAX_GROUPS),
        "groups": Number(MAX_GROUPS),
    },
    "NodeSetRequest": {"session_id": NAME},
    "ElementChunk": {
        "session_id": NAME,
        "sequence": SEQUENCE,
        "count": COUNT,
        "elements": ELEMENTS,
    },
    "SumChunk": {"session_id": NAME, "sequence": SEQUENCE, "node_set": Part(), "pairs": Part()},
    "ElementBlock": {"count": COUNT, "elements": ELEMENTS},
    "PairBlock": {
        "count": COUNT,
        "elements": ELEMENTS,
        "ciphertexts": Blob(MAX_MESSAGE_BYTES, exhausted=True),
    },
}


@dataclass(frozen=True)
class Violation:
    """A field past its bound: which, and how (never the value)."""

    field: str  # Message.field
    problem: str
    exhausted: bool  # RESOURCE_EXHAUSTED rather than INVALID_ARGUMENT

    def __str__(self) -> str:
        return f"{self.field} {self.problem}"


def violation(message: Message) -> Violation | None:
    """The first field of ``message`` (and of the messages inside it) past its bound, or None.
    A message or field without a bound is a violation too: nothing goes unbounded by omission."""
    name = message.DESCRIPTOR.name
    bounds = BOUNDS.get(name)
    if bounds is None:
        return Violation(name, "is not a request this node bounds", False)
    for field, value in message.ListFields():
        where = f"{name}.{field.name}"
        bound = bounds.get(field.name)
        if bound is None:
            return Violation(where, "has no bound", False)
        if isinstance(bound, Part):
            found = violation(value)
        elif isinstance(bound, Many):
            found = _many(where, bound, value)
        else:
            problem = bound.problem(value)
            found = problem and Violation(where, problem, bound.exhausted)
        if found:
            return found
    return None


def _many(where: str, bound: Many, values) -> Violation | None:
    if len(values) > bound.most:
        return Violation(where, f"has {len(values)} entries; at most {bound.most}", bound.exhausted)
    for value in values:
        problem = bound.each.problem(value)
        if problem:
            return Violation(where, f"has an entry that {problem}", bound.exhausted)
    return None
