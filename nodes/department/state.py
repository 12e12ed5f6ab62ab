"""A node's state folder: the sealed key ring, tables and deltas, output caches, budgets.

Layout (under ``[node] state``)::

    keyring.kin                                   sealed key ring (psi.keys)
    budgets.sqlite                                query budgets (nodes.department.budgets)
    registry.sqlite                               access requests, approved grants, disputes
    <dataset>/rejects.csv                         bad register rows of the last build (masked)
    <dataset>/last-build.json                     duration, time, entries, epoch of the last build
    <dataset>/e<epoch>/<profile>/outputs.bin      the profile's sealed OPRF outputs (resumable)
    <dataset>/e<epoch>/<profile>/v000001.table    one table per version and label-field profile
    <dataset>/e<epoch>/<profile>/v000001-v000002.delta

A profile is the set of label fields a grant allows; each gets its own OPRF key and tables, so
fields a client may not see are never encrypted for it, and its outputs open no other profile's
table. Rotation prepares the next epoch, whose tables the next build writes beside the current
epoch's; once they are published the new epoch starts and the old one is retired: its seed and
OPRF outputs go at once, its tables after a session's lifetime (queries in flight may still
fetch them; nothing is evaluated under it any more).

At rest (``nodes.shared.atrest``): files 0600, folders 0700; the output caches sealed and tables
and deltas authenticated under keys derived from the dataset's handle key, which only the
passphrase opens. A table is checked once per file the process sees (``served``); a damaged one
is never served: the next build publishes a new version in full from the register.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from nodes.department.build import build_dataset_table
from nodes.department.register import Register, csv_rows, read_rows, sql_rows
from nodes.department.registry import Registry
from nodes.shared.atrest import (
    DamagedFile,
    authenticated,
    file_key,
    private_files,
    private_folder,
    verified,
)
from nodes.shared.audit.signing import PassphraseSeal, open_party_log
from nodes.shared.cache import OutputCache
from nodes.shared.config import DatasetConfig, NodeConfig
from psi.errors import InputError
from psi.ids import write_rejects
from psi.keys import KeyRing
from psi.labels import profile_name
from psi.oprf import Oprf
from psi.table import Delta, Table, atomic_write, diff

Progress = Callable[[int], None]
SESSION_SECONDS = 3600  # how long a session lives: a retired epoch's tables are kept as long
LAST_BUILD = "last-build.json"

log = logging.getLogger("kinlink.state")
CHECKED_FILES = 64  # tables and deltas kept checked (and mapped), the least recently used dropped


class Served(NamedTuple):
    """A table or delta whose authenticator was checked: the object, its bytes as they go on the
    wire (without the trailer) and their SHA-256."""

    stored: Table | Delta
    body: memoryview
    sha256: bytes


@dataclass(frozen=True)
class BuildReport:
    dataset: str
    epoch: int
    profile: str
    version: int  # the version now current (unchanged when nothing changed)
    entries: int
    evaluated: int  # OPRF evaluations this build needed (the rest came from the cache)
    added: int
    removed: int
    published: bool
    retired: int | None = None  # the epoch this build's tables replaced (a rotation completed)


class NodeState:
    """Everything a node keeps on disk. Safe to share between server threads; a build can run in
    another process while a server reads (files are replaced atomically)."""

    def __init__(self, config: NodeConfig, passphrase: bytes, oprf: Oprf | None = None):
        self.config = config
        self.root = config.state
        self.oprf = oprf or Oprf()
        self._passphrase = passphrase
        self._audit_seal = PassphraseSeal(passphrase)
        self._lock = threading.Lock()
        self._keyring: tuple[float, KeyRing] | None = None
        self._checked: OrderedDict[Path, tuple[tuple[int, ...], Served]] = OrderedDict()
        self._checked_lock = threading.Lock()
        private_files()
        self.registry = Registry(self.root)

    # -- key ring ---------------------------------------------------------------------------------
    @property
    def keyring_path(self) -> Path:
        return self.root / "keyring.kin"

    def keyring(self) -> KeyRing:
        """The key ring, reloaded when another process (build, rotate) replaced the file."""
        with self._lock:
            try:
                mtime = self.keyring_path.stat().st_mtime
            except FileNotFoundError:
                raise InputError(
                    f"no key ring in {self.root}: run `psi node build --config "
                    f"{self.config.path}` first"
                ) from None
            if self._keyring is None or self._keyring[0] != mtime:
                self._keyring = (mtime, KeyRing.load(self.keyring_path, self._passphrase))
            return self._keyring[1]

    def _writable_keyring(self) -> KeyRing:
        """The key ring for changing, created on first use with every configured dataset."""
        private_folder(self.root)
        ring = self.keyring() if self.keyring_path.exists() else KeyRing()
        for dataset in self.config.datasets:
            if dataset not in ring.datasets():
                ring.add_dataset(dataset)
        return ring

    def _save_keyring(self, ring: KeyRing) -> None:
        ring.save(self.keyring_path, self._passphrase)
        with self._lock:
            self._keyring = None

    def _audit(self, event: dict) -> None:
        """Record a change to what the node serves in its audit log."""
        with open_party_log(self.root, self.config.id, self._audit_seal) as audit:
            audit.append(event)

    # -- tables -----------------------------------------------------------------------------------
    def folder(self, dataset: str, epoch: int, fields: frozenset[str]) -> Path:
        return self.root / dataset / f"e{epoch}" / profile_name(fields)

    def versions(self, dataset: str, epoch: int, fields: frozenset[str]) -> list[int]:
        folder = self.folder(dataset, epoch, fields)
        return sorted(int(p.stem[1:]) for p in folder.glob("v*.table")) if folder.is_dir() else []

    def latest(self, dataset: str, epoch: int, fields: frozenset[str]) -> int:
        """The current table version, 0 when none is built."""
        versions = self.versions(dataset, epoch, fields)
        return versions[-1] if versions else 0

    def table_path(self, dataset: str, epoch: int, fields: frozenset[str], version: int) -> Path:
        return self.folder(dataset, epoch, fields) / f"v{version:06d}.table"

    def delta_path(
        self, dataset: str, epoch: int, fields: frozenset[str], base: int, version: int
    ) -> Path:
        return self.folder(dataset, epoch, fields) / f"v{base:06d}-v{version:06d}.delta"

    def table(self, dataset: str, epoch: int, fields: frozenset[str], version: int) -> Served:
        """A table version, checked; ``DamagedFile`` when it fails its authenticator."""
        return self.served(self.table_path(dataset, epoch, fields, version), dataset)

    def delta(
        self, dataset: str, epoch: int, fields: frozenset[str], base: int, version: int
    ) -> Served:
        """The delta from ``base`` to ``version``, made (and kept) on first request; a damaged
        one is made again from the tables (``DamagedFile`` if one of them is damaged)."""
        path = self.delta_path(dataset, epoch, fields, base, version)
        if path.exists():
            try:
                return self.served(path, dataset)
            except DamagedFile as error:
                log.error("%s; making it again from the tables", error)
        old = self.table(dataset, epoch, fields, base).stored
        new = self.table(dataset, epoch, fields, version).stored
        assert isinstance(old, Table) and isinstance(new, Table)
        self._save(diff(old, new), path, dataset)
        return self.served(path, dataset)

    def _table_key(self, dataset: str) -> bytes:
        return file_key(self.keyring().handle_key(dataset), "tables")

    def _name(self, path: Path) -> str:
        """What a table's MAC binds: its place in the state folder (dataset, epoch, profile,
        version), so that no file can stand in for another."""
        return path.relative_to(self.root).as_posix()

    def _save(self, stored: Table | Delta, path: Path, dataset: str) -> None:
        chunks = authenticated(stored.iter_chunks(), self._table_key(dataset), self._name(path))
        atomic_write(path, chunks)

    def served(self, path: Path, dataset: str) -> Served:
        """The table or delta at ``path``, its authenticator checked once per file this process
        sees (a file replaced or touched, by its identity and times, is checked again)."""
        info = os.stat(path)
        identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        with self._checked_lock:
            known = self._checked.get(path)
            if known is not None and known[0] == identity:
                self._checked.move_to_end(path)
                return known[1]
            remedy = (
                f"the node does not serve it; run `psi node build --config {self.config.path}` "
                "to publish a new version from the register"
            )
            body = verified(path, self._table_key(dataset), self._name(path), remedy)
            kind = Delta if path.suffix == ".delta" else Table
            digest = hashlib.sha256(memoryview(body)).digest()  # what FetchTable quotes
            served = Served(kind.from_bytes(body, str(path)), memoryview(body), digest)
            self._checked[path] = (identity, served)
            while len(self._checked) > CHECKED_FILES:
                self._checked.popitem(last=False)
            return served

    def is_built(self, dataset: str) -> bool:
        """Every profile of the dataset has a table for the current epoch."""
        try:
            epoch, _ = self.keyring().current(dataset)
        except InputError:
            return False
        profiles = self.registry.profiles(self.config, dataset)
        return all(self.latest(dataset, epoch, f) for f in profiles)

    # -- building and rotating --------------------------------------------------------------------
    def read_register(self, dataset: DatasetConfig) -> Register:
        """The dataset's register; rows of statuses it does not declare are rejects."""
        if dataset.csv is not None:
            rows = csv_rows(dataset.csv, dataset.columns, dataset.encoding)
            source = str(dataset.csv)
        else:
            assert dataset.url is not None and dataset.query is not None
            rows = sql_rows(dataset.url, dataset.query, dataset.columns)
            source = f"{dataset.id} query"
        return read_rows(rows, source, statuses=dataset.statuses)

    def served_register(self, dataset_id: str, ring: KeyRing | None = None) -> Register:
        """The register as the node serves it, in tables and statistics alike: without the
        records withdrawn by a dispute."""
        ring = ring or self.keyring()
        return self.registry.without_withdrawn(
            dataset_id,
            self.read_register(self.config.datasets[dataset_id]),
            ring.handle_key(dataset_id),
        )

    def build(self, dataset_id: str, progress: Progress | None = None) -> list[BuildReport]:
        """(Re)build every profile's table of a dataset, each under its own key, for the current
        epoch, or for the prepared one during a rotation, which then starts (``_start``). Only
        people not evaluated before under a profile's key are evaluated; a version is published
        only when something changed."""
        started = time.perf_counter()
        ring = self._writable_keyring()
        self._save_keyring(ring)
        register = self.served_register(dataset_id, ring)
        (self.root / dataset_id).mkdir(parents=True, exist_ok=True)
        write_rejects(self.root / dataset_id / "rejects.csv", register.rejects)
        epoch, _ = ring.build_epoch(dataset_id)
        profiles = self.registry.profiles(self.config, dataset_id)
        reports = [
            self._build_profile(register, ring, dataset_id, epoch, fields, progress)
            for fields in sorted(profiles, key=profile_name)
        ]
        if ring.prepared(dataset_id) == epoch:
            retired = self._start(ring, dataset_id)
            reports = [replace(r, retired=retired) for r in reports]
        self.sweep(dataset_id)
        record = {
            "seconds": round(time.perf_counter() - started, 3),
            "finished": time.time(),
            "entries": max((r.entries for r in reports), default=0),
            "epoch": epoch,
        }
        atomic_write(self.root / dataset_id / LAST_BUILD, [json.dumps(record).encode()])
        return reports

    def last_build(self, dataset_id: str) -> dict:
        """What the dataset's last build wrote to ``last-build.json`` (empty before one)."""
        try:
            return json.loads((self.root / dataset_id / LAST_BUILD).read_bytes())
        except (OSError, ValueError):
            return {}

    def outputs_cache(
        self, dataset: str, epoch: int, fields: frozenset[str], ring: KeyRing | None = None
    ) -> OutputCache:
        """The sealed OPRF outputs of a dataset's register under a profile's key in ``epoch``."""
        ring = ring or self.keyring()
        return OutputCache(
            self.folder(dataset, epoch, fields) / "outputs.bin",
            ring.handle_key(dataset),
            context=f"outputs/{dataset}/e{epoch}/{profile_name(fields)}",
            remedy=f"delete it and run `psi node build --config {self.config.path}` again "
            "(every register member is evaluated again under the profile's key)",
        )

    def _build_profile(
        self,
        register: Register,
        ring: KeyRing,
        dataset: str,
        epoch: int,
        fields: frozenset[str],
        progress: Progress | None,
    ) -> BuildReport:
        folder = self.folder(dataset, epoch, fields)
        folder.mkdir(parents=True, exist_ok=True)
        cache = self.outputs_cache(dataset, epoch, fields, ring)
        latest = self.latest(dataset, epoch, fields)
        previous = None
        if latest:
            try:
                previous = self.table(dataset, epoch, fields, latest).stored
            except DamagedFile as error:  # published anew in full: clients fetch it whole
                log.error("%s; version %d is published in full", error, latest + 1)
        assert previous is None or isinstance(previous, Table)
        table, evaluated = build_dataset_table(
            register,
            ring,
            dataset,
            oprf=self.oprf,
            fields=fields,
            version=latest + 1,
            previous=previous,
            cache=cache,
            progress=progress,
        )
        delta: Delta | None = diff(previous, table) if previous is not None else None
        changed = delta is None or delta.header.added or delta.header.removed
        if changed:
            self._audit(
                {
                    "event": "catalogue_changed",
                    "dataset": dataset,
                    "key_epoch": epoch,
                    "table_version": latest + 1,
                    "outcome": "published",
                    "detail": f"profile {profile_name(fields)}",
                }
            )
            if delta is not None:
                self._save(
                    delta, self.delta_path(dataset, epoch, fields, latest, latest + 1), dataset
                )
            self._save(table, self.table_path(dataset, epoch, fields, latest + 1), dataset)
        return BuildReport(
            dataset,
            epoch,
            profile_name(fields),
            latest + 1 if changed else latest,
            len(table),
            evaluated,
            delta.header.added if delta else len(table),
            delta.header.removed if delta else 0,
            bool(changed),
        )

    def rotate(self, dataset_id: str) -> int:
        """Prepare a new key epoch for a dataset. The current one serves on until ``build`` has
        published every profile's table under the new one: make before break."""
        ring = self._writable_keyring()
        epoch = ring.prepare(dataset_id)
        self._save_keyring(ring)
        self._audit(
            {
                "event": "key_rotated",
                "dataset": dataset_id,
                "key_epoch": epoch,
                "outcome": "prepared",
                "detail": f"epoch {ring.current(dataset_id)[0]} serves until it is built",
            }
        )
        return epoch

    def _start(self, ring: KeyRing, dataset_id: str) -> int:
        """Start the prepared epoch, whose tables are published: the old one is retired in the
        same write of the key ring (the server picks it up on its next call). Its OPRF outputs
        are deleted at once; its tables stay for a session's lifetime, for queries in flight
        (``sweep`` deletes them after). Returns the retired epoch."""
        old, _ = ring.current(dataset_id)
        epoch = ring.rotate(dataset_id)
        self._save_keyring(ring)
        self._audit(
            {
                "event": "key_rotated",
                "dataset": dataset_id,
                "key_epoch": epoch,
                "outcome": "started",
                "detail": f"epoch {old} retired",
            }
        )
        for outputs in (self.root / dataset_id / f"e{old}").rglob("outputs.bin"):
            outputs.unlink()
        return old

    def sweep(self, dataset_id: str, now: float | None = None) -> None:
        """Delete the folders of epochs retired more than a session's lifetime ago: no session
        can need their tables any more, and their seeds are gone."""
        ring, now = self.keyring(), time.time() if now is None else now
        for folder in self.root.joinpath(dataset_id).glob("e[0-9]*"):
            retired = ring.retired_at(dataset_id, int(folder.name[1:]))
            if retired is not None and retired.timestamp() <= now - SESSION_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)
