"""Tamper-evident protocol logs (RFC 9162 Merkle trees, Ed25519 signed tree heads).

``log``: the append-only log each party keeps, and ``verify_log`` for reviewers; ``merkle``: the
tree and its proofs; ``signing``: the signing key sealed at rest; ``receipts``: session receipts
and the ones a client keeps; ``report``: reports on one log; ``crosscheck``: receipts, keys and
history between a client's log and a node's.
See docs/reviewer-guide.md.
"""

from nodes.shared.audit.crosscheck import CrossCheck, cross_check
from nodes.shared.audit.log import (
    EVENTS,
    FIELDS,
    AuditLog,
    Problem,
    TreeHead,
    VerifyReport,
    generate_key,
    load_public_key,
    load_signing_key,
    public_key_pem,
    verify_log,
)
from nodes.shared.audit.report import Report, build_report

__all__ = [
    "EVENTS",
    "FIELDS",
    "AuditLog",
    "CrossCheck",
    "Problem",
    "Report",
    "TreeHead",
    "VerifyReport",
    "build_report",
    "cross_check",
    "generate_key",
    "load_public_key",
    "load_signing_key",
    "public_key_pem",
    "verify_log",
]
