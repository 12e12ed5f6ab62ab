"""``psi catalog``: what a node offers this client, and asking for what it does not offer yet.

    psi catalog show --federation F --node N
    psi catalog request --federation F --node N --dataset D --purpose P [--purpose P2]
                        [--fields status,start,end] [--volume N] --legal-basis REF --reason TEXT
    psi catalog requests --federation F --node N [--id ID ...]

A request is pending until the node's operator approves or rejects it (``psi node catalog``);
an approval shows in ``show`` under a higher catalogue version. Exit status: 0 done, 2 a mistake
in the input, 3 the node refused or could not be reached (as ``psi query``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from nodes.cli.query import EXIT_NODE_FAILED
from nodes.client.accountability import AccountabilityClient
from nodes.client.client import Client, NodeError
from nodes.department.registry import when
from nodes.shared.accountability import request_status
from nodes.shared.config import load_federation
from protocols.kinlink.v1 import psi_pb2


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("catalog", help="see a node's catalogue and request access beyond it")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    show = actions.add_parser("show", help="the datasets, purposes and fields granted to you")
    federation_options(show)
    json_option(show)
    show.set_defaults(func=run_show)

    request = actions.add_parser("request", help="ask the node for a dataset, purpose or fields")
    federation_options(request)
    request.add_argument("--dataset", required=True)
    request.add_argument(
        "--purpose", action="append", required=True, help="purpose code (repeatable)"
    )
    request.add_argument(
        "--fields", type=_words, default=[], help="label fields, comma-separated (status always)"
    )
    request.add_argument(
        "--volume", type=count, default=0, help="identifiers you expect to query per month"
    )
    request.add_argument("--legal-basis", required=True, help="law or agreement allowing the use")
    request.add_argument("--reason", required=True, help="why you need it")
    request.set_defaults(func=run_request)

    requests = actions.add_parser("requests", help="your requests to a node and their decisions")
    federation_options(requests)
    requests.add_argument("--id", type=count, action="append", default=[], help="only this request")
    requests.set_defaults(func=run_requests)


def federation_options(parser: argparse.ArgumentParser, *, node_required: bool = True) -> None:
    parser.add_argument("--federation", type=Path, required=True, help="federation.toml")
    parser.add_argument("--node", required=node_required, help="the node to ask")


def json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON, for scripts")


def print_json(document: object) -> None:
    print(json.dumps(document, indent=1, ensure_ascii=False))


def count(text: str) -> int:
    """A whole number, 0 or more (argparse type)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError("must be a whole number, 0 or more")
    return int(text)


def _words(text: str) -> list[str]:
    return [word.strip() for word in text.split(",") if word.strip()]


def reports_node_failure(
    run: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """A node's refusal or absence is exit 3 with one line, as in ``psi query``."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except NodeError as exc:
            print(f"psi {args.command}: node failed: {exc}", file=sys.stderr)
            return EXIT_NODE_FAILED

    return wrapper


def describe_request(request: psi_pb2.AccessRequestStatus, client: str | None = None) -> str:
    """One request for people, shared with the operator's ``psi node catalog list``."""
    who = f" from {client}" if client else ""
    volume = f"{request.expected_volume}/month" if request.expected_volume else "not stated"
    lines = [
        f"request {request.request_id}{who}: {request.dataset_id}, "
        f"{request_status(request)} (filed {when(request.filed_at.seconds)})",
        f"  purposes {', '.join(request.purposes)}; fields {', '.join(request.label_fields)}; "
        f"volume {volume}",
        f"  legal basis: {request.legal_basis_ref}",
        f"  reason: {request.justification}",
    ]
    if request.HasField("decided_at"):
        decided = f"  decided {when(request.decided_at.seconds)}"
        if request.catalogue_version:
            decided += f": in the catalogue from version {request.catalogue_version}"
        if request.decision_note:
            decided += f": {request.decision_note}"
        lines.append(decided)
    return "\n".join(lines)


@reports_node_failure
def run_show(args: argparse.Namespace) -> int:
    with Client(load_federation(args.federation)) as client:
        catalogue = client.catalogue(args.node)
    if args.json:
        document = MessageToDict(catalogue, preserving_proto_field_name=True)
        document["audit_public_key"] = catalogue.audit_public_key.decode("ascii")
        print_json(document)
        return 0
    print(
        f"node {catalogue.node_id}: catalogue version {catalogue.catalogue_version}, protocol "
        f"versions {', '.join(map(str, catalogue.protocol_versions))}"
    )
    if not catalogue.datasets:
        print(
            "no dataset is granted to you here; ask with `psi catalog request` (see "
            "`psi catalog request --help`)"
        )
    for d in catalogue.datasets:
        print(
            f"{d.dataset_id}: {d.title}\n"
            f"  statuses {', '.join(d.status_codes)}; fields {', '.join(d.label_fields)}\n"
            f"  purposes {', '.join(d.allowed_purposes)}\n"
            f"  legal basis: {d.legal_basis}\n"
            f"  updated {d.update_frequency or 'irregularly'} by {d.responsible_unit or '-'}\n"
            f"  key epoch {d.key_epoch}, table version {d.table_version}, {d.table_size} entries; "
            f"{', '.join(d.suites)}"
        )
    return 0


@reports_node_failure
def run_request(args: argparse.Namespace) -> int:
    with Client(load_federation(args.federation)) as client:
        filed = AccountabilityClient(client).request_access(
            args.node,
            args.dataset,
            args.purpose,
            fields=args.fields,
            volume=args.volume,
            legal_basis_ref=args.legal_basis,
            justification=args.reason,
        )
    print(describe_request(filed))
    print(
        f"the node's operator decides; follow it with `psi catalog requests --federation "
        f"{args.federation} --node {args.node} --id {filed.request_id}`"
    )
    return 0


@reports_node_failure
def run_requests(args: argparse.Namespace) -> int:
    with Client(load_federation(args.federation)) as client:
        requests = AccountabilityClient(client).access_requests(args.node, args.id)
    for request in requests:
        print(describe_request(request))
    if not requests:
        print(f"no access requests to node {args.node}")
    return 0
