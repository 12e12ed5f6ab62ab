"""Finalized OPRF outputs kept per (dataset, epoch), so that nobody evaluates an identifier twice.

Rows are keyed by an HMAC of the identifier under a secret of the cache's owner (a department's
handle key, a client's local secret): the file alone names nobody, and cannot be tested against
candidate identifiers without that secret. Each ``put`` is one transaction, committed at once, so an
interrupted run keeps everything it finished.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

_DOMAIN = b"kinlink-output-cache-v1:"
_BATCH = 500  # SQLite's host-parameter limit is 999 on older builds


class OutputCache:
    def __init__(self, path: Path | str, secret: bytes):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outputs (id BLOB PRIMARY KEY, output BLOB NOT NULL)"
        )
        self._secret = secret

    def key(self, identifier: str) -> bytes:
        return hmac.new(self._secret, _DOMAIN + identifier.encode(), hashlib.sha256).digest()[:16]

    def get(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        for lo in range(0, len(keys), _BATCH):
            part = keys[lo : lo + _BATCH]
            marks = ",".join("?" * len(part))
            found.update(
                self._db.execute(f"SELECT id, output FROM outputs WHERE id IN ({marks})", part)
            )
        return found

    def put(self, rows: Iterable[tuple[bytes, bytes]]) -> None:
        self._db.execute("BEGIN")
        try:
            self._db.executemany("INSERT OR REPLACE INTO outputs VALUES (?, ?)", rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> OutputCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
