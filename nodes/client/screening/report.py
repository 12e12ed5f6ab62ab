"""A screening's outputs: results.csv, results.json, report.html, rejects.csv, and the roll
register that civil affairs serves back to education and medical insurance.

Data minimisation is applied once, in ``public_row``: the statuses and reasons of the parents of
a ``not_eligible`` child are replaced by WITHHELD unless the run was told to retain them. Every
output is derived from those rows (the HTML report from the results.json document alone), so no
file can show more than results.json does. Parents' identifiers are written nowhere.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from html import escape
from operator import attrgetter
from pathlib import Path
from typing import Any

from nodes.client.screening.classify import (
    CANDIDATES,
    CLASSES,
    ELIGIBLE,
    NONE,
    NOT_ASKED,
    NOT_ELIGIBLE,
    Classification,
)
from nodes.client.screening.result import Change, ScreeningResult
from psi.errors import InputError
from psi.ids import write_rejects
from psi.labels import REGISTER_COLUMNS

FORMAT = 1
RESULTS_CSV, RESULTS_JSON, REPORT_HTML, REJECTS_CSV = (
    "results.csv",
    "results.json",
    "report.html",
    "rejects.csv",
)
RESULT_COLUMNS = (
    "child_id",
    "classification",
    "father_status",
    "mother_status",
    "reasons",
    "evidence",
)
WITHHELD = "withheld"
NOT_ELIGIBLE_CHILDREN = "not_eligible_children"  # what a history keeps of the other rows
LISTED = 2000  # candidates the HTML report lists; a page of a province's 100,000 would not open
MINIMISATION = {
    False: "statuses of parents of not_eligible children are withheld: only counts are kept",
    True: "statuses of parents of not_eligible children are retained (retain_ineligible)",
}


def withheld(verdict: Classification, retain_ineligible: bool) -> bool:
    """Whether the parents' situations are withheld: for a not_eligible minor unless
    ``retain_ineligible`` (an adult's reason is the age, not the parents)."""
    return (
        verdict.classification == NOT_ELIGIBLE
        and not retain_ineligible
        and verdict.father.status != NOT_ASKED
    )


def public_row(verdict: Classification, retain_ineligible: bool) -> dict[str, Any]:
    """A child's result as written (``withheld`` applied)."""
    if withheld(verdict, retain_ineligible):
        return {"child_id": verdict.child_id, **_WITHHELD_ROW}
    return {
        "child_id": verdict.child_id,
        "classification": verdict.classification,
        "father_status": verdict.father.status,
        "mother_status": verdict.mother.status,
        "reasons": list(verdict.reasons),
        "evidence": list(verdict.evidence),
    }


# The row of most children, shared (never mutated).
_WITHHELD_ROW = {
    "classification": NOT_ELIGIBLE,
    "father_status": WITHHELD,
    "mother_status": WITHHELD,
    "reasons": [WITHHELD],
    "evidence": [],
}


def _csv_cells(row: Mapping[str, Any]) -> tuple[str, ...]:
    return (
        row["child_id"],
        row["classification"],
        row["father_status"],
        row["mother_status"],
        "; ".join(row["reasons"]),
        " ".join(row["evidence"]),
    )


_JSON = json.JSONEncoder(ensure_ascii=False)  # one encoder: json.dumps makes one a call


class _Lines:
    """Result rows (``public_row``'s) as CSV and JSON lines. A row without evidence (a withheld
    row, an adult's) shares everything after the child's identifier with every row of the same
    cells, so most of a million rows are written by concatenation: a canonical identifier is 18
    characters of [0-9X], needing no quoting in CSV or escaping in JSON."""

    def __init__(self) -> None:
        self._csv: dict[tuple[str, ...], str] = {}  # the text after the identifier, per cells
        self._json: dict[tuple[str, ...], str] = {}
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer)

    @staticmethod
    def _shared(row: Mapping[str, Any]) -> tuple[str, ...] | None:
        if row["reasons"] is _WITHHELD_ROW["reasons"]:
            return ()
        if row["evidence"]:
            return None
        return (row["classification"], row["father_status"], row["mother_status"], *row["reasons"])

    def _csv_line(self, row: Mapping[str, Any]) -> str:
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerow(_csv_cells(row))
        return self._buffer.getvalue()

    def both(self, row: Mapping[str, Any]) -> tuple[str, str]:
        """The row's CSV line and JSON text."""
        key = self._shared(row)
        if key is None:
            return self._csv_line(row), _JSON.encode(row)
        if key not in self._csv:
            self._csv[key] = self._csv_line({**row, "child_id": ""})
            rest = {k: v for k, v in row.items() if k != "child_id"}
            self._json[key] = ", " + _JSON.encode(rest)[1:]
        return self._joined(key, row["child_id"])

    def withheld(self, child_id: str) -> tuple[str, str]:
        """``both`` of a withheld row, without making it."""
        if () not in self._csv:
            return self.both({"child_id": child_id, **_WITHHELD_ROW})
        return self._joined((), child_id)

    def _joined(self, key: tuple[str, ...], child_id: str) -> tuple[str, str]:
        return child_id + self._csv[key], '{"child_id": "' + child_id + '"' + self._json[key]


