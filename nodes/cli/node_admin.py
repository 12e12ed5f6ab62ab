"""``psi node catalog ...`` and ``psi node disputes ...``: the operator's side of clients' access
requests and disputes (POLICY.md mechanisms 4 and 5), on the node's ``registry.sqlite``.

    psi node catalog list --config node.toml [--pending]
    psi node catalog approve ID --config node.toml [--per-session N] [--per-day N] [--per-epoch N]
    psi node catalog reject ID --reason TEXT --config node.toml
    psi node disputes list --config node.toml [--open]
    psi node disputes resolve ID --as confirmed|corrected|withdrawn --note TEXT --config node.toml

Decisions take effect for the running node's next call, without a restart, and are signed into
the node's audit log with its sealed key, so every command here needs the key ring passphrase
from the environment, as ``psi node build``; ``disputes list`` also uses the key ring to resolve
each record handle to the department's own record reference.
"""

from __future__ import annotations

import argparse
from dataclasses import astuple
from pathlib import Path

from nodes.cli.catalog import count, describe_request
from nodes.cli.disputes import describe_dispute
from nodes.department.accountability import dispute_message, request_message
from nodes.department.registry import RESOLUTIONS, DisputeRecord, Registry
from nodes.department.state import NodeState
from nodes.shared.accountability import check_text
from nodes.shared.audit.signing import PassphraseSeal, open_party_log
from nodes.shared.config import Limits, NodeConfig, load_node_config
from psi.keys import PASSPHRASE_VAR, passphrase_from_env
from psi.labels import profile_name, resolve_handles

AFTER_RESOLUTION = {
    "confirmed": "the record stands; nothing changes",
    "corrected": "correct the record in the source register, then run `psi node build --config "
    "{config}`: the next table version carries the correction",
    "withdrawn": "the record is left out of every table from now on; run `psi node build "
    "--config {config}` to publish a table version without it",
}


def add_actions(actions: argparse._SubParsersAction) -> None:
    """Add ``catalog`` and ``disputes`` to ``psi node``'s actions."""
    catalog = actions.add_parser("catalog", help="decide clients' requests for access")
    decisions = catalog.add_subparsers(dest="decision", required=True, metavar="DECISION")
    listing = decisions.add_parser("list", help="requests, pending and decided")
    listing.add_argument("--pending", action="store_true", help="only those awaiting a decision")
    listing.set_defaults(func=run_catalog_list)
    approve = decisions.add_parser(
        "approve",
        help="grant a request (budgets default to the client's current ones, else its volume)",
    )
    approve.add_argument("id", type=count, metavar="ID")
    for window in ("session", "day", "epoch"):
        approve.add_argument(f"--per-{window}", type=count, help=f"elements per {window}")
    approve.set_defaults(func=run_approve)
    reject = decisions.add_parser("reject", help="refuse a request, saying why")
    reject.add_argument("id", type=count, metavar="ID")
    reject.add_argument("--reason", required=True, help="told to the client")
    reject.set_defaults(func=run_reject)

    disputes = actions.add_parser("disputes", help="verify records clients dispute")
    steps = disputes.add_subparsers(dest="step", required=True, metavar="STEP")
    queue = steps.add_parser(
        "list", help=f"disputes with the records they name (${PASSPHRASE_VAR} needed)"
    )
    queue.add_argument("--open", action="store_true", help="only those not resolved yet")
    queue.set_defaults(func=run_disputes_list)
    resolve = steps.add_parser("resolve", help="close a dispute after checking the record")
    resolve.add_argument("id", type=count, metavar="ID")
    resolve.add_argument("--as", dest="outcome", choices=RESOLUTIONS, required=True)
    resolve.add_argument("--note", required=True, help="told to the client")
    resolve.set_defaults(func=run_resolve)

    for parser in (listing, approve, reject, queue, resolve):
        parser.add_argument("--config", type=Path, required=True, help="node.toml")


def run_catalog_list(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    requests = Registry(config.state).requests(status="pending" if args.pending else None)
    for record in requests:
        print(describe_request(request_message(record), record.client))
    if not requests:
        print("no access requests" + (" pending" if args.pending else ""))
    return 0


def _audit(config: NodeConfig, event: dict) -> None:
    """Record an operator's decision in the node's own audit log (the server may be appending
    to it at the same time; the log supports that), signed with the key the passphrase opens."""
    with open_party_log(config.state, config.id, PassphraseSeal(passphrase_from_env())) as audit:
        audit.append(event)


def run_approve(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    given = Limits(args.per_session, args.per_day, args.per_epoch)
    approval = Registry(config.state).approve(args.id, config, given)
    grant, request = approval.grant, approval.request
    _audit(
        config,
        {
            "event": "catalogue_changed",
            "peer": {"cn": grant.client},
            "dataset": request.dataset,
            "outcome": "approved",
            "detail": f"request {request.id}; catalogue version {request.catalogue_version}",
        },
    )
    windows = zip(("session", "day", "epoch"), astuple(grant.limits), strict=True)
    limits = ", ".join(f"per {w} {'unlimited' if n is None else n}" for w, n in windows)
    print(
        f"request {request.id} approved: {grant.client} may query {request.dataset} for "
        f"{', '.join(grant.purposes)}, reading {', '.join(sorted(grant.fields))}; budget "
        f"{limits}; catalogue version {request.catalogue_version}"
    )
    if approval.new_profile:
        print(
            f"the label fields {profile_name(grant.fields)} are a new profile: run `psi node build "
            f"--config {args.config}` before the client can query (the running node needs no "
            "restart)"
        )
    return 0


def run_reject(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    record = Registry(config.state).reject(args.id, check_text("reason", args.reason))
    _audit(
        config,
        {
            "event": "catalogue_request",
            "peer": {"cn": record.client},
            "dataset": record.dataset,
            "outcome": "rejected",
            "detail": f"request {record.id}",
        },
    )
    print(f"request {record.id} rejected; {record.client} is told: {record.note}")
    return 0


def _record_refs(state: NodeState, disputes: list[DisputeRecord]) -> dict[bytes, str]:
    """Handle -> record reference over the registers of the disputed datasets."""
    refs: dict[bytes, str] = {}
    for dataset in sorted({d.dataset for d in disputes} & set(state.config.datasets)):
        register = state.read_register(state.config.datasets[dataset])
        entries = (e.ref for people in register.people.values() for e in people)
        refs.update(resolve_handles(state.keyring().handle_key(dataset), entries))
    return refs


def run_disputes_list(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    state = NodeState(config, passphrase_from_env())
    disputes = state.registry.disputes(status="open" if args.open else None)
    refs = _record_refs(state, disputes)
    for dispute in disputes:
        print(describe_dispute(dispute_message(dispute), config.id))
        print(
            f"  from {dispute.client}; record {refs.get(dispute.handle, '(not in the register)')}"
        )
    if not disputes:
        print("no disputes" + (" open" if args.open else ""))
    return 0


def run_resolve(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    dispute = Registry(config.state).resolve(args.id, args.outcome, check_text("note", args.note))
    _audit(
        config,
        {
            "event": "dispute_resolved",
            "peer": {"cn": dispute.client},
            "dataset": dispute.dataset,
            "outcome": dispute.status,
            "detail": f"dispute {dispute.id}",
        },
    )
    print(
        f"dispute {dispute.id} resolved as {dispute.status}: "
        + AFTER_RESOLUTION[dispute.status].format(config=args.config)
    )
    return 0
