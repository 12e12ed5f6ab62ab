"""A tamper-evident protocol log in the manner of Certificate Transparency (RFC 9162).

Each party (a node, a client) appends what happened to its own log: who asked for which dataset,
for what purpose and legal basis, how many elements, what was refused and why. Entries are the
leaves of an RFC 9162 Merkle tree (``nodes.shared.audit.merkle``); the owner signs tree heads with
an Ed25519 key every ``sign_every`` entries, on demand (with every receipt, and for a consistency
proof) and when it is closed, so that each command's entries end under a head. A reviewer holding
the owner's public key recomputes the tree and checks every head (``verify_log``): an entry edited,
deleted, moved or cut off after a head was signed no longer matches it.

An entry holds counts and names only. ``append`` refuses bytes, and never stores anything that
looks like an identity number (a run of 15 or more digits, whatever separates them: the legacy
15-digit form and the 17 digits before an 18-character number's check character), blinded or not.
Yet an event is never dropped: a text field that cannot be logged as it is (it may hold a number,
or is over ``MAX_LOG_TEXT`` characters, or holds a line break or control character) is logged as a
description of what was withheld (``loggable``), so that a client cannot keep its requests out of
the log by stuffing them with digits.

Storage is SQLite in WAL mode with ``synchronous=FULL``; each append, and the head it may sign, is
one transaction, so a crash loses at most the entry being written and never leaves a half-entry.
Tables::

    meta        key/value: format, owner, key_fingerprint, size, frontier, last_time
    entries     idx (0-based), data (canonical JSON text), leaf (its RFC 9162 leaf hash)
    tree_heads  seq (0-based), size, timestamp (ms), root_hash, signature

A tree head signature is Ed25519 over this fixed encoding (integers big-endian)::

    "kinlink audit tree head v1" 0x00     27 bytes, domain separation
    uint8 len(owner) || owner             the owner's name, UTF-8, 1..255 bytes
    uint64 size                           number of entries the head covers
    uint64 timestamp                      milliseconds since 1970-01-01T00:00:00Z
    root_hash                             32 bytes, MTH of the first ``size`` entries
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from nodes.shared.audit.merkle import Frontier, MerkleTree, leaf_hash, verify_consistency
from psi.errors import InputError
from psi.ids import contains_identifier

FORMAT = "kinlink-audit-log/1"
SIGN_EVERY = 1000
HEAD_CONTEXT = b"kinlink audit tree head v1\x00"
KEY_MODE = 0o600

EVENTS = (
    "session_opened",
    "session_resumed",  # a client took up a session it opened and did not finish (a crash)
    "session_refused",
    "elements_evaluated",
    "table_fetched",
    "receipt_issued",
    "receipt_received",
    "dispute_raised",
    "dispute_resolved",
    "key_rotated",
    "policy_changed",
    "budget_unlimited",  # at node start: a grant's window written "unlimited" (``detail``)
    "catalogue_changed",
    "catalogue_request",
    "lookup",  # a client's lookup, answered by the node, its own cache or both
    "consistency_proved",  # a node signed a head and proved earlier heads consistent with it
)
TEXT_FIELDS = (
    "session_id",
    "dataset",
    "purpose",
    "legal_basis_ref",
    "protocol",  # a statistics protocol (psi.stats.PROTOCOLS); absent for labelled queries
    "outcome",
    "reason",
    "detail",
    "answered_by",  # a lookup: "node", "cache" or "node and cache"
)
COUNT_FIELDS = (
    "declared",  # elements the client declared (and the node charged) for a session
    "evaluated",  # elements the node evaluated
    "chunks",
    "limit",  # the grant's per-session element limit
    "bytes",
    "datasets",  # datasets listed in a catalogue answer
    "key_epoch",
    "table_version",
    "base_version",
    "set_size",  # statistics: elements of the node's set, |Y|
    "intersection",  # statistics: |X ∩ Y|, where the node learns it (intersection-sum)
    "groups",  # statistics: groups of a grouped sum
    "queried",  # a lookup: identifiers asked about
    "cached",  # a lookup: identifiers the client's cache answered (the node saw none of them)
    "proofs",  # consistency proofs given in one answer
)
LOG_FIELDS = ("index", "time")  # set by the log, never by the caller
MAX_LOG_TEXT = 2000  # characters of one text field; longer text is withheld (``loggable``)
FIELDS = ("event", "peer", *TEXT_FIELDS, *COUNT_FIELDS, *LOG_FIELDS)

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


# -- entries -----------------------------------------------------------------------------------


def _refuse(name: str, value: object, *, digits: bool = True) -> None:
    """Refuse bytes and (with ``digits``) identity-number lookalikes, never echoing the value."""
    if isinstance(value, bytes | bytearray | memoryview):
        raise ValueError(
            f"field {name!r} holds bytes; the audit log stores no binary data (no elements, "
            "blinded or not)"
        )
    if digits and isinstance(value, str | int) and contains_identifier(str(value)):
        raise ValueError(
            f"field {name!r} holds a run of 15 or more digits, which may be an identity number; "
            "the audit log never stores an identifier"
        )


def _text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} must be text, not {type(value).__name__}")


def _count(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"field {name!r} must be a non-negative integer")


def _event(name: str, value: object) -> None:
    _text(name, value)
    if value not in EVENTS:
        raise ValueError(f"unknown event {value!r}; one of: {', '.join(EVENTS)}")


def _time(name: str, value: object) -> None:
    _text(name, value)
    try:
        offset = datetime.fromisoformat(str(value)).utcoffset()
    except ValueError:
        offset = None
    if offset is None or offset.total_seconds():
        raise ValueError(f"field {name!r} must be an ISO 8601 UTC time")


def _peer(name: str, value: object) -> None:
    if not isinstance(value, Mapping) or "cn" not in value or set(value) - {"cn", "fingerprint"}:
        raise ValueError(f"field {name!r} must be {{cn, fingerprint}} (fingerprint optional)")
    _refuse("peer.cn", value["cn"])
    _text("peer.cn", value["cn"])
    if "fingerprint" in value:
        fingerprint = value["fingerprint"]
        # A SHA-256 in hex holds a 15-digit run about 1 time in 60: its form is checked instead.
        _refuse("peer.fingerprint", fingerprint, digits=False)
        if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
            raise ValueError("field 'peer.fingerprint' must be a SHA-256 in lowercase hex")


_CHECKS: dict[str, Callable[[str, object], None]] = {
    "event": _event,
    "peer": _peer,
    "time": _time,
    "index": _count,
    **dict.fromkeys(TEXT_FIELDS, _text),
    **dict.fromkeys(COUNT_FIELDS, _count),
}


def withheld(value: str) -> str | None:
    """Why ``value`` cannot be logged as it is (a description that can), or None if it can."""
    if len(value) > MAX_LOG_TEXT:
        return f"(withheld: {len(value)} characters, over the {MAX_LOG_TEXT} a log field holds)"
    if contains_identifier(value):
        return "(withheld: it may hold an identity number)"
    if not value.isprintable():
        return "(withheld: it holds a line break or control character)"
    return None


def loggable(event: Mapping[str, Any]) -> dict[str, Any]:
    """``event`` with every text (and the peer's name) that cannot be logged as it is replaced by
    a description of what was withheld: the event is logged, the text is not."""
    safe = {
        name: withheld(value) or value if name in TEXT_FIELDS and isinstance(value, str) else value
        for name, value in event.items()
    }
    peer = event.get("peer")
    if isinstance(peer, Mapping) and isinstance(peer.get("cn"), str):
        safe["peer"] = {**peer, "cn": withheld(peer["cn"]) or peer["cn"]}
    return safe


def check_entry(entry: Mapping[str, Any], *, stored: bool = True) -> None:
    """Raise ValueError unless ``entry`` is a valid log entry (``stored``: with the fields the log
    sets) or a valid event for ``append`` (not ``stored``: without them)."""
    if not isinstance(entry, Mapping):
        raise ValueError("an audit event is a dict")
    for name, value in entry.items():
        if not isinstance(name, str) or contains_identifier(name):
            raise ValueError("a field name must be text without a run of 15 or more digits")
        if name not in _CHECKS:
            raise ValueError(f"unknown field {name!r}; known: {', '.join(FIELDS)}")
        if not stored and name in LOG_FIELDS:
            raise ValueError(f"field {name!r} is set by the log")
        _refuse(name, value, digits=name != "time")  # a time's form is checked instead
        _CHECKS[name](name, value)
    for name in ("event", *LOG_FIELDS) if stored else ("event",):
        if name not in entry:
            raise ValueError(f"field {name!r} is missing")


def encode_entry(entry: Mapping[str, Any]) -> str:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 text, so a leaf hash is reproducible."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- keys and tree heads -----------------------------------------------------------------------


def public_key_path(private_key_path: Path) -> Path:
    """Where ``generate_key`` puts the public half: ``audit-key.pem`` -> ``audit-key.pub.pem``."""
    return private_key_path.with_suffix(".pub.pem")


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, lowercase hex: what a reviewer compares."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def generate_key(path: Path) -> Ed25519PrivateKey:
    """A new signing key: the private PEM at ``path`` (0600, never overwritten) and the public PEM
    at ``public_key_path(path)``, which the owner hands to reviewers."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    except FileExistsError:
        raise InputError(f"{path} exists; a signing key is never overwritten") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    public_key_path(path).write_bytes(public_key_pem(key))
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise InputError(f"cannot read signing key {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path} is not an Ed25519 key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise InputError(f"the key is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError("the key is not an Ed25519 public key")
    return key


def _owner_bytes(owner: str) -> bytes:
    name = owner.encode()
    if not 1 <= len(name) <= 255:
        raise ValueError("an owner name is 1 to 255 bytes of UTF-8")
    return name


def head_message(owner: str, size: int, timestamp: int, root_hash: bytes) -> bytes:
    """The bytes a tree head signature covers (see the module docstring)."""
    name = _owner_bytes(owner)
    return (
        HEAD_CONTEXT + bytes([len(name)]) + name + struct.pack(">QQ", size, timestamp) + root_hash
    )


@dataclass(frozen=True)
class TreeHead:
    """A signed commitment to the first ``size`` entries of a log."""

    size: int
    root_hash: bytes
    timestamp: int  # milliseconds since the Unix epoch, UTC
    signature: bytes

    def verify(self, key: Ed25519PublicKey, owner: str) -> bool:
        try:
            key.verify(
                self.signature, head_message(owner, self.size, self.timestamp, self.root_hash)
            )
        except (InvalidSignature, ValueError, struct.error):
            return False
        return True

    @property
    def signed_at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp / 1000, UTC)


# -- the writer --------------------------------------------------------------------------------

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)",
    "CREATE TABLE IF NOT EXISTS entries "
    "(idx INTEGER PRIMARY KEY, data TEXT NOT NULL, leaf BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tree_heads (seq INTEGER PRIMARY KEY, size INTEGER NOT NULL, "
    "timestamp INTEGER NOT NULL, root_hash BLOB NOT NULL, signature BLOB NOT NULL)",
)


