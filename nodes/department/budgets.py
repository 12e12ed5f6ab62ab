"""Query budgets against enumeration of the small identifier space (RFC 9497 §7.2.3).

Per client and dataset a node meters OPRF evaluations per session, per rolling 24 hours and per key
epoch. A session's declared element count is charged when it opens (durably, in SQLite), and the
node then evaluates no more than that, so a client can never exceed a budget by under-declaring.
Charges survive restarts; a refusal says when the budget renews. A window without a limit is
never an omission: node.toml must write it out as "unlimited" (``nodes.shared.config``), and the
node warns of each such grant when it starts (``unlimited``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from nodes.shared.config import Limits, NodeConfig
from psi.errors import KinlinkError

DAY = 86_400.0


class BudgetExceeded(KinlinkError):
    def __init__(self, message: str, renews_at: float | None):
        self.renews_at = renews_at
        super().__init__(message)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def unlimited(config: NodeConfig) -> list[tuple[str, str, str, str]]:
    """(client, dataset, windows, warning) for each grant of ``config`` with a window written
    "unlimited": the node logs and prints these when it starts, so that nobody lifts a budget
    in silence."""
    found = []
    for grant in config.grants:
        windows = ", ".join(grant.limits.unlimited())
        for dataset in grant.datasets if windows else ():
            found.append(
                (
                    grant.client,
                    dataset,
                    windows,
                    f"grant of {grant.client!r} on dataset {dataset!r} is unlimited {windows} "
                    f"({config.path}): nothing bounds how many identifiers it can test there "
                    "(RFC 9497 s7.2.3); give numbers unless that was decided and reviewed",
                )
            )
    return found


class Budgets:
    """A durable ledger of charges, safe to share between the server's threads."""

    def __init__(self, path: Path | str):
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS charges (client TEXT NOT NULL, dataset TEXT NOT NULL, "
            "epoch INTEGER NOT NULL, at REAL NOT NULL, elements INTEGER NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS charges_key ON charges (client, dataset, at)")
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def charge(
        self,
        client: str,
        dataset: str,
        epoch: int,
        elements: int,
        limits: Limits,
        now: float | None = None,
    ) -> None:
        """Record ``elements`` against the client's budgets, or raise ``BudgetExceeded``."""
        now = time.time() if now is None else now
        if limits.per_session is not None and elements > limits.per_session:
            raise BudgetExceeded(
                f"a session may evaluate at most {limits.per_session} elements of {dataset!r}; "
                f"{elements} declared (split the query into several sessions)",
                None,
            )
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._check_day(client, dataset, elements, limits.per_day, now)
                self._check_epoch(client, dataset, epoch, elements, limits.per_epoch)
                self._db.execute(
                    "INSERT INTO charges VALUES (?, ?, ?, ?, ?)",
                    (client, dataset, epoch, now, elements),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def used(self, client: str, dataset: str, epoch: int, now: float | None = None) -> dict:
        """Elements charged in the last 24 hours and in ``epoch``."""
        now = time.time() if now is None else now
        day = self._db.execute(
            "SELECT COALESCE(SUM(elements), 0) FROM charges "
            "WHERE client=? AND dataset=? AND at > ?",
            (client, dataset, now - DAY),
        ).fetchone()[0]
        per_epoch = self._db.execute(
            "SELECT COALESCE(SUM(elements), 0) FROM charges "
            "WHERE client=? AND dataset=? AND epoch=?",
            (client, dataset, epoch),
        ).fetchone()[0]
        return {"day": day, "epoch": per_epoch}

    def _check_day(
        self, client: str, dataset: str, elements: int, limit: int | None, now: float
    ) -> None:
        if limit is None:
            return
        rows = self._db.execute(
            "SELECT at, elements FROM charges WHERE client=? AND dataset=? AND at > ? ORDER BY at",
            (client, dataset, now - DAY),
        ).fetchall()
        total = sum(n for _, n in rows)
        if total + elements <= limit:
            return
        if elements > limit:
            raise BudgetExceeded(
                f"the daily budget of {limit} elements of {dataset!r} is smaller than the "
                f"{elements} declared; split the query",
                None,
            )
        remaining = total
        renews = now + DAY
        for at, n in rows:  # the budget renews when enough old charges leave the window
            remaining -= n
            if remaining + elements <= limit:
                renews = at + DAY
                break
        raise BudgetExceeded(
            f"daily budget for {dataset!r} exhausted: {total} of {limit} elements used in the "
            f"last 24 hours, {elements} more asked; renews at {_when(renews)}",
            renews,
        )

    def _check_epoch(
        self, client: str, dataset: str, epoch: int, elements: int, limit: int | None
    ) -> None:
        if limit is None:
            return
        used = self._db.execute(
            "SELECT COALESCE(SUM(elements), 0) FROM charges "
            "WHERE client=? AND dataset=? AND epoch=?",
            (client, dataset, epoch),
        ).fetchone()[0]
        if used + elements > limit:
            raise BudgetExceeded(
                f"key-epoch budget for {dataset!r} exhausted: {used} of {limit} elements used in "
                f"epoch {epoch}, {elements} more asked; renews when the node rotates to a new "
                "key epoch",
                None,
            )
