"""The monthly screening: roster in, every node asked at once, each child classified, results,
report and history out, and what changed since the previous run.

Only what the rules need is asked: the parents of children under the adult age, and only the
datasets whose catalogue entry holds a status the rules count. A node that fails, or that cannot
serve the screening as the rules need (purpose not granted, a needed label field withheld), stops
the run before anything is written: an unanswered query must never read as "no match".
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from nodes.client.client import Client, NodeError, QueryResult
from nodes.client.roster import Roster, Unknown, parents_of, read_roster
from nodes.client.screening import memo
from nodes.client.screening.classify import (
    CANDIDATES,
    CLASSES,
    NONE,
    NOT_ELIGIBLE,
    UNKNOWN,
    Classification,
    Match,
    ages_of,
    classify,
    classify_unrecorded,
    recalled,
    stable_until,
)
from nodes.client.screening.memo import memo_path
from nodes.client.screening.report import FORMAT, write_outputs
from nodes.client.screening.result import (
    Change,
    Changes,
    NodeRun,
    Screened,
    ScreeningResult,
    Why,
)
from nodes.client.screening.rules import Rules, load_rules
from nodes.shared.config import load_federation
from nodes.shared.progress import progress_bars
from protocols.kinlink.v1 import psi_pb2
from psi.dates import add_months
from psi.errors import InputError, KinlinkError, Source
from psi.ids import birth_date

PURPOSE = "screening"
ABSENT = "absent"  # a child not in the other run's roster
HISTORY_GLOB = "????-??-??_*.json"


class NodesFailed(KinlinkError):
    """Nodes failed or cannot serve the screening; ``problems`` name each node."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        super().__init__(
            "the screening stopped and wrote nothing (an unanswered node is never read as "
            "'no match'): " + "; ".join(self.problems)
        )


# ---- asking the nodes ------------------------------------------------------------------------


def _plan(client: Client, rules: Rules) -> list[tuple[str, str, tuple[str, ...]]]:
    """(node, dataset, statuses counted) for every dataset of every node that holds a status the
    rules count, from the nodes' catalogues (fetched at once)."""

    def catalogue(node: str) -> psi_pb2.Catalogue | NodeError:
        try:
            return client.catalogue(node)
        except NodeError as exc:
            return exc

    nodes = list(client.config.nodes)
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        catalogues = dict(zip(nodes, pool.map(catalogue, nodes), strict=True))
    plan, problems = [], []
    for node, answer in catalogues.items():
        if isinstance(answer, NodeError):
            problems.append(str(answer))
            continue
        for dataset in answer.datasets:
            held = tuple(s for s in rules.statuses if s in dataset.status_codes)
            if not held:
                continue
            missing = rules.fields_needed(held) - set(dataset.label_fields)
            where = f"node {node!r}: dataset {dataset.dataset_id!r} (holding {', '.join(held)})"
            if PURPOSE not in dataset.allowed_purposes:
                problems.append(f"{where} is not granted for purpose {PURPOSE!r}")
            elif missing:
                problems.append(f"{where} withholds field(s) {', '.join(sorted(missing))}")
            else:
                plan.append((node, dataset.dataset_id, held))
    if problems:
        raise NodesFailed(problems)
    if not plan:
        raise InputError(
            f"no node of {client.config.path} serves a status the rules count "
            f"({', '.join(rules.statuses)})"
        )
    return plan


def _ask(
    client: Client, plan: Sequence[tuple[str, str, tuple[str, ...]]], ids: list[str], as_of: date
) -> list[QueryResult]:
    """Every planned dataset about ``ids`` at once (labels not opened yet), with a progress bar
    per dataset on a terminal."""
    requests = [(node, dataset) for node, dataset, _ in plan]
    with progress_bars([f"{n}/{d}" for n, d in requests], len(ids)) as bars:
        answers = client.query_many(
            requests,
            ids,
            purpose=PURPOSE,
            legal_basis_ref=f"screening as of {as_of}",
            progress_by=dict(zip(requests, bars, strict=True)),
        )
    failed = [str(a) for a in answers.values() if isinstance(a, NodeError)]
    if failed:
        raise NodesFailed(failed)
    return [answers[node, dataset] for node, dataset, _ in plan]  # type: ignore[misc]


