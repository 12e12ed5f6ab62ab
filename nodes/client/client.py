"""The civil-affairs client: labelled queries to department nodes over mutual TLS.

    client = Client(load_federation("federation.toml"))
    result = client.query("prison", "prison", ids, purpose="screening")
    for person, label in result.matches: ...

Per (node, dataset, epoch, field profile) the client keeps a copy of the node's table, updated by
delta, and the table tag and label key derived from the OPRF output of each identifier it already
asked about, so a rerun evaluates only identifiers it has not seen in that epoch. Each profile has
its own key at the node, so a grant that changes its fields starts a new cache. Several nodes are
queried at once, blinding, evaluation and finalizing overlapping block by block. Labels are
opened when the caller asks for them (``QueryResult.matches`` or ``found``), so a rerun opens only
those whose entries changed. A node that fails raises ``NodeError``: a failure never looks like an
empty result.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import NamedTuple

import grpc
import numpy as np

from nodes.client import sessions
from nodes.client.reach import REACH_SECONDS, likely_cause
from nodes.shared.accountability import request_hint
from nodes.shared.atrest import (
    DamagedFile,
    authenticated,
    file_key,
    private_files,
    private_folder,
    verified,
)
from nodes.shared.audit.log import TreeHead, load_public_key
from nodes.shared.audit.receipts import (
    HeldReceipts,
    ReceiptError,
    receipt_fields,
    tree_head,
    verify_receipt,
)
from nodes.shared.audit.signing import SecretSeal, open_party_log
from nodes.shared.cache import OutputCache, cache_keys
from nodes.shared.config import PER_NODE_BLINDS, FederationConfig
from nodes.shared.tls import channel_credentials
from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc
from protocols.limits import (
    GRPC_OPTIONS,
    MAX_CONSISTENCY_SIZES,
    PROTOCOL_VERSION,
    Reassembler,
    WireError,
    negotiate,
)
from psi.errors import InputError, KinlinkError
from psi.ids import canonical
from psi.labels import Label, profile_name
from psi.matching import Found, lookup_tags
from psi.oprf import Oprf
from psi.table import (
    KEY_BYTES,
    TAG_BYTES,
    Delta,
    Table,
    apply,
    atomic_write,
    derive,
    entry_fingerprints,
)

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# A session to resume that the node no longer holds (closed, expired, restarted) or that the client
# kept wrongly: a new session replaces it.
GONE = (
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
)
CALL_TIMEOUT = 30.0
# Elements per blinding block and per Evaluate message: small enough that nodes start evaluating
# early and answers are finalized while other nodes still compute, large enough to amortise calls.
STREAM_CHUNK = 8192
# What the client keeps per identifier and (node, dataset, epoch, profile): the table tag and label
# key derived from the OPRF output (psi.table.derive), not the output itself. They do not change
# with the table version, so a rerun matches two million identifiers without hashing any again.
DERIVED_BYTES = TAG_BYTES + KEY_BYTES

Progress = Callable[[int], None]
Interceptor = (
    grpc.UnaryUnaryClientInterceptor
    | grpc.UnaryStreamClientInterceptor
    | grpc.StreamUnaryClientInterceptor
    | grpc.StreamStreamClientInterceptor
)


class NodeError(KinlinkError):
    """A node refused or could not be reached; ``code`` is the gRPC status. Given the node's
    ``address``, a failure to reach it names the likely cause instead of gRPC's transport detail
    (``reach.likely_cause``)."""

    def __init__(
        self, node: str, code: grpc.StatusCode | None, details: str, address: str | None = None
    ):
        self.node, self.code = node, code
        name = code.name if code else "ERROR"
        cause = likely_cause(code, details, address) if address else None
        where = f"node {node!r} at {address}" if address else f"node {node!r}"
        super().__init__(f"{where}: {name}: {cause or details}")


class DatasetNotOffered(NodeError):
    """The node offers this client no dataset of that name: a mistake in the input (a misspelt
    name) rather than a refusal; the message lists the datasets it does offer."""


@dataclass(eq=False)
class QueryResult:
    """One dataset's answer about ``ids``. Labels are opened only when asked for: ``matches``
    opens every hit, ``found`` the hits of some identifiers, and ``fingerprints`` tells which
    identifiers' entries changed since an earlier answer without opening any (a rerun opens only
    those)."""

    node: str
    dataset: str
    epoch: int
    table_version: int
    ids: Sequence[str]  # canonical identifiers as queried
    table: Table
    derived: np.ndarray  # (len(ids), DERIVED_BYTES): each identifier's table tag and label key
    evaluated: int  # sent to the node this time; the rest came from the client's cache
    # The sessions' receipts: none when nothing was evaluated, two when a session an earlier run
    # left unfinished was resumed and a new one took the rest.
    receipts: tuple[psi_pb2.SessionReceipt, ...] = ()
    bytes_received: int = 0  # payloads only: evaluated elements and the table or delta
    timings: dict[str, float] = field(default_factory=dict)  # phases, some overlapping others
    seconds: float = 0.0  # from the query's start to this answer: never more than the query's

    @property
    def queried(self) -> int:
        return len(self.ids)

    @property
    def receipt(self) -> psi_pb2.SessionReceipt | None:
        """The last session's receipt (None when nothing was evaluated)."""
        return self.receipts[-1] if self.receipts else None

    @cached_property
    def tags(self) -> np.ndarray:
        return np.ascontiguousarray(self.derived[:, :TAG_BYTES]).view("<u8").reshape(-1)

    @cached_property
    def fingerprints(self) -> np.ndarray:
        """Per identifier, ``psi.table.entry_fingerprints`` of its entry (0: no entry)."""
        return entry_fingerprints(self.table, self.tags)

    def found(self, rows: np.ndarray | None = None) -> list[Found]:
        """The decoded labels of the identifiers at ``rows`` (default: all) that the table
        holds; ``Found.index`` is the identifier's index in ``ids``, ``Found.written`` the table
        version its entry was written in."""
        t = time.perf_counter()
        keys = self.derived[:, TAG_BYTES:]
        if rows is None:
            found, _ = lookup_tags(self.table, self.tags, keys)
        else:
            rows = np.asarray(rows, np.intp)
            hits, _ = lookup_tags(self.table, self.tags[rows], keys[rows])
            where = rows[[f.index for f in hits]].tolist()
            found = [Found(i, f.label, f.written) for i, f in zip(where, hits, strict=True)]
        self.timings["match"] = self.timings.get("match", 0.0) + time.perf_counter() - t
        return found

    @cached_property
    def matches(self) -> list[tuple[str, Label]]:
        """(identifier, label) of every identifier the table holds."""
        return [(self.ids[f.index], f.label) for f in self.found()]


