"""What a reviewer reads from one audit log, and the receipt cross-check between two.

From a node's log: which client (``peer``) queried which dataset, how many elements, for which
purpose and legal basis; what was refused and why; elements charged per client, dataset and day;
and anomalies worth a question (a client repeatedly declaring close to its per-session limit, as
an enumeration would; sessions at night, local time; a grant whose budget the node's
configuration lifted, which the node logs each time it starts). A client's log reads the same
way with the nodes as peers. Output is terminal text, JSON, CSV (one row per session) or one
self-contained HTML page with inline SVG charts.

``cross_check`` compares the receipts a client logged with those the node logged: both sides
must account for every session, with the same counts.
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

from nodes.shared.audit.log import LogContents, read_log
from psi.errors import InputError

DEFAULT_UTC_OFFSET = "+08:00"
NEAR_LIMIT = 0.9  # a session "near the limit" declares at least this share of it
NEAR_LIMIT_SESSIONS = 3  # this many such sessions per client and dataset is an anomaly
QUIET_HOURS = (22, 6)  # local hours from 22:00 to 06:00
RECEIPT_EVENTS = ("receipt_issued", "receipt_received")
# What both parties' receipt events carry and must agree on.
RECEIPT_FIELDS = (
    "dataset",
    "purpose",
    "legal_basis_ref",
    "key_epoch",
    "table_version",
    "declared",
    "evaluated",
    "chunks",
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


@dataclass
class Report:
    owner: str
    utc_offset: timezone
    entries: int
    sessions: list[Session] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    budget: list[BudgetUse] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)

    def totals(self) -> list[tuple[str, str, str, int, int]]:
        """(peer, dataset, purpose, sessions, elements): who asked what, how much, why."""
        totals: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        for s in self.sessions:
            row = totals[s.peer, s.dataset, s.purpose]
            row[0] += 1
            row[1] += s.elements
        return [(*key, n, elements) for key, (n, elements) in sorted(totals.items())]


def build_report(path: Path, utc_offset: timezone | None = None) -> Report:
    offset = utc_offset or parse_utc_offset(DEFAULT_UTC_OFFSET)
    contents = read_log(path)
    report = Report(contents.owner, offset, len(contents.entries))
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
            "totals": [
                dict(zip(("peer", "dataset", "purpose", "sessions", "elements"), t, strict=True))
                for t in report.totals()
            ],
            "sessions": [_session_row(s) for s in report.sessions],
            "refusals": [{**asdict(r), "time": r.time.isoformat()} for r in report.refusals],
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
    width = left + bar * len(days) + 20
    legend_y = top + plot_h + 50
    height = legend_y + 20 * len(series) + 10
    peak = max(sum(s.get(d, 0) for s in series.values()) for d in days) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{esc(title)}">',
        f'<text x="{left}" y="18" class="title">{esc(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" '
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


def _table(headers: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
td:nth-child(n+4) { font-variant-numeric: tabular-nums; }
svg text { font: 11px system-ui, sans-serif; fill: #222; }
svg text.title { font-size: 13px; font-weight: 600; }
.anomaly { color: #a00; }
"""


def to_html(report: Report) -> str:
    """One page, no external scripts, styles or fonts: it can be mailed and archived as is."""
    esc = html.escape
    days = _days(report)
    anomalies = "".join(
        f'<li class="anomaly"><b>{esc(a.kind)}</b> {esc(a.peer)} / {esc(a.dataset)}: '
        f"{esc(a.message)} (sessions {esc(', '.join(a.sessions))})</li>"
        for a in report.anomalies
    )
    sections = [
        f"<h1>Audit report: {esc(report.owner)}</h1>",
        f"<p>{report.entries} entries, {len(report.sessions)} sessions, "
        f"{len(report.refusals)} refusals; times in {_offset_name(report.utc_offset)}.</p>",
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
        "<h2>Budget use per day</h2>",
        _table(
            ("day", "peer", "dataset", "sessions", "elements"),
            ((b.day, b.peer, b.dataset, b.sessions, b.elements) for b in report.budget),
        ),
        "<h2>Sessions</h2>",
        _table(
            CSV_COLUMNS,
            (("" if v is None else v for v in _session_row(s).values()) for s in report.sessions),
        ),
    ]
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Audit report: {esc(report.owner)}</title><style>{_STYLE}</style></head>"
        "<body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


# -- receipts on both sides ----------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    session_id: str
    kind: str  # "missing-at-node", "missing-at-client", "differs" or "duplicate"
    message: str

    def __str__(self) -> str:
        return f"session {self.session_id}: {self.message} [{self.kind}]"


@dataclass
class CrossCheck:
    client: str
    node: str
    matched: int = 0  # receipts present and equal on both sides
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def _receipts(
    contents: LogContents, event: str, peer: str, side: str, check: CrossCheck
) -> dict[str, dict[str, Any]]:
    """The receipts ``contents`` logged with ``peer``, by session; a repeat is a difference."""
    found: dict[str, dict[str, Any]] = {}
    for e in contents.entries:
        if e["event"] != event or e.get("peer", {}).get("cn") != peer:
            continue
        sid = e.get("session_id", "")
        if sid in found:
            check.differences.append(
                Difference(sid, "duplicate", f"the {side} logged this receipt more than once")
            )
        found[sid] = e
    return found


def cross_check(client_log: Path, node_log: Path) -> CrossCheck:
    """Every ``receipt_received`` in the client's log from this node against every
    ``receipt_issued`` in the node's log to this client. Each log's owner is its party's
    certificate name, which the other party logs as ``peer.cn``."""
    client, node = read_log(client_log), read_log(node_log)
    for path, contents, role, wrong in (
        (client_log, client, "client", "receipt_issued"),
        (node_log, node, "node", "receipt_received"),
    ):
        if any(e["event"] == wrong for e in contents.entries):
            raise InputError(
                f"{path} logs {wrong} events, so it is not a {role}'s log "
                "(the order is CLIENT_LOG NODE_LOG)"
            )
    check = CrossCheck(client.owner, node.owner)
    held = _receipts(client, "receipt_received", node.owner, "client", check)
    issued = _receipts(node, "receipt_issued", client.owner, "node", check)
    for sid in sorted(held.keys() - issued.keys()):
        check.differences.append(
            Difference(sid, "missing-at-node", "the client holds a receipt the node never logged")
        )
    for sid in sorted(issued.keys() - held.keys()):
        check.differences.append(
            Difference(sid, "missing-at-client", "the node logged a receipt the client never did")
        )
    for sid in sorted(held.keys() & issued.keys()):
        differing = [
            f"{name}: client {held[sid].get(name)!r}, node {issued[sid].get(name)!r}"
            for name in RECEIPT_FIELDS
            if held[sid].get(name) != issued[sid].get(name)
        ]
        if differing:
            check.differences.append(Difference(sid, "differs", "; ".join(differing)))
        else:
            check.matched += 1
    return check
