"""``psi certs``: the federation's mutual-TLS certificates.

    psi certs init --out DIR --nodes prison,police --clients civil-affairs [--days N] [--force]
    psi certs issue --ca DIR --name NAME --role node|client [--days N] [--force]

Each line printed names a certificate, its role and SHA-256 fingerprint, which operators compare
out of band before trusting a peer.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from nodes.shared.certs import DEFAULT_DAYS, Issued, Role, init_federation, issue


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("certs", help="create the federation's mutual-TLS certificates")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    init = actions.add_parser("init", help="create a federation CA and certificates")
    init.add_argument("--out", type=Path, required=True, help="directory to write into")
    init.add_argument("--nodes", type=_names, default=[], help="department nodes, comma-separated")
    init.add_argument(
        "--clients", type=_names, default=[], help="client identities, comma-separated"
    )
    _common(init)
    init.set_defaults(func=run_init)

    add = actions.add_parser("issue", help="add one certificate to an existing federation")
    add.add_argument("--ca", type=Path, required=True, help="the federation directory")
    add.add_argument("--name", required=True, help="node name or client identity")
    add.add_argument("--role", type=Role, choices=list(Role), required=True)
    _common(add)
    add.set_defaults(func=run_issue)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help=f"validity (default {DEFAULT_DAYS})"
    )
    parser.add_argument("--force", action="store_true", help="replace existing files")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def run_init(args: argparse.Namespace) -> int:
    _report(init_federation(args.out, args.nodes, args.clients, days=args.days, force=args.force))
    return 0


def run_issue(args: argparse.Namespace) -> int:
    _report([issue(args.ca, args.name, args.role, days=args.days, force=args.force)])
    return 0


def _report(issued: Iterable[Issued]) -> None:
    for item in issued:
        role = item.role or "ca"
        print(f"{item.name:<16} {role:<6} sha256:{item.fingerprint}  {item.cert}  {item.key}")