@dataclass
class _Plan:
    node: str
    dataset: str
    epoch: int
    version: int  # negotiated protocol version
    fields: Sequence[str]  # the granted label fields: the field profile, pinned in every request
    cache: OutputCache  # of (node, dataset, epoch, profile); its folder holds the table copy
    derived: np.ndarray  # (n, DERIVED_BYTES): cached rows filled, fresh rows filled by _evaluate
    fresh: np.ndarray  # indices of identifiers to evaluate at the node, ascending
    timings: dict[str, float]
    seconds: float = 0.0  # from the query's start to the node's answer


class _Answer(NamedTuple):
    """What a node returned for a plan: the sessions' receipts (none when nothing was
    evaluated), its current table and the payload bytes received."""

    receipts: tuple[psi_pb2.SessionReceipt, ...]
    table: Table
    received: int


class _Blinder:
    """Blinds identifiers block by block, in a thread of its own, for the nodes it serves: a
    node's stream sends each block as soon as it is ready, so the nodes evaluate while later
    blocks are blinded and earlier answers finalized. Keeps the blinded elements and the
    blinds' inverses (one inversion per identifier, whatever the number of nodes served)."""

    def __init__(self, oprf: Oprf, inputs: list[bytes]):
        self.oprf, self.inputs = oprf, inputs
        self.blinded = np.empty((len(inputs), oprf.suite.element_size), np.uint8)
        self.inverses = np.empty((len(inputs), oprf.suite.scalar_size), np.uint8)
        self.seconds = 0.0
        self._ready = 0
        self._failed = False
        self._changed = threading.Condition()

    def run(self) -> None:
        started = time.perf_counter()
        try:
            for lo in range(0, len(self.inputs), STREAM_CHUNK):
                hi = min(lo + STREAM_CHUNK, len(self.inputs))
                blinds, self.blinded[lo:hi] = self.oprf.blind_batch(self.inputs[lo:hi])
                self.inverses[lo:hi] = self.oprf.invert_blinds(blinds)
                with self._changed:
                    self._ready = hi
                    self._changed.notify_all()
        except BaseException:
            with self._changed:
                self._failed = True
                self._changed.notify_all()
            raise
        finally:
            self.seconds = time.perf_counter() - started

    def wait(self, rows: int) -> None:
        """Until the first ``rows`` are blinded; a failed blinding ends the waiting stream."""
        with self._changed:
            self._changed.wait_for(lambda: self._ready >= rows or self._failed)
            if self._ready < rows:
                raise KinlinkError("blinding failed; the query stopped")


