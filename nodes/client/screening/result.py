"""What a screening run found, as the run hands it to its outputs (``report``) and its caller: the
datasets asked, each child classified, and what changed since the previous run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import NamedTuple

from nodes.client.screening.classify import Classification
from nodes.client.screening.rules import Rules
from psi.ids import Reject


@dataclass(frozen=True)
class NodeRun:
    """One dataset asked: its table version and how much the client's caches saved."""

    node: str
    dataset: str
    statuses: tuple[str, ...]  # those of the dataset the rules count
    epoch: int
    table_version: int
    queried: int
    evaluated: int  # sent to the node; the rest came from the finalized-output cache
    matched: int  # parents the dataset holds records of
    seconds: float

    @property
    def cached(self) -> int:
        return self.queried - self.evaluated


class Why(NamedTuple):
    """A reason for a change: a stable code to count by, and words to read."""

    code: str  # turned_adult, status_ended, no_longer_matched, parent_unknown, ...
    text: str


@dataclass(frozen=True)
class Change:
    """One child whose standing changed since the previous run."""

    child_id: str
    before: str  # the previous classification, or ABSENT
    after: str
    why: tuple[Why, ...]


@dataclass(frozen=True)
class Changes:
    """New candidates (orphan, de facto unattended or needs_review now, not before), candidates
    whose eligibility ended, and candidates whose class or parents' statuses changed."""

    previous: Mapping[str, str] | None  # file, as_of and run_at of the run compared with
    new: tuple[Change, ...] = ()
    ended: tuple[Change, ...] = ()
    changed: tuple[Change, ...] = ()

    def ended_why(self) -> Counter[str]:
        """How many ended candidates each reason code explains."""
        return Counter(why.code for change in self.ended for why in change.why)


class Screened(NamedTuple):
    """A classified child with the roster's region code (for the counts by region) and name
    (for the officer's results)."""

    region_code: str
    verdict: Classification
    name: str = ""


@dataclass(frozen=True)
class ScreeningResult:
    """Everything a run found and wrote; outputs apply data minimisation, this object does not
    (it stays in the caller's memory)."""

    as_of: date
    run_at: datetime
    rules: Rules
    roster: Path
    retain_ineligible: bool
    children: tuple[Screened, ...]
    rejects: tuple[Reject, ...]
    nodes: tuple[NodeRun, ...]
    uncovered: tuple[str, ...]  # statuses the rules count that no dataset holds
    changes: Changes
    out_dir: Path
    history_file: Path
    seconds: float  # reading, asking and classifying
    reused: int = 0  # children whose class the previous run's memo gave (screening.memo)

    def counts(self) -> Counter[str]:
        return Counter(c.verdict.classification for c in self.children)