def _records(
    plan: Sequence[tuple[str, str, tuple[str, ...]]],
    results: Sequence[QueryResult],
    rows: np.ndarray,
) -> dict[str, list[Match]]:
    """The counted records of the parents at ``rows`` of the identifiers asked about: only
    their labels are opened."""
    found: dict[str, list[Match]] = defaultdict(list)
    for (node, dataset, held), result in zip(plan, results, strict=True):
        for hit in result.found(rows):
            for record in hit.label.records:
                if record.status in held:
                    found[result.ids[hit.index]].append(Match(node, dataset, hit.written, record))
    return found


def _node_runs(
    plan: Sequence[tuple[str, str, tuple[str, ...]]], results: Sequence[QueryResult]
) -> list[NodeRun]:
    return [
        NodeRun(
            node,
            dataset,
            held,
            result.epoch,
            result.table_version,
            result.queried,
            result.evaluated,
            int(np.count_nonzero(result.fingerprints)),
            result.seconds + result.timings.get("match", 0.0),
        )
        for (node, dataset, held), result in zip(plan, results, strict=True)
    ]


# ---- changes since the previous run ------------------------------------------------------------


def _why_ended(before: Mapping[str, Any], now: Classification, rules: Rules) -> tuple[Why, ...]:
    if now.age >= rules.adult_age:
        adult = add_months(birth_date(now.child_id), 12 * rules.adult_age)
        return (Why("turned_adult", f"turned {rules.adult_age} on {adult}"),)
    whys = []
    for finding in now.parents:
        role, was = finding.role, before[f"{finding.role}_status"]
        if was == finding.status or was == NONE:
            continue
        if was == UNKNOWN:
            whys.append(Why("parent_identified", f"{role} now identified: {finding.status}"))
        elif finding.status == UNKNOWN:
            whys.append(Why("parent_unknown", "; ".join(finding.reasons)))
        elif same := [j.text for j in finding.judged if j.match.record.status == was]:
            whys.append(Why("status_ended", f"{role} {was} no longer counts: {'; '.join(same)}"))
        else:
            text = f"{role} no longer matched as {was} (record corrected or withdrawn)"
            whys.append(Why("no_longer_matched", text))
    return tuple(whys) or (Why("other", "the rules or the roster changed"),)


def compare(
    previous: Mapping[str, Any] | None, verdicts: Sequence[Classification], rules: Rules
) -> Changes:
    """What changed since ``previous`` (a results.json document)."""
    if previous is None:
        return Changes(None)
    rows = previous["children"]  # a history keeps the candidates' rows (results.json all)
    before = {row["child_id"]: row for row in rows if row["classification"] in CANDIDATES}
    seen = {row["child_id"] for row in rows}.union(previous.get("not_eligible_children", ()))
    new, ended, changed = [], [], []
    # Only candidates, now or before, can have changed: most children are neither.
    ids = map(attrgetter("child_id"), verdicts)
    classes = map(attrgetter("classification"), verdicts)
    for now, child, klass in zip(verdicts, ids, classes, strict=True):
        if klass not in CANDIDATES and child not in before:
            continue
        row = before.pop(now.child_id, None)
        was = row["classification"] if row else NOT_ELIGIBLE if now.child_id in seen else ABSENT
        after = now.classification
        if after in CANDIDATES and was not in CANDIDATES:
            why = tuple(Why("counts", f"{p.role} {p.status}") for p in now.parents)
            new.append(Change(now.child_id, was, after, why))
        elif was in CANDIDATES and after not in CANDIDATES:
            ended.append(Change(now.child_id, was, after, _why_ended(row, now, rules)))
        elif was in CANDIDATES:
            why = tuple(
                Why("status", f"{p.role} {row[f'{p.role}_status']} → {p.status}")
                for p in now.parents
                if row[f"{p.role}_status"] != p.status
            )
            if was != after:
                why = (Why("class", f"{was} → {after}"), *why)
            if why:
                changed.append(Change(now.child_id, was, after, why))
    left = (Why("left_roster", "no longer in the roster"),)
    ended += [
        Change(child, row["classification"], ABSENT, left)
        for child, row in before.items()
        if row["classification"] in CANDIDATES
    ]
    info = {k: str(previous.get(k, "")) for k in ("file", "as_of", "run_at")}
    return Changes(info, tuple(new), tuple(ended), tuple(changed))


