"""What a reviewer reads from one audit log, and the receipt cross-check between two.

From a node's log: which client (``peer``) queried which dataset, how many elements, for which
purpose and legal basis; what was refused and why; elements charged per client, dataset and day;
and anomalies worth a question (a client repeatedly declaring close to its per-session limit, as
an enumeration would; sessions at night, local time; a grant whose budget the node's
configuration lifted, which the node logs each time it starts). A client's log reads the same
way with the nodes as peers. Output is terminal text, JSON, CSV (one row per session) or one
self-contained HTML page with inline SVG charts. The receipt cross-check between two logs is
``nodes.shared.audit.crosscheck``.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from nodes.shared.audit.log import LogContents, VerifyReport, read_log
from nodes.shared.page import PAGE_STYLE, text_width
from psi.errors import InputError

DEFAULT_UTC_OFFSET = "+08:00"
NEAR_LIMIT = 0.9  # a session "near the limit" declares at least this share of it
NEAR_LIMIT_SESSIONS = 3  # this many such sessions per client and dataset is an anomaly
QUIET_HOURS = (22, 6)  # local hours from 22:00 to 06:00
RECEIPT_EVENTS = ("receipt_issued", "receipt_received")
# What an operator did, shown beside sessions and refusals: builds published (catalogue_changed),
# rotations, access requests decided, disputes raised and resolved (withdrawals among them).
ACTION_EVENTS = (
    "catalogue_changed",
    "key_rotated",
    "policy_changed",
    "catalogue_request",
    "dispute_raised",
    "dispute_resolved",
)
CSV_COLUMNS = (
    "session_id",
    "opened",
    "peer",
    "fingerprint",
    "dataset",
    "purpose",
    "legal_basis_ref",
    "declared",
    "evaluated",
    "limit",
    "key_epoch",
    "table_version",
    "outcome",
    "receipt",
)
_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})")
# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def parse_utc_offset(text: str) -> timezone:
    """``+08:00`` -> UTC+08:00; the reviewer's local time for days and night hours."""
    match = _OFFSET.fullmatch(text.strip())
    if not match or int(match[2]) > 14 or int(match[3]) > 59:
        raise InputError(f"--utc-offset {text!r} is not an offset like +08:00 or -05:00")
    sign = -1 if match[1] == "-" else 1
    return timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3])))


@dataclass
class Session:
    """One session as the log saw it, merged from every entry carrying its ``session_id``."""

    session_id: str
    opened: datetime  # local time
    peer: str = ""
    fingerprint: str = ""
    dataset: str = ""
    purpose: str = ""
    legal_basis_ref: str = ""
    declared: int | None = None
    evaluated: int | None = None
    limit: int | None = None
    key_epoch: int | None = None
    table_version: int | None = None
    outcome: str = ""
    receipt: bool = False

    @property
    def elements(self) -> int:
        """Elements charged: the declared count (what budgets meter), else those evaluated."""
        return self.declared if self.declared is not None else self.evaluated or 0


@dataclass(frozen=True)
class Refusal:
    time: datetime  # local time
    event: str
    peer: str
    dataset: str
    purpose: str
    reason: str


@dataclass(frozen=True)
class BudgetUse:
    peer: str
    dataset: str
    day: date  # local
    sessions: int
    elements: int


@dataclass(frozen=True)
class Anomaly:
    kind: str  # "near-limit", "off-hours" or "unlimited"
    peer: str
    dataset: str
    message: str
    sessions: tuple[str, ...]


@dataclass(frozen=True)
class Lookup:
    """A client's lookup: how many identifiers, and whether the node or its cache answered."""

    time: datetime  # local time
    peer: str
    dataset: str
    purpose: str
    queried: int
    cached: int
    evaluated: int
    answered_by: str
    outcome: str


@dataclass(frozen=True)
class Action:
    """An operator's action: a build published, a key rotated, a request decided, a dispute."""

    time: datetime  # local time
    event: str
    peer: str
    dataset: str
    outcome: str
    detail: str


