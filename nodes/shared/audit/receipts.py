"""Session receipts: what a node and a client each record of one session, and the node's signature
over it, which either side can later show to prove what happened."""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature

from nodes.shared.audit.log import (
    AuditLog,
    TreeHead,
    head_message,
    key_fingerprint,
    load_public_key,
)
from protocols.kinlink.v1 import psi_pb2
from psi.errors import KinlinkError

ALGORITHM = "ed25519"
_DOMAIN = b"kinlink receipt v1\0"


class ReceiptError(KinlinkError):
    """A receipt does not verify: wrong key, altered fields, or a bad tree head."""


def receipt_fields(receipt: psi_pb2.SessionReceipt) -> dict:
    """What both parties log of a receipt; ``psi audit cross-check`` compares exactly these.
    Empty text (no legal-basis reference given) is left out on both sides alike."""
    fields = {
        "session_id": receipt.session_id,
        "dataset": receipt.dataset_id,
        "purpose": receipt.purpose_code,
        "legal_basis_ref": receipt.legal_basis_ref,
        "key_epoch": receipt.key_epoch,
        "table_version": receipt.table_version,
        "declared": receipt.elements_declared,
        "evaluated": receipt.elements_evaluated,
        "chunks": receipt.chunks_evaluated,
    }
    return {k: v for k, v in fields.items() if v != ""}


def _message(receipt: psi_pb2.SessionReceipt) -> bytes:
    unsigned = psi_pb2.SessionReceipt()
    unsigned.CopyFrom(receipt)
    unsigned.signature = b""
    return _DOMAIN + hashlib.sha256(unsigned.SerializeToString(deterministic=True)).digest()


def sign_receipt(receipt: psi_pb2.SessionReceipt, log: AuditLog, head: TreeHead) -> None:
    """Attach the node's head (taken after the receipt was logged) and sign the whole."""
    receipt.signature_algorithm = ALGORITHM
    receipt.signing_key_id = key_fingerprint(load_public_key(log.public_key_pem))
    receipt.tree_head.CopyFrom(
        psi_pb2.TreeHead(
            size=head.size,
            root_hash=head.root_hash,
            timestamp_ms=head.timestamp,
            signature=head.signature,
        )
    )
    receipt.signature = log.sign(_message(receipt))


def verify_receipt(receipt: psi_pb2.SessionReceipt, public_key_pem: bytes) -> None:
    """Raise ``ReceiptError`` unless the node's key signed this receipt and its tree head."""
    key = load_public_key(public_key_pem)
    if receipt.signature_algorithm != ALGORITHM or receipt.signing_key_id != key_fingerprint(key):
        raise ReceiptError("the receipt is not signed by the node's pinned audit key")
    head = receipt.tree_head
    try:
        key.verify(receipt.signature, _message(receipt))
        key.verify(
            head.signature,
            head_message(receipt.node_id, head.size, head.timestamp_ms, head.root_hash),
        )
    except InvalidSignature:
        raise ReceiptError("the receipt's signature or tree head does not verify") from None
