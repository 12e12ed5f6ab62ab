"""What a screening run remembers for the next one, so that a rerun classifies only the children
whose inputs changed.

A child's class depends on the child's identifier, the date, the rules, and the records the nodes
hold for each parent. Per child with both parents known, the memo keeps a 64-bit digest of the
inputs that can change between runs (which people the parents are, and the table entries each is
found in: tags and ``psi.table.entry_fingerprints``, which change whenever a record does), the
class, each parent's status, and the first date on which the same inputs could give another class
(``classify.stable_until``). A later run with the same rules and datasets reuses the class of every
child whose digest is unchanged while its date is before that one; it opens the labels of, and
classifies, only the rest. A candidate's row quotes the date in its reasons, so a candidate is
reused for the same date only, from the row the history keeps.

The memo lives in the client's cache folder, one file per history folder, and names the history
file it belongs to: it is used only by the run that compares itself with that file. Children are
indexed by the client's keyed digest of their identifier (``Client.identifier_keys``), like
everything else in the cache; the statuses it keeps are what the labels in the same cache already
say (docs/threat-model.md). It is sealed (``nodes.shared.atrest.seal``) under a key derived from
the client's cache secret: a byte altered in it would otherwise change a child's class unseen.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from nodes.client.screening.classify import CLASSES, NONE, NOT_ASKED, UNKNOWN
from nodes.client.screening.rules import Rules
from nodes.shared.atrest import is_sealed, seal, unseal
from psi.errors import Source
from psi.table import atomic_write

FORMAT = 2  # 2: children keyed by the cache's CBC-MAC keys
_ARRAYS = ("keys", "digests", "until", "classes", "fathers", "mothers")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio, odd


def mix(*words: np.ndarray) -> np.ndarray:
    """One uint64 per row from equal-length uint64 arrays, order-sensitive. Not a hash against
    an adversary: its inputs are keyed tags and AEAD tags, which nobody can steer."""
    h = np.zeros(len(words[0]), np.uint64)
    for word in words:
        h = (h ^ word) * _MIX
        h ^= h >> np.uint64(29)
    return h


def rules_digest(rules: Rules) -> str:
    """The rules as classification sees them (not their file name)."""
    grades = sorted(
        (grade, None if kinds is None else sorted(kinds))
        for grade, kinds in rules.disability_grades.items()
    )
    content = (
        rules.adult_age,
        rules.orphaning,
        rules.eight,
        sorted(rules.terms),
        rules.term_months,
        sorted(rules.elapsed),
        rules.elapsed_months,
        sorted(rules.disability),
        grades,
    )
    return hashlib.sha256(repr(content).encode()).hexdigest()


def vocabulary(rules: Rules) -> tuple[str, ...]:
    """Status codes: index in this tuple."""
    return (NONE, UNKNOWN, NOT_ASKED, *rules.statuses)


@dataclass(frozen=True)
class Memo:
    """One run's remembered classes, sorted by child key. ``context`` must equal the next run's
    (rules, datasets and their key epochs, history file) for anything to be reused."""

    context: dict
    as_of: date
    keys: np.ndarray  # uint64, sorted: the first word of each child's identifier key
    digests: np.ndarray  # uint64
    until: np.ndarray  # int32 date ordinals: reuse only before
    classes: np.ndarray  # uint8 index in CLASSES
    fathers: np.ndarray  # uint8 index in vocabulary(rules)
    mothers: np.ndarray

    def recall(self, keys: np.ndarray, digests: np.ndarray, as_of: date) -> np.ndarray:
        """Per child, its position in the memo where its class may be reused; -1 elsewhere."""
        where = np.full(len(keys), -1, np.intp)
        if not len(self.keys) or as_of < self.as_of:
            return where
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        same = (
            (self.keys[at] == keys)
            & (self.digests[at] == digests)
            & (self.until[at] > as_of.toordinal())
        )
        where[same] = at[same]
        return where


def context(rules: Rules, datasets: Sequence[tuple[str, str, int, Sequence[str]]], history: str):
    """What must not change for a memo to apply: (node, dataset, key epoch, statuses counted)."""
    return {
        "format": FORMAT,
        "rules": rules_digest(rules),
        "datasets": [[n, d, e, list(s)] for n, d, e, s in datasets],
        "classes": list(CLASSES),
        "statuses": list(vocabulary(rules)),
        "history": history,
    }


def memo_path(cache: Path, history: Path) -> Path:
    """The memo of a history folder, inside the client's cache."""
    name = hashlib.sha256(str(history.resolve()).encode()).hexdigest()[:16]
    return cache / "screening" / f"{name}.npz"


REMEDY = "delete it: the next run classifies every child afresh"


def load(path: Path, expected: dict, key: bytes) -> Memo | None:
    """The memo at ``path`` if it was made in ``expected``'s context; None when there is none,
    or one of an older format or another context (a memo only saves work). One that fails its
    authenticator is ``DamagedFile``: it is never read as if it were true."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    if not is_sealed(blob):
        return None
    plaintext = unseal(key, path.name, blob, Source(str(path)), REMEDY)
    try:
        with np.load(io.BytesIO(plaintext), allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            if header.get("context") != expected:
                return None
            return Memo(
                header["context"],
                date.fromisoformat(header["as_of"]),
                *(data[name] for name in _ARRAYS),
            )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(path: Path, memo: Memo, key: bytes) -> None:
    """Seal and write atomically; sorts by key."""
    order = np.argsort(memo.keys, kind="stable")
    header = json.dumps({"context": memo.context, "as_of": memo.as_of.isoformat()}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.BytesIO() as handle:
        np.savez(
            handle,
            header=np.frombuffer(header, np.uint8),
            keys=memo.keys[order],
            digests=memo.digests[order],
            until=memo.until[order],
            classes=memo.classes[order],
            fathers=memo.fathers[order],
            mothers=memo.mothers[order],
        )
        atomic_write(path, [seal(key, path.name, handle.getvalue())])