@dataclass
class Report:
    owner: str
    utc_offset: timezone
    entries: int
    verification: VerifyReport | None = None  # None: the reviewer gave no key
    sessions: list[Session] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    lookups: list[Lookup] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    budget: list[BudgetUse] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    verification: VerifyReport | None = None  # with the owner's key (``psi audit report --key``)

    @property
    def verdict(self) -> str:
        if self.verification is None:
            return "not verified: give the owner's public key (--key) to verify the log"
        return self.verification.verdict()

    def totals(self) -> list[tuple[str, str, str, int, int]]:
        """(peer, dataset, purpose, sessions, elements): who asked what, how much, why."""
        totals: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        for s in self.sessions:
            row = totals[s.peer, s.dataset, s.purpose]
            row[0] += 1
            row[1] += s.elements
        return [(*key, n, elements) for key, (n, elements) in sorted(totals.items())]


def build_report(
    path: Path, utc_offset: timezone | None = None, verification: VerifyReport | None = None
) -> Report:
    """The report on the log at ``path``, with ``verify_log``'s result when the reviewer ran it."""
    offset = utc_offset or parse_utc_offset(DEFAULT_UTC_OFFSET)
    contents = read_log(path)
    report = Report(contents.owner, offset, len(contents.entries), verification)
    report.sessions = _sessions(contents, offset)
    report.refusals = [
        Refusal(
            _local(e["time"], offset),
            e["event"],
            e.get("peer", {}).get("cn", ""),
            e.get("dataset", ""),
            e.get("purpose", ""),
            e.get("reason", ""),
        )
        for e in contents.entries
        if e["event"] == "session_refused" or e.get("outcome") == "refused"
    ]
    report.lookups = [
        Lookup(
            _local(e["time"], offset),
            e.get("peer", {}).get("cn", ""),
            e.get("dataset", ""),
            e.get("purpose", ""),
            e.get("queried", 0),
            e.get("cached", 0),
            e.get("evaluated", 0),
            e.get("answered_by", ""),
            e.get("outcome", ""),
        )
        for e in contents.entries
        if e["event"] == "lookup"
    ]
    report.actions = [
        Action(
            _local(e["time"], offset),
            e["event"],
            e.get("peer", {}).get("cn", ""),
            e.get("dataset", ""),
            e.get("outcome", ""),
            "; ".join(
                [f"{name} {e[name]}" for name in ("key_epoch", "table_version") if name in e]
                + ([e["detail"]] if e.get("detail") else [])
            ),
        )
        for e in contents.entries
        if e["event"] in ACTION_EVENTS
    ]
    report.budget = _budget(report.sessions)
    report.anomalies = _anomalies(report.sessions) + _unlimited(contents, offset)
    return report


def _local(time: str, offset: timezone) -> datetime:
    return datetime.fromisoformat(time).astimezone(offset)


_MERGED = (
    "dataset",
    "purpose",
    "legal_basis_ref",
    "declared",
    "evaluated",
    "limit",
    "key_epoch",
    "table_version",
    "outcome",
)


def _sessions(contents: LogContents, offset: timezone) -> list[Session]:
    sessions: dict[str, Session] = {}
    for e in contents.entries:
        if "session_id" not in e:
            continue
        s = sessions.setdefault(
            e["session_id"], Session(e["session_id"], _local(e["time"], offset))
        )
        for name in _MERGED:  # later entries (the receipt) have the final word
            if name in e:
                setattr(s, name, e[name])
        if "peer" in e:
            s.peer, s.fingerprint = e["peer"]["cn"], e["peer"].get("fingerprint", "")
        s.receipt |= e["event"] in RECEIPT_EVENTS
    return sorted(sessions.values(), key=lambda s: s.opened)


def _budget(sessions: Iterable[Session]) -> list[BudgetUse]:
    days: dict[tuple[str, str, date], list[int]] = defaultdict(lambda: [0, 0])
    for s in sessions:
        row = days[s.peer, s.dataset, s.opened.date()]
        row[0] += 1
        row[1] += s.elements
    return [BudgetUse(p, d, day, n, e) for (p, d, day), (n, e) in sorted(days.items())]


