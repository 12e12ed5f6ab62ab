"""Session receipts: what a node and a client each record of one session, field for field."""

from __future__ import annotations

from protocols.kinlink.v1 import psi_pb2


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
