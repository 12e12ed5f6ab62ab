"""A node's durable record of what it was asked outside the catalogue and what it was told was
wrong (POLICY.md mechanisms 4 and 5): clients' access requests and their decisions, the grants
approved from them, and clients' disputes with their resolutions.

It lives in the node's state folder as ``registry.sqlite``, shared by the running server and the
operator's commands, which are separate processes: the server reads it on every call that needs
it (about 20 µs), so an approval or a withdrawal made on the command line is in force for the very
next call, without a restart.

Approved grants sit beside ``node.toml``'s: for a client and dataset the latest approval wins
(``Registry.grant``), and it always includes what the client held before, because an approval only
ever adds purposes and fields. The field profiles to build are node.toml's and the approvals'
(``Registry.profiles``); records withdrawn through a dispute are left out of every later table
(``Registry.without_withdrawn``). Both are called by ``nodes.department.state.NodeState``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from nodes.department.register import Register
from nodes.shared.config import Grant, Limits, NodeConfig
from nodes.shared.store import Store
from psi.errors import InputError
from psi.labels import record_handle

RESOLUTIONS = ("confirmed", "corrected", "withdrawn")  # how an open dispute ends
EPOCH_MONTHS = 12  # a key epoch lives at most a year (docs/operator-guide.md, rotation)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS access_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client TEXT NOT NULL,
    dataset TEXT NOT NULL,
    purposes TEXT NOT NULL,
    fields TEXT NOT NULL,
    volume INTEGER NOT NULL,
    legal_basis_ref TEXT NOT NULL,
    justification TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    filed_at INTEGER NOT NULL,
    decided_at INTEGER,
    note TEXT NOT NULL DEFAULT '',
    catalogue_version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS grants (
    request_id INTEGER PRIMARY KEY REFERENCES access_requests (id),
    client TEXT NOT NULL,
    dataset TEXT NOT NULL,
    purposes TEXT NOT NULL,
    fields TEXT NOT NULL,
    per_session INTEGER,
    per_day INTEGER,
    per_epoch INTEGER
);
CREATE INDEX IF NOT EXISTS grants_key ON grants (client, dataset);
CREATE TABLE IF NOT EXISTS disputes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client TEXT NOT NULL,
    dataset TEXT NOT NULL,
    handle BLOB NOT NULL,
    reason TEXT NOT NULL,
    evidence_ref TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    raised_at INTEGER NOT NULL,
    resolved_at INTEGER,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS disputes_key ON disputes (dataset, status);
"""


class NotFound(InputError):
    """No such request or dispute (for this client)."""


class Conflict(InputError):
    """The request or dispute exists already, or was decided already."""


def when(seconds: int | None) -> str:
    """A stored time for people: UTC, to the second."""
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class AccessRecord:
    """A client's request for access, as filed and as decided."""

    id: int
    client: str
    dataset: str
    purposes: tuple[str, ...]
    fields: frozenset[str]
    volume: int  # identifiers per month the client expects to query
    legal_basis_ref: str
    justification: str
    status: str  # pending, approved or rejected
    filed_at: int
    decided_at: int | None
    note: str  # the operator's reason for a rejection
    catalogue_version: int  # the version an approval created; 0 otherwise


@dataclass(frozen=True)
class DisputeRecord:
    """A client's dispute of one record, named by its handle, and its resolution."""

    id: int
    client: str
    dataset: str
    handle: bytes
    reason: str
    evidence_ref: str
    status: str  # open, or one of RESOLUTIONS
    raised_at: int
    resolved_at: int | None
    note: str


@dataclass(frozen=True)
class Approval:
    request: AccessRecord
    grant: Grant
    new_profile: bool  # no table of the grant's field set is built yet: `psi node build` first


_REQUEST_COLUMNS = (
    "id, client, dataset, purposes, fields, volume, legal_basis_ref, justification, status, "
    "filed_at, decided_at, note, catalogue_version"
)
_DISPUTE_COLUMNS = (
    "id, client, dataset, handle, reason, evidence_ref, status, raised_at, resolved_at, note"
)


def _request(row: tuple) -> AccessRecord:
    purposes, fields = json.loads(row[3]), json.loads(row[4])
    return AccessRecord(row[0], row[1], row[2], tuple(purposes), frozenset(fields), *row[5:])


def _grant(row: tuple) -> Grant:
    client, dataset, purposes, fields, *limits = row
    purposes, fields = tuple(json.loads(purposes)), frozenset(json.loads(fields))
    return Grant(client, (dataset,), purposes, fields, Limits(*limits))


def _where(client: str | None, ids: Sequence[int], status: str | None) -> tuple[str, list]:
    clauses, values = [], []
    if client is not None:
        clauses.append("client = ?")
        values.append(client)
    if ids:
        clauses.append(f"id IN ({','.join('?' * len(ids))})")
        values.extend(ids)
    if status is not None:
        clauses.append("status = ?")
        values.append(status)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), values


