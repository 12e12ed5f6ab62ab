"""Tamper-evident protocol logs (RFC 9162 Merkle trees, Ed25519 signed tree heads).

``log``: the append-only log each party keeps, and ``verify_log`` for reviewers; ``merkle``: the
tree and its proofs; ``report``: reports on one log and the receipt cross-check between two.
See docs/reviewer-guide.md.
"""

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
from nodes.shared.audit.report import CrossCheck, Report, build_report, cross_check

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