def _change(change: Change) -> dict[str, Any]:
    return {
        "child_id": change.child_id,
        "before": change.before,
        "after": change.after,
        "why": [why._asdict() for why in change.why],
    }


def document(result: ScreeningResult) -> dict[str, Any]:
    """The results.json document but its rows: run metadata, counts and changes."""
    verdicts = list(map(attrgetter("verdict"), result.children))
    classes = list(map(attrgetter("classification"), verdicts))
    by_class = Counter(classes)
    by_region: dict[str, Counter[str]] = defaultdict(Counter)
    regions = map(attrgetter("region_code"), result.children)
    for (region, verdict), n in Counter(zip(regions, classes, strict=True)).items():
        by_region[region or "(blank)"][verdict] += n
    by_status = Counter(map(attrgetter("father.status"), verdicts))
    by_status.update(map(attrgetter("mother.status"), verdicts))
    changes = result.changes
    return {
        "format": FORMAT,
        "as_of": result.as_of.isoformat(),
        "run_at": result.run_at.isoformat(timespec="seconds"),
        "seconds": round(result.seconds, 3),
        "rules": {"file": result.rules.source, "sha256": result.rules.sha256},
        "roster": {
            "file": str(result.roster),
            "children": len(result.children),
            "rejects": len(result.rejects),
            "reused": result.reused,
        },
        "retain_ineligible": result.retain_ineligible,
        "minimisation": MINIMISATION[result.retain_ineligible],
        "nodes": [
            {**asdict(n), "cached": n.cached, "seconds": round(n.seconds, 3)} for n in result.nodes
        ],
        "uncovered_statuses": list(result.uncovered),
        "counts": {
            "classification": {c: by_class[c] for c in CLASSES},
            "region": {r: dict(by_region[r]) for r in sorted(by_region)},
            "status": dict(by_status.most_common()),
        },
        "changes": {
            "previous": dict(changes.previous) if changes.previous else None,
            "counts": {
                "new": len(changes.new),
                "ended": len(changes.ended),
                "changed": len(changes.changed),
                "ended_why": dict(changes.ended_why()),
            },
            "new": [_change(c) for c in changes.new],
            "ended": [_change(c) for c in changes.ended],
            "changed": [_change(c) for c in changes.changed],
        },
    }


class _Document:
    """A results document written as it goes: the run's metadata indented for reading, then one
    line per child, each encoded by the C encoder (a million children in seconds; indenting them
    all takes a minute)."""

    def __init__(self, path: Path, meta: Mapping[str, Any]):
        self._handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by __exit__)
        self._handle.write("{\n")
        for key, value in meta.items():
            # A history's list of a million identifiers goes on one line, by the C encoder.
            indent = None if key == NOT_ELIGIBLE_CHILDREN else 1
            text = json.dumps(value, ensure_ascii=False, indent=indent)
            self._handle.write(f" {json.dumps(key)}: {text},\n")
        self._handle.write(' "children": [')
        self._separator = "\n  "

    def add(self, row_json: str) -> None:
        self._handle.write(self._separator + row_json)
        self._separator = ",\n  "

    def __enter__(self) -> _Document:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._handle.write("\n ]\n}\n")
        finally:
            self._handle.close()


@dataclass(frozen=True)
class History:
    """What the history keeps of a run: the candidates' rows and only the identifiers of the
    not_eligible children, all that the next run's comparison needs (and no more than the
    minimised results.json shows)."""

    meta: dict[str, Any]  # results.json's, with the not_eligible children's identifiers
    rows: list[dict[str, Any]]  # the candidates'
    rows_json: list[str]  # the same, encoded once for both files

    def write(self, path: Path) -> None:
        with _Document(path, self.meta) as doc:
            for row_json in self.rows_json:
                doc.add(row_json)