def _anomalies(sessions: list[Session]) -> list[Anomaly]:
    found = []
    near: dict[tuple[str, str], list[Session]] = defaultdict(list)
    for s in sessions:
        if s.limit and s.elements >= NEAR_LIMIT * s.limit:
            near[s.peer, s.dataset].append(s)
    for (peer, dataset), group in sorted(near.items()):
        if len(group) >= NEAR_LIMIT_SESSIONS:
            found.append(
                Anomaly(
                    "near-limit",
                    peer,
                    dataset,
                    f"{len(group)} sessions declared at least {NEAR_LIMIT:.0%} of the per-session "
                    "limit",
                    tuple(s.session_id for s in group),
                )
            )
    late, early = QUIET_HOURS
    for s in sessions:
        if s.opened.hour >= late or s.opened.hour < early:
            found.append(
                Anomaly(
                    "off-hours",
                    s.peer,
                    s.dataset,
                    f"session opened at {s.opened:%Y-%m-%d %H:%M} local time",
                    (s.session_id,),
                )
            )
    return found


def _unlimited(contents: LogContents, offset: timezone) -> list[Anomaly]:
    """One anomaly per client and dataset whose grant had a window without a limit, as the
    node last logged it at a start."""
    latest = {
        (e["peer"]["cn"], e["dataset"]): e
        for e in contents.entries
        if e["event"] == "budget_unlimited"
    }
    return [
        Anomaly(
            "unlimited",
            peer,
            dataset,
            f"the grant's budget is unlimited {e.get('detail', '')}: nothing bounds the "
            "identifiers it can test (logged at node start, last "
            f"{_local(e['time'], offset):%Y-%m-%d %H:%M})",
            (),
        )
        for (peer, dataset), e in sorted(latest.items())
    ]


# -- output --------------------------------------------------------------------------------------


def _offset_name(offset: timezone) -> str:
    return offset.tzname(None) or "UTC"


def to_text(report: Report) -> str:
    lines = [
        f"audit report for the log of {report.owner}: {report.entries} entries, "
        f"{len(report.sessions)} sessions, times in {_offset_name(report.utc_offset)}",
        f"verification: {report.verdict}",
        "",
        "queries (who asked what, how much, for which purpose)",
        f"  {'peer':<20} {'dataset':<16} {'purpose':<20} {'sessions':>8} {'elements':>10}",
    ]
    lines += [f"  {p:<20} {d:<16} {u:<20} {n:>8} {e:>10}" for p, d, u, n, e in report.totals()] or [
        "  none"
    ]
    lines += ["", f"refusals ({len(report.refusals)})"]
    lines += [
        f"  {r.time:%Y-%m-%d %H:%M}  {r.peer:<20} {r.dataset:<16} {r.purpose:<16} {r.reason}"
        for r in report.refusals
    ] or ["  none"]
    lines += ["", f"lookups ({len(report.lookups)}; answered by the node or the client's cache)"]
    lines += [
        f"  {x.time:%Y-%m-%d %H:%M}  {x.peer:<20} {x.dataset:<16} {x.purpose:<16} "
        f"{x.queried:>8} queried, {x.cached} from the cache, {x.evaluated} by the node: "
        f"{x.answered_by or x.outcome}"
        for x in report.lookups
    ] or ["  none"]
    lines += ["", f"operator actions ({len(report.actions)})"]
    lines += [
        f"  {a.time:%Y-%m-%d %H:%M}  {a.event:<18} {a.peer or '-':<16} {a.dataset or '-':<16} "
        f"{a.outcome:<10} {a.detail}"
        for a in report.actions
    ] or ["  none"]
    lines += [
        "",
        "budget use (elements charged per peer, dataset and local day)",
        f"  {'day':<10}  {'peer':<20} {'dataset':<16} {'sessions':>8} {'elements':>10}",
    ]
    lines += [
        f"  {b.day}  {b.peer:<20} {b.dataset:<16} {b.sessions:>8} {b.elements:>10}"
        for b in report.budget
    ] or ["  none"]
    lines += ["", f"anomalies ({len(report.anomalies)})"]
    lines += [
        f"  {a.kind}: {a.peer} / {a.dataset}: {a.message} (sessions {', '.join(a.sessions)})"
        for a in report.anomalies
    ] or ["  none"]
    return "\n".join(lines) + "\n"


