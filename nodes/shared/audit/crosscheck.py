"""The cross-check between a client's log and a node's: receipts, keys and the node's history.

Receipts: every ``receipt_received`` the client logged from the node against every
``receipt_issued`` the node logged to the client; both must account for every session, with the
same counts.

History, in the manner of Certificate Transparency's gossip (RFC 9162 section 8.1.4): the client
keeps every receipt whole (``receipts.HeldReceipts``), and each carries a tree head of the node's
log signed after the session. Root on the node can rewrite its log and re-sign every head with
the node's key, and the log then verifies on its own; but it cannot make the new history
consistent with the heads the client already holds. Each held head is checked by an RFC 9162
section 2.1.4 consistency proof against a later head: the node log file's own tree (computed
here) and, when asked, the head the node signs now (``ProveConsistency``). A head that fails
locates the rewrite: after the largest held head that still holds, and before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nodes.shared.audit.log import LogContents, read_log
from nodes.shared.audit.merkle import MerkleTree, verify_consistency
from nodes.shared.audit.receipts import held_receipts, tree_head
from protocols.kinlink.v1 import psi_pb2
from psi.errors import InputError

# What both parties' receipt events carry and must agree on.
RECEIPT_FIELDS = (
    "dataset",
    "purpose",
    "legal_basis_ref",
    "key_epoch",
    "table_version",
    "declared",
    "evaluated",
    "chunks",
)

Prover = Callable[[int], Sequence[bytes]]  # size of a held head -> proof to the later head


@dataclass(frozen=True)
class Difference:
    session_id: str  # "" when the finding concerns the whole log
    # "missing-at-node", "missing-at-client", "differs", "duplicate", "not-kept", "key",
    # "rewritten" or "cut-off"
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"session {self.session_id}" if self.session_id else "log"
        return f"{where}: {self.message} [{self.kind}]"


@dataclass
class CrossCheck:
    client: str
    node: str
    matched: int = 0  # receipts present and equal on both sides
    heads: int = 0  # heads the client holds, each checked against the node's history
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def _receipts(
    contents: LogContents, event: str, peer: str, side: str, check: CrossCheck
) -> dict[str, dict[str, Any]]:
    """The receipts ``contents`` logged with ``peer``, by session; a repeat is a difference."""
    found: dict[str, dict[str, Any]] = {}
    for e in contents.entries:
        if e["event"] != event or e.get("peer", {}).get("cn") != peer:
            continue
        sid = e.get("session_id", "")
        if sid in found:
            check.differences.append(
                Difference(sid, "duplicate", f"the {side} logged this receipt more than once")
            )
        found[sid] = e
    return found


def cross_check(client_log: Path, node_log: Path) -> CrossCheck:
    """The receipts and the held heads of a client's log against a node's log. Each log's owner
    is its party's certificate name, which the other party logs as ``peer.cn``."""
    client, node = read_log(client_log), read_log(node_log)
    for path, contents, role, wrong in (
        (client_log, client, "client", "receipt_issued"),
        (node_log, node, "node", "receipt_received"),
    ):
        if any(e["event"] == wrong for e in contents.entries):
            raise InputError(
                f"{path} logs {wrong} events, so it is not a {role}'s log "
                "(the order is CLIENT_LOG NODE_LOG)"
            )
    check = CrossCheck(client.owner, node.owner)
    held = _receipts(client, "receipt_received", node.owner, "client", check)
    issued = _receipts(node, "receipt_issued", client.owner, "node", check)
    for sid in sorted(held.keys() - issued.keys()):
        check.differences.append(
            Difference(sid, "missing-at-node", "the client holds a receipt the node never logged")
        )
    for sid in sorted(issued.keys() - held.keys()):
        check.differences.append(
            Difference(sid, "missing-at-client", "the node logged a receipt the client never did")
        )
    for sid in sorted(held.keys() & issued.keys()):
        differing = [
            f"{name}: client {held[sid].get(name)!r}, node {issued[sid].get(name)!r}"
            for name in RECEIPT_FIELDS
            if held[sid].get(name) != issued[sid].get(name)
        ]
        if differing:
            check.differences.append(Difference(sid, "differs", "; ".join(differing)))
        else:
            check.matched += 1
    kept = held_receipts(client_log, node.owner)
    if kept is None:  # a log from before clients kept receipts: its receipts are checked above
        return check
    for sid in sorted(held.keys() - {r.session_id for r in kept}):
        check.differences.append(
            Difference(sid, "not-kept", "the client logged this receipt but no longer holds it")
        )
    check.heads = len(kept)
    _check_key(kept, node, check)
    tree = MerkleTree(node.leaves)
    check_history(
        kept,
        len(tree),
        tree.root(),
        lambda size: tree.consistency_proof(size, len(tree)),
        f"the node's log file ({len(tree)} entries)",
        check,
    )
    return check


def _check_key(kept: list[psi_pb2.SessionReceipt], node: LogContents, check: CrossCheck) -> None:
    keys = sorted({r.signing_key_id for r in kept} - {node.key_fingerprint})
    if keys:
        check.differences.append(
            Difference(
                "",
                "key",
                f"the node's log declares signing key sha256:{node.key_fingerprint}, another key "
                f"than sha256:{', sha256:'.join(keys)}, which signed receipts {check.client} "
                "holds: the log was re-signed, or the node's key replaced",
            )
        )


def _when(receipt: psi_pb2.SessionReceipt) -> str:
    stamp = datetime.fromtimestamp(receipt.tree_head.timestamp_ms / 1000, UTC)
    return stamp.isoformat(timespec="seconds")


def check_history(
    kept: Sequence[psi_pb2.SessionReceipt],
    size: int,
    root: bytes,
    prove: Prover,
    later: str,
    check: CrossCheck,
) -> None:
    """Prove every held head (``kept``, by size) consistent with the later head ``size``/``root``
    described by ``later``. A head that is not locates the rewrite: in the entries after the
    largest held head below it that is, up to its own size."""
    holds: list[int] = []
    for receipt in kept:
        head = tree_head(receipt.tree_head)
        if head.size <= size and verify_consistency(
            head.size, size, head.root_hash, root, prove(head.size)
        ):
            holds.append(head.size)
            continue
        since = max((n for n in holds if n < head.size), default=0)
        where = f"entries {since}..{head.size - 1}"
        signed = f"the head of {head.size} entries the node signed at {_when(receipt)}"
        if head.size > size:
            kind = "cut-off"
            message = (
                f"{later} is shorter than {signed}: {where} were removed or rewritten after it "
                "was signed"
            )
        else:
            kind = "rewritten"
            message = (
                f"no consistency proof from {signed} to {later}: its history was rewritten in "
                f"{where} after that head was signed"
            )
        check.differences.append(Difference(receipt.session_id, kind, message))
