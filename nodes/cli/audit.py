"""``psi audit``: what a reviewer runs on a node's or a client's audit log.

    psi audit verify LOG --key PUBKEY.pem
    psi audit report LOG [--json F] [--csv F] [--html F] [--utc-offset +08:00]
    psi audit cross-check CLIENT_LOG NODE_LOG

``verify`` and ``cross-check`` exit 0 when the log verifies or the receipts agree, 1 when they find
tampering or differences (each printed with where it is), 2 on a user error. See
docs/reviewer-guide.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nodes.shared.audit.log import span, verify_log
from nodes.shared.audit.report import (
    DEFAULT_UTC_OFFSET,
    build_report,
    cross_check,
    parse_utc_offset,
    to_csv,
    to_html,
    to_json,
    to_text,
)
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
    verify.set_defaults(func=run_verify)

    report = actions.add_parser("report", help="who queried what, refusals, budgets, anomalies")
    report.add_argument("log", type=Path, help="the audit log (SQLite file)")
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


def run_verify(args: argparse.Namespace) -> int:
    report = verify_log(args.log, _read(args.key, "public key"))
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
    if report.signed < report.entries:
        print(
            f"{span(report.signed, report.entries)} not covered by a signed tree head yet: "
            "only the entry checks apply"
        )
    if report.ok:
        print("verified: no tampering found")
        return 0
    print(f"TAMPERED: {len(report.problems)} problems")
    for problem in report.problems:
        print(f"  {problem}")
    return EXIT_FOUND


def run_report(args: argparse.Namespace) -> int:
    report = build_report(args.log, parse_utc_offset(args.utc_offset))
    print(to_text(report), end="")
    for path, render in ((args.json, to_json), (args.csv, to_csv), (args.html, to_html)):
        if path is not None:
            _write(path, render(report))
    return 0


def run_cross_check(args: argparse.Namespace) -> int:
    check = cross_check(args.client_log, args.node_log)
    print(
        f"receipts of client {check.client} at node {check.node}: {check.matched} agree, "
        f"{len(check.differences)} differences"
    )
    for difference in check.differences:
        print(f"  {difference}")
    return 0 if check.ok else EXIT_FOUND
