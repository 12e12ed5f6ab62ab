"""``psi disputes``: report a doubtful or wrong record back to the department that holds it.

    psi disputes raise --federation F --node N --dataset D --handle HEX --reason TEXT --evidence REF
    psi disputes list --federation F [--node N]
    psi disputes proof --federation F --node N --id ID --note TEXT

The handle is the ``record_handle`` of a match (``psi query --out``); only the department can
resolve it to its record. A raised dispute puts the case under verification in civil affairs' own
record (``disputes.sqlite`` in the federation cache). While it is, a person who shows valid legal
proof is served as normal (POLICY.md 5): ``proof`` records that the caseworker saw it. ``list``
fetches the nodes' resolutions into the same record. Exit status: 0 done, 2 a mistake in the
input, 3 a node refused or could not be reached.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from nodes.cli.catalog import (
    count,
    federation_options,
    json_option,
    print_json,
    reports_node_failure,
)
from nodes.cli.query import EXIT_NODE_FAILED
from nodes.client.accountability import (
    PROOF_SHOWN,
    UNDER_VERIFICATION,
    AccountabilityClient,
    Case,
    DisputeCases,
)
from nodes.client.client import Client, NodeError
from nodes.department.registry import when
from nodes.shared.accountability import dispute_status, parse_record
from nodes.shared.config import load_federation
from protocols.kinlink.v1 import psi_pb2


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("disputes", help="dispute a node's record and follow the verification")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    raise_ = actions.add_parser("raise", help="report a record you doubt, by its handle")
    federation_options(raise_, node_required=False)
    raise_.add_argument("--dataset", help="the dataset (taken from an evidence value if given)")
    raise_.add_argument(
        "--handle",
        required=True,
        help="the match's record_handle (hex), or an evidence value of the screening's results "
        "as it stands (node/dataset@vN#handle), which names the node and dataset too",
    )
    raise_.add_argument("--reason", required=True, help="what is doubtful or wrong")
    raise_.add_argument("--evidence", required=True, help="where your evidence is (case file)")
    raise_.set_defaults(func=run_raise)

    listing = actions.add_parser("list", help="your disputes and the nodes' resolutions")
    federation_options(listing, node_required=False)
    json_option(listing)
    listing.set_defaults(func=run_list)

    proof = actions.add_parser(
        "proof", help="record that the person showed valid legal proof: the case proceeds"
    )
    federation_options(proof)
    proof.add_argument("--id", type=count, required=True, help="the dispute's number at the node")
    proof.add_argument("--note", required=True, help="what proof was seen (no identity numbers)")
    proof.set_defaults(func=run_proof)


def describe_dispute(dispute: psi_pb2.Dispute, node: str) -> str:
    """One dispute for people, shared with the operator's ``psi node disputes list``."""
    lines = [
        f"dispute {dispute.dispute_id} at {node}/{dispute.dataset_id}: {dispute_status(dispute)} "
        f"(raised {when(dispute.raised_at.seconds)})",
        f"  handle {dispute.record_handle.hex()}",
        f"  reason: {dispute.reason}",
        f"  evidence: {dispute.evidence_ref}",
    ]
    if dispute.HasField("resolved_at"):
        lines.append(f"  resolved {when(dispute.resolved_at.seconds)}: {dispute.resolution_note}")
    return "\n".join(lines)


def _case_line(case: Case, federation: str) -> str:
    if case.state == UNDER_VERIFICATION:
        return (
            "  case: under verification; a person with valid legal proof is served as normal: "
            f"`psi disputes proof --federation {federation} --node {case.node} "
            f"--id {case.dispute_id} --note TEXT`"
        )
    if case.state == PROOF_SHOWN:
        return f"  case: proceeding, legal proof seen {when(case.proof_at)}: {case.proof_note}"
    return f"  case: {case.state}"


@reports_node_failure
def run_raise(args: argparse.Namespace) -> int:
    federation = load_federation(args.federation)
    node, dataset, handle = parse_record(args.handle, args.node, args.dataset)
    with Client(federation) as client:
        accountability = AccountabilityClient(client)
        dispute = accountability.raise_dispute(
            node,
            dataset,
            handle,
            reason=args.reason,
            evidence_ref=args.evidence,
        )
        case = accountability.cases.case(node, dispute.dispute_id)
    print(describe_dispute(dispute, node))
    print(_case_line(case, args.federation))
    return 0


def run_list(args: argparse.Namespace) -> int:
    federation = load_federation(args.federation)
    nodes = [federation.node(args.node).id] if args.node else list(federation.nodes)
    failed = False
    listed: list[dict] = []
    with Client(federation) as client:
        accountability = AccountabilityClient(client)
        for node in nodes:
            try:
                disputes = accountability.disputes(node)
            except NodeError as exc:
                print(f"psi disputes: node failed: {exc}", file=sys.stderr)
                failed = True
                continue
            cases = {c.dispute_id: c for c in accountability.cases.cases(node)}
            if args.json:
                listed += [_case_json(cases[d.dispute_id]) for d in disputes]
                continue
            for dispute in disputes:
                print(describe_dispute(dispute, node))
                print(_case_line(cases[dispute.dispute_id], args.federation))
            if not disputes:
                print(f"no disputes at node {node}")
    if args.json:
        print_json(listed)
    return EXIT_NODE_FAILED if failed else 0


def _case_json(case: Case) -> dict:
    """A dispute as ``list --json`` prints it: civil affairs' record, times in UTC ISO form."""
    return {
        **asdict(case),
        "handle": case.handle.hex(),
        "state": case.state,
        **{
            k: None if getattr(case, k) is None else when(getattr(case, k))
            for k in ("raised_at", "resolved_at", "proof_at")
        },
    }


def run_proof(args: argparse.Namespace) -> int:
    federation = load_federation(args.federation)
    case = DisputeCases.of(federation).proof(federation.node(args.node).id, args.id, args.note)
    print(
        f"dispute {case.dispute_id} at {case.node}/{case.dataset}: legal proof recorded; the "
        "case proceeds as normal while the department verifies"
    )
    return 0