def _previous(history: Path, name: str) -> dict[str, Any] | None:
    """The run saved in ``history`` just before ``name`` in (as_of, time) order, if any."""
    earlier = sorted(p for p in history.glob(HISTORY_GLOB) if p.name < name)
    if not earlier:
        return None
    path = earlier[-1]
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read this earlier run: {exc}", Source(str(path))) from None
    rows = document.get("children") if isinstance(document, dict) else None
    keys = ("child_id", "classification", "father_status", "mother_status")
    others = document.get("not_eligible_children", []) if isinstance(document, dict) else None
    if (
        not isinstance(rows, list)
        or not isinstance(others, list)
        or not all(isinstance(child, str) for child in others)
        or document.get("format") != FORMAT
        or not all(isinstance(r, dict) and all(k in r for k in keys) for r in rows)
    ):
        raise InputError(
            f"not a screening result of format {FORMAT}; move it out of the history folder",
            Source(str(path)),
        )
    return {**document, "file": str(path)}


# ---- the run ---------------------------------------------------------------------------------


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """A run makes millions of small objects, none in a reference cycle; the cyclic collector
    would walk them all over and over (at a million children, reading, classifying and writing
    took 45 s with it and 26 s without). Reference counting still frees everything."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:  # a caller's own frozen objects stay frozen
            # What the run made and kept is long-lived: move it to the oldest generation, as
            # the first collection would after walking millions of objects to find no cycle.
            gc.freeze()
            gc.unfreeze()
        if was:
            gc.enable()


def screen(
    federation_file: str | os.PathLike[str],
    roster_path: str | os.PathLike[str],
    as_of: date,
    out_dir: str | os.PathLike[str],
    *,
    rules: Rules | None = None,
    retain_ineligible: bool = False,
    history_dir: str | os.PathLike[str] | None = None,
    encoding: str | None = None,
    lang: str | None = None,
    xlsx: bool = False,
) -> ScreeningResult:
    """Screen the roster (CSV in ``encoding``, or a workbook) as of ``as_of``; write
    results.csv, results.json, report.html and rejects.csv (and results.xlsx with ``xlsx``) in
    ``out_dir``, in ``lang`` (``nodes.shared.i18n``), and keep results.json in the history
    folder (default ``out_dir/../history``). Raises ``NodesFailed`` (nothing written) when a
    node fails."""
    outputs = _Outputs(encoding, lang, xlsx)
    with _no_cycle_collection():
        return _screen(
            federation_file, roster_path, as_of, out_dir, rules, retain_ineligible, history_dir,
            outputs,
        )  # fmt: skip


class _Outputs(NamedTuple):
    """How the run reads the roster and writes its outputs."""

    encoding: str | None
    lang: str | None
    xlsx: bool


def _screen(
    federation_file: str | os.PathLike[str],
    roster_path: str | os.PathLike[str],
    as_of: date,
    out_dir: str | os.PathLike[str],
    rules: Rules | None,
    retain_ineligible: bool,
    history_dir: str | os.PathLike[str] | None,
    outputs: _Outputs,
) -> ScreeningResult:
    started = time.perf_counter()
    run_at = datetime.now(UTC)
    rules = rules or load_rules()
    out = Path(out_dir)
    history = Path(history_dir) if history_dir else out.resolve().parent / "history"
    name = f"{as_of.isoformat()}_{run_at:%Y%m%dT%H%M%S%fZ}.json"
    previous = _previous(history, name)  # a bad history file fails before any query
    with Client(load_federation(federation_file)) as client:
        client.warm()  # its caches are read while the roster is
        roster = read_roster(roster_path, as_of, outputs.encoding)
        ages = ages_of(roster.child_ids, as_of)
        minors = _minors(roster, ages, rules.adult_age)
        plan = _plan(client, rules)
        results = _ask(client, plan, minors.ids, as_of)
        keys = client.identifier_keys(roster.child_ids[minors.rows])[:, 0]
        memo_file = memo_path(client.config.cache, history)
        memo_key = client.file_key("memo")
    datasets = [(n, d, r.epoch, held) for (n, d, held), r in zip(plan, results, strict=True)]
    reuse = _Reuse(rules, as_of, roster, minors, results, keys)
    if previous is not None and not retain_ineligible:
        context = memo.context(rules, datasets, Path(previous["file"]).name)
        reuse.recall(memo.load(memo_file, context, memo_key), previous, ages)
    found = _records(plan, results, reuse.to_open())
    held = {s for _, _, statuses in plan for s in statuses}
    verdicts = _verdicts(roster, ages, reuse, found, as_of, rules)
    regions = map(attrgetter("region_code"), roster.children)
    names = map(attrgetter("name"), roster.children)
    children = tuple(map(Screened, regions, verdicts, names))
    result = ScreeningResult(
        as_of=as_of,
        run_at=run_at,
        rules=rules,
        roster=roster.path,
        retain_ineligible=retain_ineligible,
        children=children,
        rejects=roster.rejects,
        nodes=tuple(_node_runs(plan, results)),
        uncovered=tuple(s for s in rules.statuses if s not in held),
        changes=compare(previous, [c.verdict for c in children], rules),
        out_dir=out,
        history_file=history / name,
        seconds=time.perf_counter() - started,
        reused=int(np.count_nonzero(reuse.where >= 0)),
    )
    kept = write_outputs(result, lang=outputs.lang, xlsx=outputs.xlsx)
    try:
        history.mkdir(parents=True, exist_ok=True)
        kept.write(result.history_file)
    except OSError as exc:
        raise InputError(f"cannot keep the run in the history: {exc.strerror}") from exc
    context = memo.context(rules, datasets, result.history_file.name)
    try:
        memo.save(memo_file, reuse.remember(children, found, context), memo_key)
    except OSError as exc:
        raise InputError(
            f"cannot keep the screening memo in the client's cache ({memo_file}): "
            f"{exc.strerror}; the results and history are written"
        ) from exc
    return result


class _Minors(NamedTuple):
    """The roster's children under the adult age, and their parents as the run asks about them."""

    rows: np.ndarray  # the minors' roster rows
    ids: list[str]  # their parents' distinct valid identifiers: what the nodes are asked about
    fathers: np.ndarray  # each minor's father as a row of ``ids`` (-1: unknown)
    mothers: np.ndarray


