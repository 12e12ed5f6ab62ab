"""Session receipts: what a node and a client each record of one session, and the node's signature
over it, which either side can later show to prove what happened.

A client keeps every receipt it receives, whole (``HeldReceipts``): each carries a tree head of
the node's log signed after the session, which ``psi audit cross-check`` later proves the node's
history consistent with (``nodes.shared.audit.gossip``). They live in the client's audit log file,
in a table of their own beside the Merkle tree::

    held_receipts   node, session_id, size (its head's), receipt (the serialised SessionReceipt)
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from google.protobuf.message import DecodeError

from nodes.shared.audit.log import (
    AuditLog,
    TreeHead,
    head_message,
    key_fingerprint,
    load_public_key,
)
from protocols.kinlink.v1 import psi_pb2
from psi.errors import InputError, KinlinkError

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
    receipt.tree_head.CopyFrom(tree_head_message(head))
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


def tree_head_message(head: TreeHead) -> psi_pb2.TreeHead:
    return psi_pb2.TreeHead(
        size=head.size,
        root_hash=head.root_hash,
        timestamp_ms=head.timestamp,
        signature=head.signature,
    )


def tree_head(message: psi_pb2.TreeHead) -> TreeHead:
    return TreeHead(message.size, message.root_hash, message.timestamp_ms, message.signature)


_HELD_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS held_receipts (node TEXT NOT NULL, session_id TEXT NOT NULL, "
    "size INTEGER NOT NULL, receipt BLOB NOT NULL, PRIMARY KEY (node, session_id))"
)


class HeldReceipts:
    """The receipts a client received, in its audit log file; each kept once it verified."""

    def __init__(self, log_path: Path):
        self._db = sqlite3.connect(
            str(log_path), isolation_level=None, check_same_thread=False, timeout=30
        )
        self._lock = threading.Lock()  # the nodes of one query answer in threads of their own
        self._db.execute(_HELD_SCHEMA)

    def keep(self, receipt: psi_pb2.SessionReceipt) -> None:
        """Durably, beside the log's own writer: BEGIN IMMEDIATE waits for the write lock, where
        a plain INSERT would fail at once if the log committed since it began reading."""
        row = (
            receipt.node_id,
            receipt.session_id,
            receipt.tree_head.size,
            receipt.SerializeToString(deterministic=True),
        )
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO held_receipts VALUES (?, ?, ?, ?)", row)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


def held_receipts(log_path: Path, node: str) -> list[psi_pb2.SessionReceipt] | None:
    """The receipts of ``node`` kept in a client's log file, by their heads' size; None for a
    node's log or a client's written before clients kept receipts."""
    db = sqlite3.connect(f"{Path(log_path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT session_id, receipt FROM held_receipts WHERE node = ? ORDER BY size, rowid",
            (node,),
        ).fetchall()
    except sqlite3.OperationalError:  # no such table
        return None
    finally:
        db.close()
    receipts = []
    for session_id, blob in rows:
        receipt = psi_pb2.SessionReceipt()
        try:
            receipt.ParseFromString(blob)
        except DecodeError:
            raise InputError(
                f"{log_path}: the receipt kept for session {session_id} is damaged"
            ) from None
        receipts.append(receipt)
    return receipts