def _session_row(s: Session) -> dict[str, Any]:
    row = asdict(s)
    row["opened"] = s.opened.isoformat()
    return row


def to_json(report: Report) -> str:
    return json.dumps(
        {
            "owner": report.owner,
            "utc_offset": _offset_name(report.utc_offset),
            "entries": report.entries,
            "verification": report.verdict,
            "totals": [
                dict(zip(("peer", "dataset", "purpose", "sessions", "elements"), t, strict=True))
                for t in report.totals()
            ],
            "sessions": [_session_row(s) for s in report.sessions],
            "refusals": [{**asdict(r), "time": r.time.isoformat()} for r in report.refusals],
            "lookups": [{**asdict(x), "time": x.time.isoformat()} for x in report.lookups],
            "actions": [{**asdict(a), "time": a.time.isoformat()} for a in report.actions],
            "budget": [{**asdict(b), "day": b.day.isoformat()} for b in report.budget],
            "anomalies": [asdict(a) for a in report.anomalies],
        },
        indent=2,
        ensure_ascii=False,
    )


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for s in report.sessions:
        writer.writerow(_session_row(s))
    return out.getvalue()


def _days(report: Report) -> list[date]:
    if not report.sessions:
        return []
    first, last = report.sessions[0].opened.date(), report.sessions[-1].opened.date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _bar_chart(title: str, days: list[date], series: Mapping[str, Mapping[date, int]]) -> str:
    """A stacked bar per day, one colour per series, as inline SVG with a legend."""
    esc = html.escape
    if not days:
        return f"<p>{esc(title)}: no sessions.</p>"
    left, top, plot_h, bar = 70, 30, 200, max(6, min(40, 720 // len(days)))
    legend = max((text_width(name) for name in series), default=0) + 18
    # As wide as the bars, the title and the legend need: a short log's chart is not cut.
    width = max(left + bar * len(days) + 20, left + text_width(title, 13) + 10, left + legend + 10)
    legend_y = top + plot_h + 50
    height = legend_y + 20 * len(series) + 10
    peak = max(sum(s.get(d, 0) for s in series.values()) for d in days) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
        f'viewBox="0 0 {width:.0f} {height}" role="img" aria-label="{esc(title)}">',
        f'<text x="{left}" y="18" class="title">{esc(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10:.0f}" y2="{top + plot_h}" '
        'stroke="#444"/>',
    ]
    for value in (0, peak // 2, peak):
        y = top + plot_h - plot_h * value / peak
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    label_every = max(1, len(days) // 12)
    for i, day in enumerate(days):
        x, base = left + i * bar, top + plot_h
        for (name, values), colour in zip(series.items(), _cycle(len(series)), strict=True):
            n = values.get(day, 0)
            if n:
                h = plot_h * n / peak
                base -= h
                parts.append(
                    f'<rect x="{x + 1}" y="{base:.1f}" width="{bar - 2}" height="{h:.1f}" '
                    f'fill="{colour}"><title>{esc(name)} {day}: {n} elements</title></rect>'
                )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
                f"{day:%m-%d}</text>"
            )
    for j, (name, colour) in enumerate(zip(series, _cycle(len(series)), strict=True)):
        y = legend_y + 20 * j
        parts.append(f'<rect x="{left}" y="{y - 11}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{left + 18}" y="{y}">{esc(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _cycle(n: int) -> list[str]:
    return [_PALETTE[i % len(_PALETTE)] for i in range(n)]


def _series(sessions: Iterable[Session], key: str) -> dict[str, dict[date, int]]:
    series: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    for s in sessions:
        series[getattr(s, key) or "(none)"][s.opened.date()] += s.elements
    return dict(sorted(series.items()))


def _table(headers: Iterable[str], rows: Iterable[Iterable[object]], kind: str = "") -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    cls = f' class="{kind}"' if kind else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# The sessions table has fourteen columns: smaller type, and ids and fingerprints wrap.
_STYLE = (
    PAGE_STYLE
    + """
table.sessions{font-size:11px;table-layout:fixed}
table.sessions td{font-variant-numeric:tabular-nums}
svg text.title{font-size:13px;font-weight:600}.anomaly{color:#a00}.verified{color:#060}"""
)


def to_html(report: Report) -> str:
    """One page, no external scripts, styles or fonts: it can be mailed and archived as is."""
    esc = html.escape
    days = _days(report)
    complete = report.verification is not None and report.verification.complete
    verdict_class = "verified" if complete else "anomaly"
    anomalies = "".join(
        f'<li class="anomaly"><b>{esc(a.kind)}</b> {esc(a.peer)} / {esc(a.dataset)}: '
        f"{esc(a.message)} (sessions {esc(', '.join(a.sessions))})</li>"
        for a in report.anomalies
    )
    sections = [
        f"<h1>Audit report: {esc(report.owner)}</h1>",
        f"<p>{report.entries} entries, {len(report.sessions)} sessions, "
        f"{len(report.refusals)} refusals; times in {_offset_name(report.utc_offset)}.</p>",
        "<h2>Verification</h2>",
        f'<p class="{verdict_class}">{esc(report.verdict)}</p>',
        _bar_chart("Elements queried per day, by peer", days, _series(report.sessions, "peer")),
        _bar_chart(
            "Elements queried per day, by purpose", days, _series(report.sessions, "purpose")
        ),
        "<h2>Who asked what, how much, for which purpose</h2>",
        _table(("peer", "dataset", "purpose", "sessions", "elements"), report.totals()),
        f"<h2>Anomalies ({len(report.anomalies)})</h2>",
        f"<ul>{anomalies}</ul>" if anomalies else "<p>None.</p>",
        f"<h2>Refusals ({len(report.refusals)})</h2>",
        _table(
            ("time", "event", "peer", "dataset", "purpose", "reason"),
            (
                (f"{r.time:%Y-%m-%d %H:%M}", r.event, r.peer, r.dataset, r.purpose, r.reason)
                for r in report.refusals
            ),
        ),
        f"<h2>Lookups ({len(report.lookups)})</h2>",
        _table(
            ("time", "peer", "dataset", "purpose", "queried", "cached", "by the node", "answered"),
            (
                (
                    f"{x.time:%Y-%m-%d %H:%M}",
                    x.peer,
                    x.dataset,
                    x.purpose,
                    x.queried,
                    x.cached,
                    x.evaluated,
                    x.answered_by or x.outcome,
                )
                for x in report.lookups
            ),
        ),
        f"<h2>Operator actions ({len(report.actions)})</h2>",
        _table(
            ("time", "event", "peer", "dataset", "outcome", "detail"),
            (
                (f"{a.time:%Y-%m-%d %H:%M}", a.event, a.peer, a.dataset, a.outcome, a.detail)
                for a in report.actions
            ),
        ),
        "<h2>Budget use per day</h2>",
        _table(
            ("day", "peer", "dataset", "sessions", "elements"),
            ((b.day, b.peer, b.dataset, b.sessions, b.elements) for b in report.budget),
        ),
        "<h2>Sessions</h2>",
        _table(
            CSV_COLUMNS,
            (("" if v is None else v for v in _session_row(s).values()) for s in report.sessions),
            "sessions",
        ),
    ]
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Audit report: {esc(report.owner)}</title><style>{_STYLE}</style></head>"
        "<body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