def _minors(roster: Roster, ages: Sequence[int], adult_age: int) -> _Minors:
    rows = np.flatnonzero(np.asarray(ages) < adult_age)
    return _Minors(rows, *parents_of(roster.fathers[rows], roster.mothers[rows]))


def _verdicts(
    roster: Roster,
    ages: Sequence[int],
    reuse: _Reuse,
    found: Mapping[str, Sequence[Match]],
    as_of: date,
    rules: Rules,
) -> list[Classification]:
    """Every roster child's class: recalled from the memo, made in bulk for adults and for
    children whose parents are on no register, and ``classify``'d from ``found`` for the rest."""
    verdicts: list[Classification | None] = [None] * len(roster.children)
    for row, verdict in reuse.recalled.items():
        verdicts[row] = verdict
    plain = np.flatnonzero(np.asarray(ages) >= rules.adult_age).tolist() + reuse.unrecorded()
    made = classify_unrecorded(
        [roster.children[row].child_id for row in plain], [ages[row] for row in plain], as_of, rules
    )
    for row, verdict in zip(plain, made, strict=True):
        verdicts[row] = verdict

    def parent(value: str | Unknown) -> Sequence[Match] | Unknown:
        return value if isinstance(value, Unknown) else found.get(value, ())

    for row in [row for row, verdict in enumerate(verdicts) if verdict is None]:
        c = roster.children[row]
        verdicts[row] = classify(
            c.child_id, as_of, parent(c.father), parent(c.mother), rules, ages[row]
        )
    return verdicts  # type: ignore[return-value]  # every row is set