class Client:
    def __init__(
        self,
        config: FederationConfig,
        *,
        oprf: Oprf | None = None,
        retries: int = 4,
        backoff: float = 0.25,
        interceptors: Sequence[Interceptor] = (),
    ):
        """``interceptors`` go on every channel (the benchmarks count bytes with one, tests
        record the wire)."""
        self.config = config
        self._interceptors = tuple(interceptors)
        self.oprf = oprf or Oprf()
        self.retries, self.backoff = retries, backoff
        self._credentials = channel_credentials(config.tls)
        self._channels: dict[str, grpc.Channel] = {}
        private_files()
        private_folder(config.cache)
        secret_file = config.cache / "cache.key"
        if not secret_file.exists():
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(32))
        self._secret = secret_file.read_bytes()
        self._table_key = self.file_key("tables")
        self.audit = open_party_log(config.cache, config.client, SecretSeal(self._secret))
        self.receipts = HeldReceipts(self.audit.path)
        self._node_keys: dict[str, bytes] = {}
        self._caches: dict[tuple[str, str, int, str], OutputCache] = {}
        self._lock = threading.Lock()  # over _channels and _caches
        self._pin_lock = threading.Lock()

    def close(self) -> None:
        with self._lock:  # warm()'s thread may be opening a channel right now
            channels = list(self._channels.values())
            self._channels.clear()
        for channel in channels:
            channel.close()
        self.receipts.close()
        self.audit.close()  # signs a head over this command's entries

    def record(self, node: str, event: dict) -> None:
        """Append to the client's own audit log; a node's free text that the log refuses (it
        looks like an identifier) is dropped, never the event."""
        event = {**{k: v for k, v in event.items() if v != ""}, "peer": {"cn": node}}
        try:
            self.audit.append(event)
        except ValueError:
            self.audit.append({k: v for k, v in event.items() if k not in ("reason", "detail")})

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def file_key(self, purpose: str) -> bytes:
        """The key sealing or authenticating one kind of this client's own files (table
        copies, the screening memo), derived from its cache secret."""
        return file_key(self._secret, purpose)

    def identifier_keys(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Keyed digests, (n, 2) uint64, of canonical identifiers (text or an 'S18' array)
        under this client's cache secret: how the cache names people without naming them."""
        return cache_keys(self._secret, ids)

    # -- plumbing -------------------------------------------------------------------------------
    def channel(self, node: str) -> grpc.Channel:
        """The node's channel (mutual TLS, the wire's message limits, the interceptors), opened
        once: the statistics and accountability clients make their stubs on it."""
        with self._lock:
            if node not in self._channels:
                address = self.config.node(node).address
                channel = grpc.secure_channel(address, self._credentials, GRPC_OPTIONS)
                if self._interceptors:
                    channel = grpc.intercept_channel(channel, *self._interceptors)
                self._channels[node] = channel
            return self._channels[node]

    def _stub(self, node: str) -> psi_pb2_grpc.DepartmentNodeStub:
        return psi_pb2_grpc.DepartmentNodeStub(self.channel(node))

    def _cache(self, node: str, entry: psi_pb2.Dataset) -> OutputCache:
        """The derived-output cache of (node, dataset, epoch, field profile) of a catalogue
        entry, one object per client: the node evaluates each profile under its own key."""
        try:
            profile = profile_name(entry.label_fields)
        except InputError as exc:
            raise NodeError(node, None, f"its catalogue names a bad label field: {exc}") from None
        with self._lock:
            key = (node, entry.dataset_id, entry.key_epoch, profile)
            if key not in self._caches:
                folder = self.config.cache / node / entry.dataset_id / f"e{entry.key_epoch}"
                self._caches[key] = OutputCache(
                    folder / profile / "derived.bin",
                    self._secret,
                    DERIVED_BYTES,
                    context=f"derived/{node}/{entry.dataset_id}/e{entry.key_epoch}/{profile}",
                    remedy="delete it: the next query asks the node again about the "
                    "identifiers it held (charged to the budget)",
                )
            return self._caches[key]

    def warm(self) -> threading.Thread:
        """Start reading and sorting, in a thread, the caches of every dataset the nodes offer
        now, so that a large query which follows (once its caller has read its identifiers)
        starts at once. Failures are left to that query to report."""

        def run() -> None:
            try:
                for node in self.config.nodes:
                    for entry in self.catalogue(node).datasets:
                        cache = self._cache(node, entry)
                        if cache.path.exists():
                            cache.load()
            except Exception:  # it only saves time; the query reports any failure
                return

        thread = threading.Thread(target=run, name="kinlink-warm", daemon=True)
        thread.start()
        return thread

    def failure(self, node: str, exc: grpc.RpcError) -> NodeError:
        """A failed call as ``NodeError``, naming the node's address and, when it could not be
        reached, the likely cause."""
        address = self.config.node(node).address
        return NodeError(node, exc.code(), exc.details() or "", address)

    def call(self, node: str, what: Callable[[], object]) -> object:
        """Run one idempotent call, retrying with exponential backoff while the node is
        unreachable, for at most ``reach.REACH_SECONDS``; any other failure is final."""
        started = time.monotonic()
        for attempt in range(self.retries + 1):
            try:
                return what()
            except grpc.RpcError as exc:
                delay = self.backoff * 2**attempt
                late = time.monotonic() - started + delay > REACH_SECONDS
                if exc.code() in RETRYABLE and attempt < self.retries and not late:
                    time.sleep(delay)
                    continue
                raise self.failure(node, exc) from None
        raise AssertionError("unreachable")

    # -- the service ----------------------------------------------------------------------------
    def catalogue(self, node: str) -> psi_pb2.Catalogue:
        """The node's catalogue; its audit key is pinned on first sight (trust on first use,
        or pre-seeded by placing the node's key in ``<cache>/node-keys/<node>.pem``)."""
        stub = self._stub(node)
        catalogue = self.call(
            node, lambda: stub.GetCatalogue(psi_pb2.CatalogueRequest(), timeout=REACH_SECONDS)
        )
        address = self.config.node(node).address
        if catalogue.node_id != node:
            raise NodeError(
                node,
                None,
                f"the node answering at {address} is {catalogue.node_id!r}, not {node!r}: check "
                f"[nodes.{node}] address in {self.config.path}",
            )
        self._pin(node, address, catalogue.audit_public_key)
        return catalogue

    def _pin(self, node: str, address: str, key: bytes) -> None:
        """Under a lock, and written whole (``atomic_write``): catalogues fetched at once
        (``warm`` beside a screening's plan) must not read a half-written pin as another key."""
        path = self.config.cache / "node-keys" / f"{node}.pem"
        with self._pin_lock:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, [key])
            pinned = path.read_bytes()
        if pinned != key:
            raise NodeError(
                node,
                None,
                f"the node answering at {address} signs with another audit key than the one "
                f"pinned in {path}. First check that {address} ([nodes.{node}] in "
                f"{self.config.path}) is really {node!r}'s address: another node or program may "
                "listen there. Only if the operator confirms, out of band, that the node changed "
                "its key, replace that file",
            )
        self._node_keys[node] = key

    def prove_consistency(
        self, node: str, sizes: Sequence[int]
    ) -> tuple[TreeHead, dict[int, list[bytes]]]:
        """The node's tree head signed now, checked against its pinned audit key, and a
        consistency proof to it from each of ``sizes`` (heads of its log this client holds) that
        it covers, asked in calls of at most ``MAX_CONSISTENCY_SIZES``."""
        self.catalogue(node)  # pins the node's key
        stub = self._stub(node)

        def ask(part: list[int], to: int) -> psi_pb2.ConsistencyProofs:
            request = psi_pb2.ConsistencyRequest(from_sizes=part, to_size=to)
            answer = self.call(node, lambda: stub.ProveConsistency(request, timeout=CALL_TIMEOUT))
            if [p.from_size for p in answer.proofs] != part:
                raise NodeError(node, None, "it answered proofs for other sizes than asked")
            return answer

        wanted = sorted(set(sizes))
        answer = ask(wanted[:MAX_CONSISTENCY_SIZES], 0)
        head = tree_head(answer.head)
        if answer.node_id != node or not head.verify(load_public_key(self._node_keys[node]), node):
            raise NodeError(node, None, "its tree head is not signed by its pinned audit key")
        answers = [answer]
        for lo in range(MAX_CONSISTENCY_SIZES, len(wanted), MAX_CONSISTENCY_SIZES):
            answers.append(ask(wanted[lo : lo + MAX_CONSISTENCY_SIZES], head.size))
        proofs = {  # a size beyond the head has none: its log is shorter than a head it signed
            p.from_size: list(p.hashes)
            for a in answers
            for p in a.proofs
            if p.from_size <= head.size
        }
        self.record(node, {"event": "consistency_proved", "proofs": len(proofs), "outcome": "ok"})
        return head, proofs

    def query(
        self,
        node: str,
        dataset: str,
        ids: Sequence[str],
        *,
        purpose: str,
        legal_basis_ref: str = "",
        progress: Progress | None = None,
    ) -> QueryResult:
        """Which of ``ids`` the node's dataset holds, with their labels. Identifiers are read
        as the command line reads a file (``psi.ids.canonical``: lower-case x, full-width
        digits, separators and 15-digit numbers are accepted; ``result.ids`` and ``matches`` give
        the canonical form); an invalid one is an ``InputError`` saying how many and why."""
        result = self.query_many(
            [(node, dataset)],
            ids,
            purpose=purpose,
            legal_basis_ref=legal_basis_ref,
            progress=progress,
        )[(node, dataset)]
        if isinstance(result, NodeError):
            raise result
        return result

    def query_many(
        self,
        requests: Sequence[tuple[str, str]],
        ids: Sequence[str],
        *,
        purpose: str,
        legal_basis_ref: str = "",
        progress: Progress | None = None,
        progress_by: Mapping[tuple[str, str], Progress] | None = None,
    ) -> dict[tuple[str, str], QueryResult | NodeError]:
        """The same identifiers against several (node, dataset) pairs at once. Identifiers are
        blinded once and the same blinded elements go to every node that needs them, or blinded
        afresh for each node where the federation file asks for per-node blinds (each node sees
        uniformly random elements either way; see docs/threat-model.md). Blinding, the nodes'
        evaluation and finalizing overlap block by block. A failed node's entry is its
        ``NodeError``, so the others' results are not lost. ``ids`` as ``query`` takes them;
        ``progress`` advances once per identifier and dataset answered (from the cache or the
        node), so its total is ``len(ids) * len(requests)``; ``progress_by`` gives a request
        its own (a bar per node), of total ``len(ids)``."""
        started = time.perf_counter()
        ids = canonical(ids)
        bars = progress_by or {}
        keys = self.identifier_keys(ids)
        by_first = np.argsort(keys[:, 0])  # sorted once for every node's cache lookup

        def plan(request: tuple[str, str]) -> _Plan | NodeError:
            try:
                return self._plan(*request, keys, by_first, purpose)
            except NodeError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=max(1, len(requests))) as pool:
            plans = dict(zip(requests, pool.map(plan, requests), strict=True))
        ready = [p for p in plans.values() if isinstance(p, _Plan)]
        blinders = self._blinders(ready, ids)
        for p in ready:  # answered from the cache already
            if bar := bars.get((p.node, p.dataset), progress):
                bar(len(ids) - len(p.fresh))

        def answer(plan: _Plan, blinder: _Blinder, rows: np.ndarray) -> _Answer | NodeError:
            try:
                return self._answer(
                    plan,
                    ids,
                    keys,
                    blinder,
                    rows,
                    purpose,
                    legal_basis_ref,
                    bars.get((plan.node, plan.dataset), progress),
                )
            except NodeError as exc:
                return exc
            finally:
                plan.seconds = time.perf_counter() - started

        distinct = list({id(b): b for b, _ in blinders}.values())
        with ThreadPoolExecutor(max_workers=max(1, len(ready) + len(distinct))) as pool:
            blinding = [pool.submit(b.run) for b in distinct]
            answers = list(pool.map(answer, ready, *zip(*blinders, strict=True)))
            for done in blinding:
                done.result()  # a blinding failure is the caller's, not a node's
        # Labels are opened after every stream has ended (by the caller, when asked for): opening
        # holds the GIL, and run beside the streams it held up each libsodium call of the
        # others' finalizing.
        done = iter(
            [
                a if isinstance(a, NodeError) else self._result(p, ids, a)
                for p, a in zip(ready, answers, strict=True)
            ]
        )
        results = {r: p if isinstance(p, NodeError) else next(done) for r, p in plans.items()}
        for request, result in results.items():
            self._log_lookup(request, result, len(ids), purpose, legal_basis_ref)
        return results

    def _log_lookup(
        self,
        request: tuple[str, str],
        result: QueryResult | NodeError,
        queried: int,
        purpose: str,
        legal_basis_ref: str,
    ) -> None:
        """Log one lookup, however it was answered: a lookup the cache answers sends the node
        nothing, so this entry is its only trace."""
        node, dataset = request
        event = {
            "event": "lookup",
            "dataset": dataset,
            "purpose": purpose,
            "legal_basis_ref": legal_basis_ref,
            "queried": queried,
        }
        if isinstance(result, NodeError):
            code = result.code.name.lower() if result.code else "error"
            self.record(node, {**event, "outcome": code, "reason": str(result)})
            return
        cached = queried - result.evaluated
        answered = [name for name, n in (("node", result.evaluated), ("cache", cached)) if n]
        receipt = {"session_id": result.receipt.session_id} if result.receipt else {}
        self.record(
            node,
            {
                **event,
                **receipt,
                "cached": cached,
                "evaluated": result.evaluated,
                "key_epoch": result.epoch,
                "table_version": result.table_version,
                "answered_by": " and ".join(answered) or "cache",
                "outcome": "ok",
            },
        )

    def _plan(
        self, node: str, dataset: str, keys: np.ndarray, by_first: np.ndarray, purpose: str
    ) -> _Plan:
        """What a query needs from the node: its epoch, and which identifiers have no cached
        output for that epoch yet."""
        started = time.perf_counter()
        catalogue = self.catalogue(node)
        version = negotiate([PROTOCOL_VERSION], catalogue.protocol_versions)
        entry = next((d for d in catalogue.datasets if d.dataset_id == dataset), None)
        if entry is None:
            offered = ", ".join(d.dataset_id for d in catalogue.datasets) or "none"
            raise DatasetNotOffered(
                node,
                grpc.StatusCode.NOT_FOUND,
                f"no dataset {dataset!r} for this client; its datasets: {offered} (if the name "
                f"is right, {request_hint(node, dataset, purpose)})",
            )
        cache = self._cache(node, entry)
        found, derived = cache.lookup(keys, by_first)
        timings = {"plan": time.perf_counter() - started}
        return _Plan(
            node,
            dataset,
            entry.key_epoch,
            version,
            tuple(entry.label_fields),
            cache,
            derived,
            np.flatnonzero(~found),
            timings,
        )

    def _blinders(
        self, plans: Sequence[_Plan], ids: Sequence[str]
    ) -> list[tuple[_Blinder, np.ndarray]]:
        """For each plan, its blinder and the rows of the blinder holding its fresh identifiers:
        one blinder over the union for every node, or one of its own per node (per-node
        blinds)."""
        if self.config.blinds == PER_NODE_BLINDS:
            return [
                (_Blinder(self.oprf, [ids[i].encode() for i in p.fresh]), np.arange(len(p.fresh)))
                for p in plans
            ]
        union = np.unique(np.concatenate([p.fresh for p in plans] or [np.empty(0, np.intp)]))
        shared = _Blinder(self.oprf, [ids[i].encode() for i in union])
        return [(shared, np.searchsorted(union, p.fresh)) for p in plans]

    def _answer(
        self,
        plan: _Plan,
        ids: Sequence[str],
        keys: np.ndarray,
        blinder: _Blinder,
        rows: np.ndarray,
        purpose: str,
        legal_basis_ref: str,
        progress: Progress | None,
    ) -> _Answer:
        """Evaluate the plan's fresh identifiers (``rows`` of the blinder) at the node, finalize
        as answers arrive, cache, fetch the table."""
        receipts = ()
        if len(plan.fresh):
            t = time.perf_counter()
            receipts = self._evaluate(
                plan, ids, keys, blinder, rows, purpose, legal_basis_ref, progress
            )
            plan.timings["evaluate"] = time.perf_counter() - t
            plan.timings["blind"] = blinder.seconds
        t = time.perf_counter()
        table, received = self._table(plan, purpose, legal_basis_ref)
        plan.timings["table"] = time.perf_counter() - t
        if (table.header.dataset, table.header.epoch) != (plan.dataset, plan.epoch):
            raise NodeError(plan.node, None, "the node sent the table of another dataset or epoch")
        return _Answer(receipts, table, received)

    def _result(self, plan: _Plan, ids: Sequence[str], answer: _Answer) -> QueryResult:
        return QueryResult(
            plan.node,
            plan.dataset,
            plan.epoch,
            answer.table.header.version,
            ids,
            answer.table,
            plan.derived,
            len(plan.fresh),
            answer.receipts,
            answer.received + len(plan.fresh) * self.oprf.suite.element_size,
            plan.timings,
            plan.seconds,
        )

    def _evaluate(
        self,
        plan: _Plan,
        ids: Sequence[str],
        keys: np.ndarray,
        blinder: _Blinder,
        rows: np.ndarray,
        purpose: str,
        legal_basis_ref: str,
        progress: Progress | None,
    ) -> tuple[psi_pb2.SessionReceipt, ...]:
        """The plan's fresh identifiers (``rows`` of the blinder) at the node: first in what is
        left of a session an earlier run opened and never closed (it crashed), resumed so that
        nothing is charged twice, then the rest in a new session. Each answer is finalized as it
        arrives and cached at once, so a run that dies keeps what it was answered."""
        stub, folder = self._stub(plan.node), plan.cache.path.parent
        asked = {
            "dataset": plan.dataset,
            "purpose": purpose,
            "legal_basis_ref": legal_basis_ref,
            "declared": len(rows),
            "key_epoch": plan.epoch,
        }
        request = psi_pb2.OpenSessionRequest(
            dataset_id=plan.dataset,
            purpose_code=purpose,
            legal_basis_ref=legal_basis_ref,
            element_count=len(rows),
            suite=self.oprf.suite.name,
            key_epoch=plan.epoch,
            protocol_version=plan.version,
            label_fields=plan.fields,
        )
        stream = partial(self._stream, plan, stub, ids, keys, blinder, rows, progress)
        receipts, done = [], 0
        pending = sessions.recall(folder, purpose, legal_basis_ref)
        if pending is not None:
            request.element_count, request.resume_session_id = pending.declared, pending.session_id
            session = self._open(plan.node, stub, request, {**asked, "declared": pending.declared})
            if session is None:
                sessions.forget(folder, pending.session_id)
            else:
                done = min(len(rows), session.element_count - session.elements_evaluated)
                receipts.append(stream(session, 0, done))
        if done < len(rows):
            request.element_count, request.resume_session_id = len(rows) - done, ""
            session = self._open(plan.node, stub, request, {**asked, "declared": len(rows) - done})
            sessions.remember(folder, sessions.Pending.of(session, purpose, legal_basis_ref))
            receipts.append(stream(session, done, len(rows)))
        return tuple(receipts)

    def _open(
        self, node: str, stub, request: psi_pb2.OpenSessionRequest, asked: dict
    ) -> psi_pb2.Session | None:
        """Open a session, or resume one (``request.resume_session_id``): None when the node no
        longer holds the session to resume (closed, expired, restarted), which a new session
        then replaces; any other refusal is logged and raised."""
        resuming = bool(request.resume_session_id)
        try:
            session = self.call(node, lambda: stub.OpenSession(request, timeout=CALL_TIMEOUT))
        except NodeError as exc:
            self.record(
                node,
                {
                    **asked,
                    **(
                        {"detail": f"resume of session {request.resume_session_id}"}
                        if resuming
                        else {}
                    ),
                    "event": "session_refused",
                    "outcome": exc.code.name.lower() if exc.code else "error",
                    "reason": str(exc),
                },
            )
            if resuming and exc.code in GONE:
                return None
            raise
        if resuming:
            self.record(
                node,
                {
                    **asked,
                    "event": "session_resumed",
                    "session_id": session.session_id,
                    "evaluated": session.elements_evaluated,
                    "chunks": session.chunks_evaluated,
                },
            )
        return session

    def _stream(
        self,
        plan: _Plan,
        stub,
        ids: Sequence[str],
        keys: np.ndarray,
        blinder: _Blinder,
        rows: np.ndarray,
        progress: Progress | None,
        session: psi_pb2.Session,
        start: int,
        stop: int,
    ) -> psi_pb2.SessionReceipt:
        """Evaluate ``rows[start:stop]`` in ``session`` (going on from its chunks evaluated so
        far), blinded blocks streaming out as the blinder produces them, then close it."""
        node, part = plan.node, rows[start:stop]
        per_chunk = min(session.max_elements_per_chunk, STREAM_CHUNK)

        def chunks() -> Iterator[psi_pb2.EvaluateChunk]:
            for i, lo in enumerate(range(0, len(part), per_chunk)):
                block = part[lo : lo + per_chunk]
                blinder.wait(int(block[-1]) + 1)
                yield psi_pb2.EvaluateChunk(
                    session_id=session.session_id if i == 0 else "",
                    sequence=session.chunks_evaluated + i,
                    count=len(block),
                    elements=blinder.blinded[block].tobytes(),
                )

        answers = Reassembler(len(part), self.oprf.suite.element_size, session.chunks_evaluated)
        finalizing = 0.0
        messages = chunks()
        # The stream opens once its first chunk is blinded: a node ends a stream that sends
        # nothing within its first-message deadline ([serve] in node.toml).
        first = next(messages, None)  # None: a resumed session with nothing left to send
        try:
            for reply in stub.Evaluate(itertools.chain([first], messages)) if first else ():
                lo = answers.filled
                answers.add(reply.elements, reply.count, reply.sequence)
                t = time.perf_counter()
                fresh = plan.fresh[start + lo : start + answers.filled]
                outputs = self.oprf.finalize_inverted(
                    [ids[i].encode() for i in fresh],
                    blinder.inverses[part[lo : answers.filled]],
                    answers.array[lo : answers.filled],
                    progress=progress,
                )
                tags, label_keys = derive(plan.dataset, plan.epoch, outputs)
                plan.derived[fresh, :TAG_BYTES] = tags.astype("<u8").view(np.uint8).reshape(-1, 8)
                plan.derived[fresh, TAG_BYTES:] = label_keys
                plan.cache.put(keys[fresh], plan.derived[fresh])  # kept, should the run die
                finalizing += time.perf_counter() - t
            answers.result()
        except grpc.RpcError as exc:
            raise self.failure(node, exc) from None
        except WireError as exc:
            raise NodeError(node, None, f"the answer broke the wire contract: {exc}") from None
        plan.timings["finalize"] = plan.timings.get("finalize", 0.0) + finalizing
        receipt = self.call(
            node,
            lambda: stub.CloseSession(
                psi_pb2.CloseSessionRequest(session_id=session.session_id), timeout=CALL_TIMEOUT
            ),
        )
        sessions.forget(plan.cache.path.parent, session.session_id)
        try:
            verify_receipt(receipt, self._node_keys[node])
        except ReceiptError as exc:
            raise NodeError(node, None, str(exc)) from None
        self.receipts.keep(receipt)
        self.record(
            node,
            {
                "event": "receipt_received",
                **receipt_fields(receipt),
                "detail": f"signed tree head of size {receipt.tree_head.size}",
            },
        )
        return receipt

    def _table(self, plan: _Plan, purpose: str, legal_basis_ref: str) -> tuple[Table, int]:
        """The node's current table of the plan's field profile, from the local copy (beside the
        profile's cache) plus a delta when there is one; a copy that fails its authenticator is
        dropped and the table fetched whole."""
        node, dataset, folder = plan.node, plan.dataset, plan.cache.path.parent
        path = folder / "table.kltb"
        held = self._held_table(node, path)
        since = held.header.version if held else 0
        stub = self._stub(node)

        def fetch() -> tuple[psi_pb2.TableHeader, bytes]:
            stream = stub.FetchTable(
                psi_pb2.FetchTableRequest(
                    dataset_id=dataset,
                    key_epoch=plan.epoch,
                    since_version=since,
                    purpose_code=purpose,
                    legal_basis_ref=legal_basis_ref,
                    label_fields=plan.fields,
                )
            )
            header, payload = None, bytearray()
            for chunk in stream:
                if chunk.HasField("header"):
                    header = chunk.header
                    continue
                if header is None or len(payload) + len(chunk.data) > header.total_bytes:
                    raise NodeError(node, None, "table stream broke the wire contract")
                payload += chunk.data
            if header is None or len(payload) != header.total_bytes:
                raise NodeError(node, None, "table stream ended early")
            if hashlib.sha256(payload).digest() != header.sha256:
                raise NodeError(node, None, "table payload does not match its SHA-256")
            return header, bytes(payload)

        header, payload = self.call(node, fetch)
        self.record(
            node,
            {
                "event": "table_fetched",
                "dataset": dataset,
                "purpose": purpose,
                "legal_basis_ref": legal_basis_ref,
                "key_epoch": header.key_epoch,
                "table_version": header.version,
                "base_version": header.base_version,
                "bytes": len(payload),
            },
        )
        if header.version == since and held is not None:
            return held, len(payload)
        if header.base_version:
            if held is None or header.base_version != since:
                raise NodeError(node, None, "node sent a delta from a version this client lacks")
            table = apply(held, Delta.from_bytes(payload, f"{node}/{dataset} delta"))
        else:
            table = Table.from_bytes(payload, f"{node}/{dataset} table")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, authenticated(table.iter_chunks(), self._table_key, self._name(path)))
        return table, len(payload)

    def _name(self, path: Path) -> str:
        """What a table copy's MAC binds: its place in the cache (node, dataset, epoch)."""
        return path.relative_to(self.config.cache).as_posix()

    def _held_table(self, node: str, path: Path) -> Table | None:
        if not path.exists():
            return None
        try:
            body = verified(path, self._table_key, self._name(path), "fetched again")
        except DamagedFile as error:
            self.record(
                node, {"event": "table_fetched", "outcome": "copy_damaged", "detail": str(error)}
            )
            path.unlink()
            return None
        return Table.from_bytes(body, str(path))
