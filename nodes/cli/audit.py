"""``psi audit``: what a reviewer runs on a node's or a client's audit log.

    psi audit verify LOG --key PUBKEY.pem [--fingerprint SHA256]
    psi audit report LOG [--key PUBKEY.pem] [--json F] [--csv F] [--html F] [--utc-offset +08:00]
    psi audit cross-check CLIENT_LOG NODE_LOG [--federation federation.toml]

``verify`` exits 0 only when every entry lies under a signed tree head and nothing was tampered
with, ``cross-check`` when the receipts agree and the node's history is consistent with every
head the client holds; 1 otherwise (each finding printed with where it is), 2 on a user error.
See docs/reviewer-guide.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nodes.client.client import Client
from nodes.shared.audit.crosscheck import CrossCheck, check_history, cross_check
from nodes.shared.audit.log import Problem, VerifyReport, verify_log
from nodes.shared.audit.receipts import held_receipts
from nodes.shared.audit.report import (
    DEFAULT_UTC_OFFSET,
    build_report,
    parse_utc_offset,
    to_csv,
    to_html,
    to_json,
    to_text,
)
from nodes.shared.config import FederationConfig, load_federation
from psi.errors import InputError

EXIT_FOUND = 1


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("audit", help="verify, report on and cross-check audit logs")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    verify = actions.add_parser(
        "verify", help="check a log's entries and signed tree heads against the owner's key"
    )
    verify.add_argument("log", type=Path, help="the audit log (SQLite file)")
    verify.add_argument("--key", type=Path, required=True, help="the log owner's public key (PEM)")
    verify.add_argument(
        "--fingerprint",
        help="the SHA-256 (hex) of the owner's key as the owner gave it out of band: any other "
        "key is refused, however well the log verifies with it",
    )
    verify.set_defaults(func=run_verify)

    report = actions.add_parser("report", help="who queried what, refusals, budgets, anomalies")
    report.add_argument("log", type=Path, help="the audit log (SQLite file)")
    report.add_argument("--key", type=Path, help="the log owner's public key: verify it first")
    report.add_argument("--json", type=Path, help="also write the report as JSON here")
    report.add_argument("--csv", type=Path, help="also write one row per session here")
    report.add_argument("--html", type=Path, help="also write a self-contained HTML page here")
    report.add_argument(
        "--utc-offset",
        default=DEFAULT_UTC_OFFSET,
        help=f"local time for days and night hours (default {DEFAULT_UTC_OFFSET})",
    )
    report.set_defaults(func=run_report)

    check = actions.add_parser(
        "cross-check", help="compare the receipts in a client's log and a node's log"
    )
    check.add_argument("client_log", type=Path, help="the client's audit log")
    check.add_argument("node_log", type=Path, help="the node's audit log")
    check.add_argument(
        "--federation",
        type=Path,
        help="the client's federation file: also ask the node for consistency proofs from every "
        "head the client holds to its current head",
    )
    check.set_defaults(func=run_cross_check)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"wrote {path}")


def _verify(log: Path, key: Path, fingerprint: str | None = None) -> VerifyReport:
    report = verify_log(log, _read(key, "public key"))
    pinned = (fingerprint or "").lower().removeprefix("sha256:")
    if fingerprint is not None and pinned != report.key_fingerprint:
        report.problems.insert(
            0,
            Problem(
                "key",
                f"the key given is sha256:{report.key_fingerprint}, not the pinned "
                f"sha256:{pinned}: the log may have been re-signed with another key",
            ),
        )
    return report


def run_verify(args: argparse.Namespace) -> int:
    report = _verify(args.log, args.key, args.fingerprint)
    print(
        f"{report.path}: log of {report.owner}, {report.entries} entries, {report.heads} signed "
        f"tree heads; reviewer's key sha256:{report.key_fingerprint}"
    )
    if report.latest is not None:
        head = report.latest
        print(
            f"latest valid head: size {head.size}, root {head.root_hash.hex()}, signed "
            f"{head.signed_at.isoformat(timespec='seconds')}"
        )
    for problem in report.problems:
        print(f"  {problem}")
    print(report.verdict())
    return 0 if report.complete else EXIT_FOUND


def run_report(args: argparse.Namespace) -> int:
    verified = _verify(args.log, args.key) if args.key else None
    report = build_report(args.log, parse_utc_offset(args.utc_offset), verified)
    print(to_text(report), end="")
    for path, render in ((args.json, to_json), (args.csv, to_csv), (args.html, to_html)):
        if path is not None:
            _write(path, render(report))
    return EXIT_FOUND if report.verification and not report.verification.ok else 0


def run_cross_check(args: argparse.Namespace) -> int:
    check = cross_check(args.client_log, args.node_log)
    if args.federation is not None:
        _ask_node(check, args.client_log, load_federation(args.federation))
    print(
        f"receipts of client {check.client} at node {check.node}: {check.matched} agree, "
        f"{len(check.differences)} differences; {check.heads} tree heads held and checked"
    )
    for difference in check.differences:
        print(f"  {difference}")
    return 0 if check.ok else EXIT_FOUND


def _ask_node(check: CrossCheck, client_log: Path, federation: FederationConfig) -> None:
    """Prove every head the client holds consistent with the head the node signs now."""
    kept = held_receipts(client_log, check.node) or []
    with Client(federation) as client:
        head, proofs = client.prove_consistency(check.node, [r.tree_head.size for r in kept])
    check_history(
        kept,
        head.size,
        head.root_hash,
        proofs.__getitem__,
        f"the node's current head ({head.size} entries, signed "
        f"{head.signed_at.isoformat(timespec='seconds')})",
        check,
    )
