"""What a client remembers of a session it opened and has not closed, so that a run that dies
midway (a crash, a kill, a lost connection) takes the session up again when it is rerun, instead
of opening another and being charged twice for the same identifiers (the node charges a session's
whole declared count when it opens).

One file per (node, dataset, epoch), ``session.json`` beside the output cache, written when a
session opens and removed when its receipt is in. It holds the session's id (bound at the node to
this client's certificate, so useless to anyone else), what the session was opened for and until
when it can be resumed: no identifier, no element. A file that cannot be read only costs the
resume; it is removed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from protocols.kinlink.v1 import psi_pb2

FILE = "session.json"


@dataclass(frozen=True)
class Pending:
    session_id: str
    purpose: str
    legal_basis_ref: str
    declared: int
    expires: float  # seconds since the Unix epoch: the node refuses to resume it after

    @classmethod
    def of(cls, session: psi_pb2.Session, purpose: str, legal_basis_ref: str) -> Pending:
        expires = session.expires_at.ToNanoseconds() / 1e9
        return cls(session.session_id, purpose, legal_basis_ref, session.element_count, expires)


def remember(folder: Path, pending: Pending) -> None:
    """Keep ``pending`` (replacing any other), atomically and readable by this user only."""
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{FILE}.{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(asdict(pending), handle)
    os.replace(temporary, folder / FILE)


def recall(folder: Path, purpose: str, legal_basis_ref: str) -> Pending | None:
    """The unfinished session kept in ``folder`` if it was opened for this purpose and legal
    basis and has not expired; an expired or unreadable one is removed."""
    path = folder / FILE
    try:
        pending = Pending(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        path.unlink(missing_ok=True)
        return None
    if pending.expires <= time.time():
        path.unlink(missing_ok=True)
        return None
    return (
        pending
        if (pending.purpose, pending.legal_basis_ref) == (purpose, legal_basis_ref)
        else None
    )


def forget(folder: Path, session_id: str) -> None:
    """Remove the kept session if it is ``session_id`` (closed, or refused by the node)."""
    path = folder / FILE
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("session_id") == session_id:
            path.unlink(missing_ok=True)
    except (OSError, ValueError, AttributeError):
        return