@dataclass
class _State:
    frontier: Frontier
    last_time: str


class AuditLog:
    """One party's append-only log. Safe to share between threads; several processes may append
    to the same file (each append re-reads the tree state inside its transaction)."""

    def __init__(
        self,
        path: Path,
        signing_key: Ed25519PrivateKey,
        owner: str,
        *,
        sign_every: int = SIGN_EVERY,
        clock: Clock = _utcnow,
    ):
        if sign_every < 1:
            raise ValueError("sign_every must be at least 1")
        _owner_bytes(owner)
        self.path, self.owner, self.sign_every = Path(path), owner, sign_every
        self._key, self._clock = signing_key, clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():  # the log names peers and purposes: owner-only, like keys
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, KEY_MODE))
        self._db = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=30
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._open(key_fingerprint(signing_key))
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise InputError(f"{self.path} is not a kinlink audit log: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    def _open(self, fingerprint: str) -> None:
        """Create the tables of a new log, or check an existing one is this owner's."""
        with self._transaction():
            tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master")}
            if tables and "meta" not in tables:  # another program's database: leave it alone
                raise InputError(f"{self.path} is not a kinlink audit log ({FORMAT})")
            for statement in _SCHEMA:
                self._db.execute(statement)
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
            if not meta:
                self._db.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [
                        ("format", FORMAT),
                        ("owner", self.owner),
                        ("key_fingerprint", fingerprint),
                        ("size", 0),
                        ("frontier", b""),
                        ("last_time", ""),
                    ],
                )
            elif meta.get("format") != FORMAT:
                raise InputError(f"{self.path} is not a kinlink audit log ({FORMAT})")
            elif (meta["owner"], meta["key_fingerprint"]) != (self.owner, fingerprint):
                raise InputError(
                    f"{self.path} is the log of {meta['owner']!r} signed by key "
                    f"sha256:{meta['key_fingerprint']}; refusing to append as {self.owner!r} "
                    f"with key sha256:{fingerprint} (a new key needs a new log)"
                )

    def close(self) -> None:
        """Sign a head over any entries no head covers yet, then close: every command's entries
        end under a signature, whatever ``sign_every`` is."""
        try:
            if self.size:
                self.sign_tree_head()
        finally:
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # also when COMMIT itself failed (disk full)
                    self._db.execute("ROLLBACK")
                raise

    def _state(self) -> _State:
        meta = dict(
            self._db.execute(
                "SELECT key, value FROM meta WHERE key IN ('size', 'frontier', 'last_time')"
            )
        )
        return _State(Frontier.from_bytes(meta["size"], meta["frontier"]), meta["last_time"])

    def append(self, event: Mapping[str, Any], *, sign: bool = False) -> int:
        """Append ``event`` (see ``FIELDS``) and return its index, once it is durable, with a
        head over it when ``sign`` (in the same transaction: one commit). The log
        adds ``index`` and ``time`` (UTC, never earlier than the previous entry's). Text that
        cannot be logged is replaced by a description (``loggable``); a malformed event (unknown
        fields, wrong types, bytes) is refused with ValueError."""
        event = loggable(event)
        check_entry(event, stored=False)
        with self._transaction():
            state = self._state()
            index = state.frontier.size
            now = max(
                self._clock().astimezone(UTC).isoformat(timespec="microseconds"), state.last_time
            )
            data = encode_entry({**event, "index": index, "time": now})
            leaf = leaf_hash(data.encode())
            self._db.execute("INSERT INTO entries VALUES (?, ?, ?)", (index, data, leaf))
            state.frontier.append(leaf)
            self._db.executemany(
                "UPDATE meta SET value = ? WHERE key = ?",
                [(index + 1, "size"), (state.frontier.to_bytes(), "frontier"), (now, "last_time")],
            )
            if sign or state.frontier.size % self.sign_every == 0:
                self._sign(state.frontier)
        return index

    @property
    def public_key_pem(self) -> bytes:
        return public_key_pem(self._key)

    def sign(self, message: bytes) -> bytes:
        """Sign with the log's key: the owner's receipts carry the same signature as its heads,
        so one public key verifies both (callers domain-separate ``message``)."""
        return self._key.sign(message)

    def sign_tree_head(self) -> TreeHead:
        """A head over every entry so far: the latest one when it covers them all already, else
        one signed and stored now (the node takes one for every receipt)."""
        with self._transaction():
            frontier = self._state().frontier
            latest = self._db.execute(
                "SELECT size, root_hash, timestamp, signature FROM tree_heads "
                "ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            if latest is not None and latest[0] == frontier.size:
                return TreeHead(*latest)
            return self._sign(frontier)

    def _sign(self, frontier: Frontier) -> TreeHead:
        root = frontier.root()
        timestamp = int(self._clock().timestamp() * 1000)
        signature = self._key.sign(head_message(self.owner, frontier.size, timestamp, root))
        self._db.execute(
            "INSERT INTO tree_heads VALUES ((SELECT COUNT(*) FROM tree_heads), ?, ?, ?, ?)",
            (frontier.size, timestamp, root, signature),
        )
        return TreeHead(frontier.size, root, timestamp, signature)

    def _tree(self, size: int) -> MerkleTree:
        """The tree of the first ``size`` entries, from their stored leaf hashes."""
        with self._lock:
            rows = self._db.execute("SELECT leaf FROM entries ORDER BY idx LIMIT ?", (size,))
            tree = MerkleTree(leaf for (leaf,) in rows)
        if len(tree) < size:
            raise ValueError(f"the log has only {len(tree)} entries, not {size}")
        return tree

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of entry ``index`` in the head of ``size`` entries."""
        return self._tree(size).inclusion_proof(index, size)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """RFC 9162 consistency proof from the head of ``old`` entries to that of ``new``."""
        return self._tree(new).consistency_proof(old, new)

    @property
    def size(self) -> int:
        """Entries written so far (by any process)."""
        with self._lock:
            (size,) = self._db.execute("SELECT value FROM meta WHERE key = 'size'").fetchone()
        return int(size)

    def prove(self, sizes: Sequence[int], to: int = 0) -> tuple[TreeHead | None, list[list[bytes]]]:
        """Consistency proofs from each of ``sizes`` to the tree of ``to`` entries, or (``to``
        0) to a head over every entry signed now, which is returned too. A size beyond that
        tree has no proof (an empty one, which never verifies). The tree is read once."""
        head = None if to else self.sign_tree_head()
        end = head.size if head else to
        tree = self._tree(end)
        return head, [tree.consistency_proof(n, end) if n <= end else [] for n in sizes]


# -- reading and verifying ---------------------------------------------------------------------


def _open_readonly(path: Path) -> tuple[sqlite3.Connection, dict[str, Any]]:
    """The log and its meta table, opened without creating or changing anything; a missing file
    or another format is the user's mistake."""
    if not path.is_file():
        raise InputError(f"no audit log at {path}")
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta"))
    except sqlite3.DatabaseError as exc:
        db.close()
        raise InputError(f"{path} is not a kinlink audit log: {exc}") from None
    if meta.get("format") != FORMAT:
        db.close()
        raise InputError(f"{path} is not a kinlink audit log ({FORMAT})")
    return db, meta


@dataclass(frozen=True)
class LogContents:
    owner: str
    entries: list[dict[str, Any]]
    key_fingerprint: str  # as the log declares it; ``verify_log`` checks it against a key
    leaves: list[bytes]  # each entry's RFC 9162 leaf hash, recomputed from its stored text


def read_log(path: Path) -> LogContents:
    """Every entry, parsed and schema-checked, for reports. Signatures and the tree are not
    checked here: that is ``verify_log``'s job, which a reviewer runs first."""
    db, meta = _open_readonly(path)
    try:
        entries, leaves = [], []
        for idx, data in db.execute("SELECT idx, data FROM entries ORDER BY idx"):
            leaves.append(leaf_hash(data if isinstance(data, bytes) else str(data).encode()))
            try:
                entry = json.loads(data)
                check_entry(entry)
            except (TypeError, ValueError) as exc:
                raise InputError(
                    f"{path}: entry {idx} is not a valid entry ({exc}); run psi audit verify"
                ) from None
            entries.append(entry)
    finally:
        db.close()
    return LogContents(str(meta.get("owner")), entries, str(meta.get("key_fingerprint")), leaves)


def span(first: int, end: int, one: str = "entry", many: str = "entries") -> str:
    """Items ``first`` to ``end`` (exclusive) as a message's subject: ``entry 5 is`` or
    ``entries 5..7 are``."""
    return f"{one} {first} is" if end - first == 1 else f"{many} {first}..{end - 1} are"


@dataclass(frozen=True)
class Problem:
    """One finding, located at an entry index, a tree head sequence number, or the whole log."""

    kind: str
    message: str
    entry: int | None = None
    head: int | None = None

    def __str__(self) -> str:
        if self.head is not None:
            where = f"head {self.head}"
        elif self.entry is not None:
            where = f"entry {self.entry}"
        else:
            where = "log"
        return f"{where}: {self.message} [{self.kind}]"


@dataclass
class VerifyReport:
    path: Path
    owner: str
    key_fingerprint: str  # the reviewer's key
    entries: int = 0
    heads: int = 0
    signed: int = 0  # entries covered by a head whose signature verifies (matching or not)
    latest: TreeHead | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def complete(self) -> bool:
        """No problem, and a signed head covers every entry."""
        return self.ok and self.signed >= self.entries

    def verdict(self) -> str:
        """One line: what a reviewer may conclude. Entries no signed head covers could have been
        altered, added or removed without trace, so they are never called verified."""
        if not self.ok:
            return f"TAMPERED: {len(self.problems)} problems"
        if self.signed < self.entries:
            covered = f"entries 0..{self.signed - 1} verified, " if self.signed else ""
            return (
                f"NOT VERIFIED: {covered}{span(self.signed, self.entries)} covered by no signed "
                "tree head: an entry altered, added or removed there leaves no trace"
            )
        return f"verified: no tampering found; all {self.entries} entries under signed tree heads"

    @property
    def first_bad_entry(self) -> int | None:
        located = [p.entry for p in self.problems if p.entry is not None]
        return min(located) if located else None


def verify_log(path: Path, public_key_pem: bytes) -> VerifyReport:
    """Recompute every leaf and the tree, and check every signed head against it with the key
    the reviewer holds. Problems are located at the first entry or the head concerned."""
    key = load_public_key(public_key_pem)
    db, meta = _open_readonly(Path(path))
    try:
        report = VerifyReport(Path(path), str(meta.get("owner")), key_fingerprint(key))
        tree = _check_entries(db, report)
        _check_meta(meta, tree, report)
        _check_heads(db, tree, key, report)
    finally:
        db.close()
    return report


def _check_entries(db: sqlite3.Connection, report: VerifyReport) -> MerkleTree:
    tree = MerkleTree()
    problems = report.problems
    expected = 0  # the index the next stored entry should have
    for idx, data, stored_leaf in db.execute("SELECT idx, data, leaf FROM entries ORDER BY idx"):
        if idx > expected:
            problems.append(
                Problem("missing", f"{span(expected, idx)} missing (deleted)", entry=expected)
            )
        elif idx < expected:
            problems.append(
                Problem("invalid", f"stored at index {idx}, outside the log (inserted)", entry=0)
            )
        expected = max(expected, idx + 1)
        raw = data if isinstance(data, bytes) else str(data).encode()
        leaf = leaf_hash(raw)
        tree.append(leaf)
        if stored_leaf != leaf:
            problems.append(
                Problem(
                    "edited",
                    "its content does not match its recorded leaf hash: the entry or the hash "
                    "was changed after it was written",
                    entry=idx,
                )
            )
        try:
            entry = json.loads(raw)
            check_entry(entry)
            if encode_entry(entry).encode() != raw:
                raise ValueError("not in canonical form (edited by hand?)")
        except ValueError as exc:
            problems.append(Problem("invalid", f"not a valid entry: {exc}", entry=idx))
            continue
        if entry["index"] != idx:
            problems.append(
                Problem(
                    "moved",
                    f"holds the entry written at index {entry['index']}: entries were reordered",
                    entry=idx,
                )
            )
    report.entries = len(tree)
    return tree


def _check_meta(meta: dict[str, Any], tree: MerkleTree, report: VerifyReport) -> None:
    if meta.get("key_fingerprint") != report.key_fingerprint:
        report.problems.append(
            Problem(
                "key",
                f"the log declares signing key sha256:{meta.get('key_fingerprint')}, the "
                f"reviewer's key is sha256:{report.key_fingerprint}: another key signed it, or "
                "its record was changed",
            )
        )
    size = meta.get("size")
    try:
        stored_root = Frontier.from_bytes(size, meta.get("frontier")).root()
    except (TypeError, ValueError):
        stored_root = None
    if size != len(tree):
        report.problems.append(
            Problem(
                "count",
                f"the log recorded {size} entries as written but holds {len(tree)}: entries were "
                "removed or added",
                entry=min(size, len(tree)) if isinstance(size, int) else 0,
            )
        )
    elif stored_root != tree.root():
        report.problems.append(
            Problem("state", "the log's stored tree state does not match its entries")
        )


def _check_heads(
    db: sqlite3.Connection, tree: MerkleTree, key: Ed25519PublicKey, report: VerifyReport
) -> None:
    previous: tuple[int, TreeHead] | None = None
    rows = db.execute(
        "SELECT seq, size, timestamp, root_hash, signature FROM tree_heads ORDER BY seq"
    ).fetchall()
    expected = 0  # the sequence number the next head should have
    for seq, size, timestamp, root, signature in rows:
        report.heads += 1
        if seq != expected:
            report.problems.append(
                Problem(
                    "head-missing", f"{span(expected, seq, 'head', 'heads')} missing", head=expected
                )
            )
        expected = seq + 1
        try:
            head = TreeHead(int(size), bytes(root), int(timestamp), bytes(signature))
        except (TypeError, ValueError):
            head = TreeHead(-1, b"", 0, b"")
        if not head.verify(key, report.owner):
            report.problems.append(
                Problem(
                    "signature",
                    "its signature does not verify with the reviewer's key: forged, altered, or "
                    "signed with another key",
                    head=seq,
                )
            )
            continue
        report.signed = max(report.signed, head.size)
        matches = False
        if head.size > len(tree):
            report.problems.append(
                Problem(
                    "truncated",
                    f"covers {head.size} entries but the log holds {len(tree)}: "
                    f"{span(len(tree), head.size)} cut off",
                    entry=len(tree),
                    head=seq,
                )
            )
        elif tree.root(head.size) != head.root_hash:
            report.problems.append(
                Problem(
                    "root",
                    f"does not match the first {head.size} entries: one of them was changed, "
                    "removed, inserted or moved after this head was signed",
                    head=seq,
                )
            )
        else:
            matches = True
        if previous is not None:
            _check_pair(previous, (seq, head), matches, tree, report)
        previous = (seq, head)
        report.latest = head


def _check_pair(
    earlier: tuple[int, TreeHead],
    later: tuple[int, TreeHead],
    later_matches: bool,
    tree: MerkleTree,
    report: VerifyReport,
) -> None:
    """Consecutive heads must describe an append-only log: the later one is no smaller and, when
    the current entries bear it out, an RFC 9162 consistency proof from the earlier one verifies.
    A later head that matches the entries while the proof fails was signed over a rewritten
    history: by someone holding the signing key. (When the later head does not match either, the
    entries changed after both were signed, which its ``root`` problem already says.)"""
    (first_seq, first), (seq, head) = earlier, later
    if head.size < first.size:
        message = f"covers fewer entries ({head.size}) than head {first_seq} ({first.size})"
    elif later_matches and not verify_consistency(
        first.size,
        head.size,
        first.root_hash,
        head.root_hash,
        tree.consistency_proof(first.size, head.size),
    ):
        message = (
            f"is not an append-only extension of head {first_seq}: it was signed after entries "
            f"before {first.size} were rewritten, by someone holding the signing key"
        )
    else:
        return
    report.problems.append(Problem("inconsistent", message, head=seq))
