"""One SQLite file with its schema, for the node's registry and budgets' peers and the client's
record of its disputes."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Store:
    """One SQLite file with its schema, opened on first use and shared by a process's threads
    under a lock. WAL: every statement sees what other processes committed before it, so the
    server answers with an operator's decision at once; synchronous=FULL: a decision, once
    reported, survives a crash."""

    def __init__(self, path: Path, schema: str):
        self.path, self._schema = path, schema
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(
                    str(self.path), isolation_level=None, timeout=30, check_same_thread=False
                )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(self._schema)
                self._db = db
            yield self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: a check and the write that depends on it see no writer between."""
        with self.connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