def _missing(
    kind: str, asked: Sequence[int], found: Iterable[int], client: str | None = None
) -> None:
    missing = sorted(set(asked) - set(found))
    if missing:
        whose = f" of client {client!r}" if client else ""
        raise NotFound(f"no {kind} {', '.join(map(str, missing))}{whose} on this node")


def approved_limits(given: Limits, current: Grant | None, volume: int) -> Limits:
    """The budget of an approved grant, window by window: what the operator gave; else what the
    client holds on the dataset already; else from the request's monthly volume (one month per
    session and per day, a year's per key epoch)."""
    if current is not None:
        fallback = current.limits
    elif volume:
        fallback = Limits(volume, volume, EPOCH_MONTHS * volume)
    elif None in astuple(given):
        raise InputError(
            "the request states no monthly volume: give --per-session, --per-day and --per-epoch"
        )
    else:
        return given
    pairs = zip(astuple(given), astuple(fallback), strict=True)
    return Limits(*(g if g is not None else f for g, f in pairs))


class Registry:
    """The node's ``registry.sqlite``; cheap to create, touches the disk only when called."""

    def __init__(self, state: Path):
        self._store = Store(state / "registry.sqlite", _SCHEMA)

    # -- catalogue requests (mechanism 4) ---------------------------------------------------------
    def file_request(
        self,
        client: str,
        dataset: str,
        purposes: Sequence[str],
        fields: frozenset[str],
        volume: int,
        legal_basis_ref: str,
        justification: str,
    ) -> AccessRecord:
        """Store a pending request; a client has at most one pending request per dataset."""
        with self._store.transaction() as db:
            pending = db.execute(
                "SELECT id FROM access_requests WHERE client = ? AND dataset = ? "
                "AND status = 'pending'",
                (client, dataset),
            ).fetchone()
            if pending:
                raise Conflict(
                    f"request {pending[0]} for dataset {dataset!r} is still pending; wait for the "
                    "operator's decision"
                )
            cursor = db.execute(
                "INSERT INTO access_requests (client, dataset, purposes, fields, volume, "
                "legal_basis_ref, justification, filed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    client,
                    dataset,
                    json.dumps(list(purposes)),
                    json.dumps(sorted(fields)),
                    volume,
                    legal_basis_ref,
                    justification,
                    int(time.time()),
                ),
            )
            return self._requests(db, [cursor.lastrowid])[0]

    def requests(
        self, client: str | None = None, ids: Sequence[int] = (), status: str | None = None
    ) -> list[AccessRecord]:
        """Requests oldest first, of one client or all; each id asked must exist (NotFound)."""
        with self._store.connection() as db:
            found = self._requests(db, ids, client, status)
        _missing("access request", ids, (r.id for r in found), client)
        return found

    @staticmethod
    def _requests(
        db: sqlite3.Connection,
        ids: Sequence[int],
        client: str | None = None,
        status: str | None = None,
    ) -> list[AccessRecord]:
        where, values = _where(client, ids, status)
        rows = db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM access_requests{where} ORDER BY id", values
        )
        return [_request(row) for row in rows]

    def _pending(self, db: sqlite3.Connection, request_id: int) -> AccessRecord:
        found = self._requests(db, [request_id])
        _missing("access request", [request_id], (r.id for r in found))
        if found[0].status != "pending":
            raise Conflict(f"request {request_id} is already {found[0].status}")
        return found[0]

    def approve(self, request_id: int, config: NodeConfig, given: Limits) -> Approval:
        """Grant what the request asked, on top of what the client already holds, and raise the
        catalogue version; in force for the server's next call."""
        with self._store.transaction() as db:
            request = self._pending(db, request_id)
            dataset = config.datasets.get(request.dataset)
            if dataset is None:
                raise InputError(f"dataset {request.dataset!r} is no longer in {config.path}")
            problem = dataset.unservable(request.purposes)
            if problem:
                raise Conflict(f"request {request_id}: {problem}; reject it with a reason")
            current = self._effective(db, config, request.client, request.dataset)
            held_purposes = current.purposes if current else ()
            grant = Grant(
                request.client,
                (request.dataset,),
                tuple(dict.fromkeys((*held_purposes, *request.purposes))),
                request.fields | (current.fields if current else frozenset()),
                approved_limits(given, current, request.volume),
            )
            new_profile = grant.fields not in self._profiles(db, config, request.dataset)
            version = self._catalogue_version(db) + 1
            db.execute(
                "UPDATE access_requests SET status = 'approved', decided_at = ?, "
                "catalogue_version = ? WHERE id = ?",
                (int(time.time()), version, request_id),
            )
            db.execute(
                "INSERT INTO grants VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    grant.client,
                    request.dataset,
                    json.dumps(list(grant.purposes)),
                    json.dumps(sorted(grant.fields)),
                    *astuple(grant.limits),
                ),
            )
            return Approval(self._requests(db, [request_id])[0], grant, new_profile)

    def reject(self, request_id: int, reason: str) -> AccessRecord:
        with self._store.transaction() as db:
            self._pending(db, request_id)
            db.execute(
                "UPDATE access_requests SET status = 'rejected', decided_at = ?, note = ? "
                "WHERE id = ?",
                (int(time.time()), reason, request_id),
            )
            return self._requests(db, [request_id])[0]

    def catalogue_version(self) -> int:
        with self._store.connection() as db:
            return self._catalogue_version(db)

    @staticmethod
    def _catalogue_version(db: sqlite3.Connection) -> int:
        """1 before any approval; each approval stores the version it created."""
        row = db.execute("SELECT MAX(catalogue_version) FROM access_requests").fetchone()
        return max(row[0] or 0, 1)

    def grant(self, config: NodeConfig, client: str, dataset: str) -> Grant | None:
        """The grant in force: the client's latest approval on the dataset, else node.toml's."""
        with self._store.connection() as db:
            return self._effective(db, config, client, dataset)

    @staticmethod
    def _effective(
        db: sqlite3.Connection, config: NodeConfig, client: str, dataset: str
    ) -> Grant | None:
        row = db.execute(
            "SELECT client, dataset, purposes, fields, per_session, per_day, per_epoch "
            "FROM grants WHERE client = ? AND dataset = ? ORDER BY request_id DESC LIMIT 1",
            (client, dataset),
        ).fetchone()
        return _grant(row) if row else config.grant(client, dataset)

    def clients(self) -> set[str]:
        """The clients holding an approved grant."""
        with self._store.connection() as db:
            return {client for (client,) in db.execute("SELECT DISTINCT client FROM grants")}

    def profiles(self, config: NodeConfig, dataset: str) -> set[frozenset[str]]:
        """The label-field sets to build a table for: node.toml's grants' and approved ones'."""
        with self._store.connection() as db:
            return self._profiles(db, config, dataset)

    @staticmethod
    def _profiles(db: sqlite3.Connection, config: NodeConfig, dataset: str) -> set[frozenset[str]]:
        rows = db.execute("SELECT DISTINCT fields FROM grants WHERE dataset = ?", (dataset,))
        return config.profiles(dataset) | {frozenset(json.loads(f)) for (f,) in rows}

    # -- disputes (mechanism 5) -------------------------------------------------------------------
    def raise_dispute(
        self, client: str, dataset: str, handle: bytes, reason: str, evidence_ref: str
    ) -> DisputeRecord:
        """Store an open dispute; a client has at most one open dispute per record."""
        with self._store.transaction() as db:
            open_ = db.execute(
                "SELECT id FROM disputes WHERE client = ? AND dataset = ? AND handle = ? "
                "AND status = 'open'",
                (client, dataset, handle),
            ).fetchone()
            if open_:
                raise Conflict(f"dispute {open_[0]} on this record is still open")
            cursor = db.execute(
                "INSERT INTO disputes (client, dataset, handle, reason, evidence_ref, raised_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (client, dataset, handle, reason, evidence_ref, int(time.time())),
            )
            return self._disputes(db, [cursor.lastrowid])[0]

    def disputes(
        self, client: str | None = None, ids: Sequence[int] = (), status: str | None = None
    ) -> list[DisputeRecord]:
        """Disputes oldest first, of one client or all; each id asked must exist (NotFound)."""
        with self._store.connection() as db:
            found = self._disputes(db, ids, client, status)
        _missing("dispute", ids, (d.id for d in found), client)
        return found

    @staticmethod
    def _disputes(
        db: sqlite3.Connection,
        ids: Sequence[int],
        client: str | None = None,
        status: str | None = None,
    ) -> list[DisputeRecord]:
        where, values = _where(client, ids, status)
        rows = db.execute(f"SELECT {_DISPUTE_COLUMNS} FROM disputes{where} ORDER BY id", values)
        return [DisputeRecord(*row) for row in rows]

    def resolve(self, dispute_id: int, status: str, note: str) -> DisputeRecord:
        """Close an open dispute as ``confirmed``, ``corrected`` or ``withdrawn``."""
        if status not in RESOLUTIONS:
            raise InputError(f"resolve as one of {', '.join(RESOLUTIONS)}")
        with self._store.transaction() as db:
            found = self._disputes(db, [dispute_id])
            _missing("dispute", [dispute_id], (d.id for d in found))
            if found[0].status != "open":
                raise Conflict(f"dispute {dispute_id} is already {found[0].status}")
            db.execute(
                "UPDATE disputes SET status = ?, resolved_at = ?, note = ? WHERE id = ?",
                (status, int(time.time()), note, dispute_id),
            )
            return self._disputes(db, [dispute_id])[0]

    def without_withdrawn(self, dataset: str, register: Register, handle_key: bytes) -> Register:
        """The register less every record a dispute withdrew (by record reference, so a
        withdrawn reference stays out of every later table), and people left with none."""
        with self._store.connection() as db:
            withdrawn = {
                h
                for (h,) in db.execute(
                    "SELECT handle FROM disputes WHERE dataset = ? AND status = 'withdrawn'",
                    (dataset,),
                )
            }
        if not withdrawn:
            return register
        people = {}
        for person, entries in register.people.items():
            kept = [e for e in entries if record_handle(handle_key, e.ref) not in withdrawn]
            if kept:
                people[person] = kept
        return replace(register, people=people)