def write_outputs(result: ScreeningResult) -> History:
    """Write the four output files in ``result.out_dir``, rows by rows in one pass (each
    ``public_row`` made once, encoded once for CSV and once for JSON); returns what the
    history keeps."""
    out = result.out_dir
    meta = document(result)
    rows, rows_json, others = [], [], []
    lines = _Lines()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with (
            open(out / RESULTS_CSV, "w", encoding="utf-8", newline="") as table,
            _Document(out / RESULTS_JSON, meta) as doc,
        ):
            csv.writer(table).writerow(RESULT_COLUMNS)
            for verdict in map(attrgetter("verdict"), result.children):
                if withheld(verdict, result.retain_ineligible):  # most children: no row made
                    as_csv, as_json = lines.withheld(verdict.child_id)
                    others.append(verdict.child_id)
                else:
                    row = public_row(verdict, result.retain_ineligible)
                    as_csv, as_json = lines.both(row)
                    if row["classification"] in CANDIDATES:
                        rows.append(row)
                        rows_json.append(as_json)
                    elif row["classification"] == NOT_ELIGIBLE:
                        others.append(row["child_id"])
                table.write(as_csv)
                doc.add(as_json)
        report = html_report({**meta, "children": rows})
        (out / REPORT_HTML).write_text(report, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write the results in {out}: {exc.strerror}") from exc
    write_rejects(out / REJECTS_CSV, result.rejects)
    return History({**meta, NOT_ELIGIBLE_CHILDREN: others}, rows, rows_json)


def roll_register(result: ScreeningResult, path: str | Path) -> int:
    """Write the roll (children found orphan or de facto unattended) as a department register in
    the canonical columns, status = the class and start = as_of, so that civil affairs can serve
    it as a dataset for education and medical insurance. Returns the number of rows."""
    roll = [c.verdict for c in result.children if c.verdict.classification in ELIGIBLE]
    start = result.as_of.isoformat()
    try:
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(REGISTER_COLUMNS)
            writer.writerows(
                (v.child_id, v.classification, start, "", "", "", f"CA-ROLL-{start}-{n:06d}")
                for n, v in enumerate(roll, 1)
            )
    except OSError as exc:
        raise InputError(f"cannot write the roll register {path}: {exc.strerror}") from exc
    return len(roll)


# ---- report.html ------------------------------------------------------------------------------

_COLOURS = {
    "orphan": "#b2182b",
    "de_facto_unattended": "#ef8a62",
    "needs_review": "#4393c3",
    "not_eligible": "#bababa",
}
_BAR = "#5e3c99"
_STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.n{text-align:right}
svg text{font:12px system-ui,sans-serif}svg text.t{font-weight:600}.warn{color:#b2182b}
.charts{display:flex;flex-wrap:wrap;gap:1.5em}"""


def _bars(
    title: str,
    rows: Sequence[tuple[str, Mapping[str, int]]],
    series: Sequence[str],
    *,
    legend: bool = False,
) -> str:
    """A horizontal bar chart as inline SVG, stacked by ``series`` (coloured by class)."""
    label_width, bar_width, row_height = 170, 360, 20
    top = 44 if legend else 26
    totals = [sum(values.get(name, 0) for name in series) for _, values in rows]
    biggest = max(totals, default=0) or 1
    height = top + row_height * max(len(rows), 1) + 6
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + bar_width + 50}" '
        f'height="{height}" role="img" aria-label="{escape(title)}">',
        f'<text class="t" x="0" y="14">{escape(title)}</text>',
    ]
    if legend:
        x = 0
        for name in series:
            parts.append(
                f'<rect x="{x}" y="22" width="10" height="10" fill="{_COLOURS.get(name, _BAR)}"/>'
                f'<text x="{x + 14}" y="31">{escape(name)}</text>'
            )
            x += 24 + 7 * len(name)
    for i, ((label, values), total) in enumerate(zip(rows, totals, strict=True)):
        y = top + i * row_height
        parts.append(
            f'<text x="{label_width - 6}" y="{y + 14}" text-anchor="end">{escape(label)}</text>'
        )
        x = float(label_width)
        for name in series:
            if count := values.get(name, 0):
                width = count / biggest * bar_width
                parts.append(
                    f'<rect x="{x:.1f}" y="{y + 3}" width="{width:.1f}" height="{row_height - 6}" '
                    f'fill="{_COLOURS.get(name, _BAR)}"><title>{escape(label)}, {escape(name)}: '
                    f"{count}</title></rect>"
                )
                x += width
        parts.append(f'<text x="{x + 4:.1f}" y="{y + 14}">{total}</text>')
    if not rows:
        parts.append(f'<text x="0" y="{top + 14}">none</text>')
    parts.append("</svg>")
    return "".join(parts)


def _cell(value: Any) -> str:
    if isinstance(value, int | float):
        return f'<td class="n">{value}</td>'
    return f"<td>{escape(str(value))}</td>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(map(_cell, row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _changes(changes: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        (c["child_id"], c["before"], c["after"], "; ".join(w["text"] for w in c["why"]))
        for c in changes
    ]
    return _table(("child", "before", "now", "why"), rows)


def html_report(doc: Mapping[str, Any]) -> str:
    """report.html: a self-contained page (inline CSS and SVG) drawn from the results.json
    document only."""
    counts, changes = doc["counts"], doc["changes"]
    candidates = [c for c in CLASSES if c in CANDIDATES]
    class_chart = _bars(
        "Children by class", [(c, {c: n}) for c, n in counts["classification"].items()], CLASSES
    )
    region_chart = _bars(
        "Candidates by region code",
        [(r, v) for r, v in counts["region"].items() if any(v.get(c) for c in candidates)],
        candidates,
        legend=True,
    )
    status_chart = _bars(
        "Parents of minors by the status that counts",
        [(s, {"parents": n}) for s, n in counts["status"].items() if s not in (NONE, NOT_ASKED)],
        ("parents",),
    )
    nodes = _table(
        ("node", "dataset", "statuses", "epoch", "table version", "asked", "evaluated",
         "from cache", "matched", "seconds"),
        [(n["node"], n["dataset"], ", ".join(n["statuses"]), n["epoch"], n["table_version"],
          n["queried"], n["evaluated"], n["cached"], n["matched"], round(n["seconds"], 2))
         for n in doc["nodes"]],
    )  # fmt: skip
    previous = changes["previous"]
    if previous:
        since = (
            f"<p>Compared with the run of {escape(previous['run_at'])} as of "
            f"{escape(previous['as_of'])} ({escape(previous['file'])}).</p>"
            f"<h3>New candidates ({len(changes['new'])})</h3>{_changes(changes['new'])}"
            f"<h3>Eligibility ended ({len(changes['ended'])})</h3>{_changes(changes['ended'])}"
            f"<h3>Changed ({len(changes['changed'])})</h3>{_changes(changes['changed'])}"
        )
    else:
        since = "<p>No earlier run in the history: nothing to compare with.</p>"
    candidates_rows = [r for r in doc["children"] if r["classification"] in CANDIDATES]
    listed = _table(
        ("child", "class", "father", "mother", "reasons", "evidence"),
        [(r["child_id"], r["classification"], r["father_status"], r["mother_status"],
          "; ".join(r["reasons"]), " ".join(r["evidence"]))
         for r in candidates_rows[:LISTED]],
    )  # fmt: skip
    if len(candidates_rows) > LISTED:
        listed += (
            f"<p>The first {LISTED:,} of {len(candidates_rows):,} candidates; all are in "
            f"{RESULTS_CSV}.</p>"
        )
    uncovered = doc["uncovered_statuses"]
    warning = (
        f'<p class="warn">No node serves {escape(", ".join(uncovered))}: '
        "those statuses cannot be found.</p>"
        if uncovered
        else ""
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Screening as of {escape(doc['as_of'])}</title><style>{_STYLE}</style></head>"
        f"<body><h1>Orphans and de facto unattended children: screening as of "
        f"{escape(doc['as_of'])}</h1>"
        f"<p>Run at {escape(doc['run_at'])} in {doc['seconds']} s; roster "
        f"{escape(doc['roster']['file'])}: {doc['roster']['children']} children, "
        f"{doc['roster']['rejects']} rejected cells (rejects.csv); rules "
        f"{escape(doc['rules']['file'])} (sha256 {escape(doc['rules']['sha256'][:12])}…).</p>"
        f"<p>Data minimisation: {escape(doc['minimisation'])}.</p>{warning}"
        f'<div class="charts">{class_chart}{status_chart}{region_chart}</div>'
        f"<h2>Changes since the last run</h2>{since}"
        f"<h2>Nodes asked</h2>{nodes}"
        f"<h2>Candidates</h2>{listed}</body></html>\n"
    )
