"""The client's side of the statistics (``kinlink.v1.Statistics``): how many of its identifiers a
node's dataset holds, and sums or per-group totals of its own values over them, without either
side learning which people match.

    with Client(load_federation("federation.toml")) as client:
        result = StatsClient(client).run("prison", "prison", ids, values=days, purpose="statistics")

It rides on a ``nodes.client.client.Client``: its channels, catalogue and pinned audit key, retries
of unary calls and audit log. The Paillier key is fresh per run and never leaves this process but
for its public half. ``psi.stats`` has the protocol steps; docs/statistics.md says who learns what.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import numpy as np

from nodes.client.client import CALL_TIMEOUT, Client, DatasetNotOffered, NodeError
from nodes.shared.accountability import request_hint
from protocols.kinlink.v1 import psi_pb2, stats_pb2, stats_pb2_grpc
from protocols.limits import (
    PROTOCOL_VERSION,
    Reassembler,
    WireError,
    chunk_elements,
    element_messages,
    negotiate,
    unpack,
)
from psi import paillier
from psi.errors import CryptoError, InputError
from psi.ids import canonical
from psi.stats import (
    CARDINALITY,
    GROUPED_SUM,
    INTERSECTION_SUM,
    MAX_VALUE,
    Blinder,
    SumLayout,
    count_common,
    decrypt_sums,
    encrypt_pairs,
    pair_chunks,
    shuffled,
)


@dataclass(frozen=True)
class GroupTotal:
    count: int  # identifiers of the group in the intersection
    sum: int | None  # their values' sum; None without values


@dataclass
class StatsResult:
    node: str
    dataset: str
    protocol: str
    queried: int  # |X|: distinct identifiers sent
    node_set_size: int  # |Y|
    intersection: int  # |X ∩ Y|
    total: int | None = None  # the sum over the intersection, where values were given
    groups: dict[str, GroupTotal] | None = None  # grouped sums, by group label
    timings: dict[str, float] = field(default_factory=dict)


class StatsClient:
    """Runs one statistics protocol per call over ``client``'s channels. ``key_bits``: the
    Paillier modulus (a node may ask for more; see its catalogue's ``min_key_bits``)."""

    def __init__(
        self,
        client: Client,
        *,
        key_bits: int = paillier.DEFAULT_KEY_BITS,
        workers: int | None = None,
    ):
        self.client, self.key_bits, self.workers = client, key_bits, workers

    def _stub(self, node: str) -> stats_pb2_grpc.StatisticsStub:
        return stats_pb2_grpc.StatisticsStub(self.client.channel(node))

    def run(
        self,
        node: str,
        dataset: str,
        ids: Sequence[str],
        *,
        purpose: str,
        values: Sequence[int] | None = None,
        groups: Sequence[str] | None = None,
        legal_basis_ref: str = "",
    ) -> StatsResult:
        """Cardinality (``ids`` alone), intersection-sum (with ``values``) or grouped sums (with
        ``groups``: counts per group, and sums per group with ``values`` too). ``ids`` are
        distinct people, read as ``Client.query`` reads them; ``values`` integers in [0,
        ``psi.stats.MAX_VALUE``]; both lists align with ``ids``.
        """
        ids = canonical(ids)
        if groups is not None:
            protocol = GROUPED_SUM
        else:
            protocol = CARDINALITY if values is None else INTERSECTION_SUM
        _check_inputs(ids, values, groups)
        labels = sorted(set(groups)) if groups is not None else []
        offer, versions = self._offer(node, dataset, purpose, protocol)
        if len(labels) > offer.max_groups:
            raise InputError(
                f"{len(labels)} groups; {node}/{dataset} sums at most {offer.max_groups} per run: "
                f"group by a coarser column, or split the file into runs of at most "
                f"{offer.max_groups} groups each"
            )
        timings: dict[str, float] = {}
        started = time.perf_counter()
        key = layout = None
        if protocol != CARDINALITY:
            key = paillier.generate(max(self.key_bits, offer.min_key_bits))
            layout = SumLayout.plan(
                groups=max(len(labels), 1),
                max_value=None if values is None else max(values, default=0),
                elements=len(ids),
                counts=protocol == GROUPED_SUM,
                key_bits=key.public.bits,
            )
            timings["keygen"] = time.perf_counter() - started
        session = self._open(
            node,
            stats_pb2.OpenStatisticsRequest(
                dataset_id=dataset,
                purpose_code=purpose,
                legal_basis_ref=legal_basis_ref,
                protocol=protocol,
                element_count=len(ids),
                protocol_version=negotiate([PROTOCOL_VERSION], versions),
                paillier_public_key=key.public.to_bytes() if key else b"",
                ciphertexts_per_element=layout.per_element if layout else 0,
                groups=len(labels),
            ),
        )
        blinder = Blinder(workers=self.workers)
        t = time.perf_counter()
        node_set = self._node_set(node, session, blinder)
        timings["node_set"] = time.perf_counter() - t
        result = StatsResult(
            node, dataset, protocol, len(ids), session.node_set_size, 0, timings=timings
        )
        encoded = [x.encode() for x in ids]
        if key is None:
            t = time.perf_counter()
            mine = shuffled(blinder.hash_blind(encoded))
            timings["blind"] = time.perf_counter() - t
            t = time.perf_counter()
            result.intersection = count_common(self._cardinality(node, session, mine), node_set)
            timings["exchange"] = time.perf_counter() - t
            return result
        index = {label: i for i, label in enumerate(labels)}
        slots = [index[g] for g in groups] if groups is not None else [0] * len(ids)
        try:
            t = time.perf_counter()
            pairs = encrypt_pairs(blinder, key.public, layout, encoded, slots, values)
            timings["blind_and_encrypt"] = time.perf_counter() - t
            t = time.perf_counter()
            answer = self._sum(node, session, shuffled(node_set), layout, key.public, *pairs)
            timings["exchange"] = time.perf_counter() - t
        finally:
            key.public.close()
        t = time.perf_counter()
        self._totals(result, answer, key, layout, labels)
        timings["decrypt"] = time.perf_counter() - t
        return result

    @staticmethod
    def _totals(
        result: StatsResult,
        answer: stats_pb2.SumResult,
        key: paillier.PrivateKey,
        layout: SumLayout,
        labels: list[str],
    ) -> None:
        """Decrypt the node's sums into ``result``: the total, and per-group totals."""
        try:
            sums, counts = decrypt_sums(key, layout, answer.sums)
        except (CryptoError, ValueError) as exc:
            raise NodeError(
                result.node, None, f"its sums do not decrypt as agreed: {exc}"
            ) from None
        result.intersection = answer.intersection_size
        if counts is None:
            result.total = sums[0]
            return
        if sum(counts) != answer.intersection_size:
            raise NodeError(
                result.node, None, "its intersection size differs from the decrypted counts"
            )
        result.groups = {
            label: GroupTotal(counts[i], sums[i] if sums is not None else None)
            for i, label in enumerate(labels)
        }
        result.total = sum(sums) if sums is not None else None

    # -- the calls --------------------------------------------------------------------------------
    def _offer(
        self, node: str, dataset: str, purpose: str, protocol: str
    ) -> tuple[psi_pb2.StatisticsOffer, Sequence[int]]:
        """The dataset's statistics offer to this client and the node's protocol versions, from
        the catalogue (which also pins the node's audit key); a refusal that says how to ask
        where the offer lacks the protocol or purpose. The node checks again: it decides."""
        catalogue = self.client.catalogue(node)
        entry = next((d for d in catalogue.datasets if d.dataset_id == dataset), None)
        if entry is None:
            offered = ", ".join(d.dataset_id for d in catalogue.datasets) or "none"
            raise DatasetNotOffered(
                node,
                grpc.StatusCode.NOT_FOUND,
                f"no dataset {dataset!r} for this client; its datasets: {offered}",
            )
        offer = entry.statistics
        if protocol not in offer.protocols or purpose not in offer.purposes:
            allowed = ", ".join(offer.protocols) or "none"
            purposes = ", ".join(offer.purposes) or "none"
            # Asking helps only where the dataset serves the protocol: else no approval can.
            served = protocol in offer.protocols
            hint = "; " + request_hint(node, dataset, purpose) if served else ""
            raise NodeError(
                node,
                grpc.StatusCode.PERMISSION_DENIED,
                f"dataset {dataset!r} offers this client the statistics {allowed} under the "
                f"purposes {purposes}, not {protocol} for {purpose!r}{hint}",
            )
        return offer, catalogue.protocol_versions

    def _open(self, node: str, request: stats_pb2.OpenStatisticsRequest):
        stub = self._stub(node)
        asked = {
            "dataset": request.dataset_id,
            "purpose": request.purpose_code,
            "legal_basis_ref": request.legal_basis_ref,
            "protocol": request.protocol,
            "declared": request.element_count,
        }
        try:
            session = self.client.call(
                node, lambda: stub.OpenStatistics(request, timeout=CALL_TIMEOUT)
            )
        except NodeError as exc:
            self.client.record(
                node,
                {
                    **asked,
                    "event": "session_refused",
                    "outcome": exc.code.name.lower() if exc.code else "error",
                    "reason": str(exc),
                },
            )
            raise
        self.client.record(
            node,
            {
                **asked,
                "event": "session_opened",
                "session_id": session.session_id,
                "key_epoch": session.key_epoch,
                "set_size": session.node_set_size,
            },
        )
        return session

    def _node_set(self, node: str, session, blinder: Blinder) -> np.ndarray:
        """a·(b·H(y)) for the node's whole set, blinded chunk by chunk as it arrives."""
        stub = self._stub(node)
        width = blinder.suite.element_size
        received = Reassembler(session.node_set_size, width)
        with _errors(self.client, node):
            for chunk in stub.FetchNodeSet(stats_pb2.NodeSetRequest(session_id=session.session_id)):
                block = blinder.blind(unpack(chunk.elements, chunk.count, width))
                received.add(block.tobytes(), chunk.count, chunk.sequence)
            return received.result()

    def _cardinality(self, node: str, session, mine: np.ndarray) -> np.ndarray:
        """Sends a·H(x); returns b·a·H(x) in the node's new order."""
        stub = self._stub(node)

        chunks = element_messages(
            stats_pb2.ElementChunk, session.session_id, mine, session.max_elements_per_chunk
        )
        answers = Reassembler(len(mine), mine.shape[1])
        with _errors(self.client, node):
            for reply in stub.Cardinality(chunks):
                answers.add(reply.elements, reply.count, reply.sequence)
            return answers.result()

    def _sum(
        self,
        node: str,
        session,
        node_set: np.ndarray,
        layout: SumLayout,
        public: paillier.PublicKey,
        elements: np.ndarray,
        ciphertexts: list[int],
    ) -> stats_pb2.SumResult:
        """Sends the node's set re-blinded and re-shuffled, then the pairs; the encrypted sums."""
        stub = self._stub(node)
        blocks = (
            {"node_set": stats_pb2.ElementBlock(count=len(b), elements=b.tobytes())}
            for b in chunk_elements(node_set, session.max_elements_per_chunk)
        )
        pairs = (
            {"pairs": stats_pb2.PairBlock(count=len(e), elements=e.tobytes(), ciphertexts=c)}
            for e, c in pair_chunks(
                elements, ciphertexts, public, layout.per_element, session.max_pairs_per_chunk
            )
        )

        def chunks() -> Iterator[stats_pb2.SumChunk]:
            for sequence, part in enumerate(itertools.chain(blocks, pairs)):
                yield stats_pb2.SumChunk(
                    session_id=session.session_id if sequence == 0 else "",
                    sequence=sequence,
                    **part,
                )

        with _errors(self.client, node):
            return stub.IntersectionSum(chunks())


@contextmanager
def _errors(client: Client, node: str) -> Iterator[None]:
    """A failed stream or a broken answer as ``NodeError``: never a partial result."""
    try:
        yield
    except grpc.RpcError as exc:
        raise client.failure(node, exc) from None
    except (WireError, CryptoError) as exc:
        raise NodeError(node, None, f"the node broke the protocol: {exc}") from None


def _check_inputs(
    ids: Sequence[str], values: Sequence[int] | None, groups: Sequence[str] | None
) -> None:
    if len(set(ids)) != len(ids):
        raise InputError("identifiers must be distinct: each person is counted once")
    for name, column in (("values", values), ("groups", groups)):
        if column is not None and len(column) != len(ids):
            raise InputError(f"{len(column)} {name} for {len(ids)} identifiers")
    if values is not None and any(not 0 <= v <= MAX_VALUE for v in values):
        raise InputError(f"values must be integers from 0 to {MAX_VALUE}")