class _Reuse:
    """Which children the previous run's memo lets this run reuse (nodes.client.screening.memo), and
    the memo this run leaves for the next."""

    def __init__(
        self,
        rules: Rules,
        as_of: date,
        roster: Roster,
        minors: _Minors,
        results: Sequence[QueryResult],
        keys: np.ndarray,
    ):
        """``keys``: the minors' identifier keys (first words). The memo holds the minors with
        both parents' identifiers valid."""
        fathers, mothers = minors.fathers, minors.mothers
        known = (fathers >= 0) & (mothers >= 0)
        self.rules, self.as_of, self.keys = rules, as_of, keys[known]
        self.rows = minors.rows[known].tolist()  # the known minors' roster rows
        self.known = [roster.children[row] for row in self.rows]
        self.lone = np.concatenate([fathers[(fathers >= 0) & (mothers < 0)],
                                    mothers[(mothers >= 0) & (fathers < 0)]])  # fmt: skip
        self.fathers, self.mothers = fathers[known], mothers[known]
        tokens = memo.mix(*(word for r in results for word in (r.tags, r.fingerprints)))
        self.records = np.zeros(len(tokens), bool)
        for r in results:
            self.records |= r.fingerprints != 0
        self.digests = memo.mix(tokens[self.fathers], tokens[self.mothers])
        self.where = np.full(len(self.rows), -1, np.intp)
        self.previous: memo.Memo | None = None
        self.recalled: dict[int, Classification] = {}  # by roster row

    def recall(
        self, previous: memo.Memo | None, document: Mapping[str, Any], ages: Sequence[int]
    ) -> None:
        """Reuse the class of every child the memo still holds good for. Children whose parents
        no node holds anything of are left to ``classify_unrecorded`` (cheaper still, the same
        answer); the others are recalled without opening a label, a candidate's reasons and
        evidence from the row of the history document the memo belongs to. ``ages``: every
        roster child's."""
        if previous is None:
            return
        self.previous = previous
        self.where = where = previous.recall(self.keys, self.digests, self.as_of)
        fathers, mothers = self.records[self.fathers], self.records[self.mothers]
        chosen = np.flatnonzero((where >= 0) & (fathers | mothers))
        at = where[chosen]
        rows = {row["child_id"]: row for row in document["children"]}
        statuses = memo.vocabulary(self.rules)
        findings = {
            (role, code, records): recalled(role, status, records, self.rules)
            for role in ("father", "mother")
            for code, status in enumerate(statuses)
            for records in (False, True)
        }
        for i, klass, father_code, mother_code, father_records, mother_records in zip(
            chosen.tolist(),
            previous.classes[at].tolist(),
            previous.fathers[at].tolist(),
            previous.mothers[at].tolist(),
            fathers[chosen].tolist(),
            mothers[chosen].tolist(),
            strict=True,
        ):
            child = self.known[i].child_id
            klass = CLASSES[klass]
            father = findings["father", father_code, father_records]
            mother = findings["mother", mother_code, mother_records]
            if klass == NOT_ELIGIBLE:
                reasons, evidence = father.reasons + mother.reasons, ()
            elif (row := rows.get(child)) and row["classification"] == klass:
                reasons, evidence = tuple(row["reasons"]), tuple(row["evidence"])
            else:
                where[i] = -1
                continue
            self.recalled[self.rows[i]] = Classification(
                child, klass, ages[self.rows[i]], father, mother, reasons, evidence
            )

    def unrecorded(self) -> list[int]:
        """Roster rows of the known minors whose parents no node holds anything of."""
        none = ~self.records[self.fathers] & ~self.records[self.mothers]
        return np.asarray(self.rows, np.intp)[none].tolist()

    def to_open(self) -> np.ndarray:
        """Rows of the identifiers whose labels must be opened: the parents, with entries, of
        every minor not reused."""
        needed = np.zeros(len(self.records), bool)
        fresh = self.where < 0
        needed[self.fathers[fresh]] = needed[self.mothers[fresh]] = needed[self.lone] = True
        return np.flatnonzero(needed & self.records)

    def remember(
        self, children: Sequence[Screened], found: Mapping[str, Sequence[Match]], context: dict
    ) -> memo.Memo:
        """This run's memo: every child with both parents known."""
        n, as_of, rules = len(self.known), self.as_of, self.rules
        code = {s: i for i, s in enumerate(memo.vocabulary(rules))}
        klass = {c: i for i, c in enumerate(CLASSES)}
        until = np.empty(n, np.int32)
        classes, fathers, mothers = (np.empty(n, np.uint8) for _ in range(3))
        reused = self.where >= 0
        if self.previous is not None:
            at, kept = self.where[reused], self.previous
            until[reused], classes[reused] = kept.until[at], kept.classes[at]
            fathers[reused], mothers[reused] = kept.fathers[at], kept.mothers[at]
        tomorrow = as_of.toordinal() + 1
        for i in np.flatnonzero(~reused).tolist():
            child, verdict = self.known[i], children[self.rows[i]].verdict
            classes[i] = klass[verdict.classification]
            fathers[i], mothers[i] = code[verdict.father.status], code[verdict.mother.status]
            if verdict.classification in CANDIDATES:  # its reasons quote the date
                until[i] = tomorrow
            else:
                parents = (found.get(child.father, ()), found.get(child.mother, ()))
                until[i] = stable_until(child.child_id, parents, as_of, rules).toordinal()
        return memo.Memo(context, as_of, self.keys, self.digests, until, classes, fathers, mothers)
