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
from json.encoder import encode_basestring as _encode_string
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from nodes.client.screening.classify import (
    CANDIDATES,
    CLASSES,
    DE_FACTO,
    ELIGIBLE,
    NEEDS_REVIEW,
    NONE,
    NOT_ASKED,
    NOT_ELIGIBLE,
    ORPHAN,
    Classification,
)
from nodes.client.screening.result import Change, Screened, ScreeningResult
from nodes.shared.i18n import from_environment, translations
from nodes.shared.page import PAGE_STYLE, text_width
from psi.errors import InputError
from psi.ids import write_rejects
from psi.labels import REGISTER_COLUMNS

FORMAT = 1
RESULTS_CSV, RESULTS_JSON, REPORT_HTML, REJECTS_CSV, RESULTS_XLSX = (
    "results.csv",
    "results.json",
    "report.html",
    "rejects.csv",
    "results.xlsx",
)
RESULT_COLUMNS = (
    "child_id",
    "child_name",
    "region_code",
    "classification",
    "father_status",
    "mother_status",
    "reasons",
    "evidence",
)
_HEAD = RESULT_COLUMNS[:3]  # the child's own cells, from the roster
# Rows are written candidates first, by class, then by region (the roster's order within).
ROW_ORDER = (ORPHAN, DE_FACTO, NEEDS_REVIEW, NOT_ELIGIBLE)
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


def public_row(child: Screened, retain_ineligible: bool) -> dict[str, Any]:
    """A child's result as written (``withheld`` applied)."""
    verdict = child.verdict
    head = {
        "child_id": verdict.child_id,
        "child_name": child.name,
        "region_code": child.region_code,
    }
    if withheld(verdict, retain_ineligible):
        return {**head, **_WITHHELD_ROW}
    return {
        **head,
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


def row_order(children: Sequence[Screened]) -> np.ndarray:
    """The children's indices in ``ROW_ORDER`` of class, then region code, then roster order
    (one stable sort of two integer keys: a million rows in a fraction of a second)."""
    rank = {name: i for i, name in enumerate(ROW_ORDER)}
    classes = np.fromiter(
        (rank[c.verdict.classification] for c in children), np.int8, len(children)
    )
    regions = np.asarray([c.region_code for c in children], dtype=str)
    _, region_rank = np.unique(regions, return_inverse=True) if len(regions) else (None, regions)
    return np.lexsort((region_rank, classes))


_JSON = json.JSONEncoder(ensure_ascii=False)  # one encoder: json.dumps makes one a call


class _Lines:
    """Result rows (``public_row``'s) as CSV and JSON lines, in the language of the CSV
    (``labels``: the results' words for people; JSON keeps the codes). A row without evidence
    (a withheld row, an adult's) shares everything after the child's own cells with every row
    of the same cells, so most of a million rows are written by concatenation: a canonical
    identifier is 18 characters of [0-9X], needing no quoting in CSV or escaping in JSON."""

    def __init__(self, labels: Labels) -> None:
        self._labels = labels
        self._csv: dict[tuple[str, ...], str] = {}  # the text after the child's cells
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

    def _csv_line(self, cells: Sequence[str]) -> str:
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerow(cells)
        return self._buffer.getvalue()

    def _cells(self, row: Mapping[str, Any]) -> list[str]:
        word = self._labels.word
        return [
            word(row["classification"]),
            word(row["father_status"]),
            word(row["mother_status"]),
            "; ".join(map(word, row["reasons"])),
            " ".join(row["evidence"]),
        ]

    def both(self, row: Mapping[str, Any]) -> tuple[str, str]:
        """The row's CSV line and JSON text."""
        key = self._shared(row)
        if key is None:
            head = [row[c] for c in _HEAD]
            return self._csv_line(head + self._cells(row)), _JSON.encode(row)
        if key not in self._csv:
            self._csv[key] = self._csv_line(self._cells(row))
            rest = {k: v for k, v in row.items() if k not in _HEAD}
            self._json[key] = ", " + _JSON.encode(rest)[1:]
        return self._joined(key, row["child_id"], row["child_name"], row["region_code"])

    def withheld(self, child: Screened) -> tuple[str, str]:
        """``both`` of a withheld row, without making it."""
        if () not in self._csv:
            return self.both(public_row(child, False))
        return self._joined((), child.verdict.child_id, child.name, child.region_code)

    def _joined(
        self, key: tuple[str, ...], child_id: str, name: str, region: str
    ) -> tuple[str, str]:
        head = f"{child_id},{_csv_field(name)},{_csv_field(region)},"
        return head + self._csv[key], (
            f'{{"child_id": "{child_id}", "child_name": {_encode_string(name)}, '
            f'"region_code": {_encode_string(region)}' + self._json[key]
        )


def _csv_field(text: str) -> str:
    """A CSV cell as ``csv.writer`` writes it (quoted only when it must be)."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


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
        "rules": {"file": result.rules.shown, "sha256": result.rules.sha256},
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


class Labels:
    """The words of an officer's outputs in one language (``nodes.shared.i18n``): class and
    status codes, column names and the report's sentences. English is the codes themselves;
    results.json and the history keep the codes whatever the language."""

    def __init__(self, lang: str | None = None):
        self.lang = lang or from_environment()
        self._catalogue = translations(self.lang)
        self._words: dict[str, str] = {}

    def word(self, code: str) -> str:
        """A class or status code (or a reason) as the officer reads it."""
        if (found := self._words.get(code)) is None:
            found = self._words[code] = self._catalogue.pgettext("status", code)
        return found

    def column(self, name: str) -> str:
        return self._catalogue.pgettext("column", name)

    def __call__(self, message: str) -> str:
        return self._catalogue.gettext(message)


def write_outputs(
    result: ScreeningResult, *, lang: str | None = None, xlsx: bool = False
) -> History:
    """Write the four output files in ``result.out_dir`` (and results.xlsx if asked), rows in
    ``row_order`` in one pass (each ``public_row`` made once, encoded once for CSV and once for
    JSON); returns what the history keeps. ``lang`` is the language of results.csv, the
    spreadsheet and the report."""
    out = result.out_dir
    meta = document(result)
    labels = Labels(lang)
    rows, rows_json, others = [], [], []
    lines = _Lines(labels)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with (
            open(out / RESULTS_CSV, "w", encoding="utf-8", newline="") as table,
            _Document(out / RESULTS_JSON, meta) as doc,
        ):
            csv.writer(table).writerow(map(labels.column, RESULT_COLUMNS))
            children = result.children
            for i in row_order(children).tolist():
                child = children[i]
                verdict = child.verdict
                if withheld(verdict, result.retain_ineligible):  # most children: no row made
                    as_csv, as_json = lines.withheld(child)
                    others.append(verdict.child_id)
                else:
                    row = public_row(child, result.retain_ineligible)
                    as_csv, as_json = lines.both(row)
                    if row["classification"] in CANDIDATES:
                        rows.append(row)
                        rows_json.append(as_json)
                    elif row["classification"] == NOT_ELIGIBLE:
                        others.append(row["child_id"])
                table.write(as_csv)
                doc.add(as_json)
        report = html_report({**meta, "children": rows}, labels)
        (out / REPORT_HTML).write_text(report, encoding="utf-8")
        if xlsx:
            write_xlsx(out / RESULTS_CSV, out / RESULTS_XLSX)
    except OSError as exc:
        raise InputError(f"cannot write the results in {out}: {exc.strerror}") from exc
    write_rejects(out / REJECTS_CSV, result.rejects)
    return History({**meta, NOT_ELIGIBLE_CHILDREN: others}, rows, rows_json)


def write_xlsx(source: Path, path: Path) -> None:
    """results.csv as a workbook, cell for cell (so in its language), every cell text: Excel
    would otherwise show an 18-digit identifier as a rounded number. Written in openpyxl's
    streaming mode, row by row."""
    from openpyxl import Workbook  # only runs that ask for a workbook pay for loading it
    from openpyxl.styles import Font

    book = Workbook(write_only=True)
    sheet = book.create_sheet("results")
    sheet.freeze_panes = "A2"
    widths = (21, 10, 12, 16, 14, 14, 60, 40)
    for i, width in enumerate(widths):
        sheet.column_dimensions[chr(ord("A") + i)].width = width
    with open(source, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows)
        bold = Font(bold=True)
        sheet.append([_bold(sheet, name, bold) for name in header])
        for row in rows:
            sheet.append(row)
    book.save(path)


def _bold(sheet: Any, text: str, font: Any) -> Any:
    from openpyxl.cell import WriteOnlyCell

    cell = WriteOnlyCell(sheet, value=text)
    cell.font = font
    return cell


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
_STYLE = (
    PAGE_STYLE
    + """
.controls{display:flex;flex-wrap:wrap;gap:.8em;align-items:center;margin:.6em 0}
.controls input{width:22em}table.c{table-layout:fixed}table.c th{cursor:pointer;user-select:none}
table.c th[aria-sort=ascending]::after{content:" ▲"}
table.c th[aria-sort=descending]::after{content:" ▼"}
table.c td.e{font:11px/1.3 ui-monospace,monospace;color:#555}
table.c col.id{width:13em}table.c col.nm{width:6.5em}table.c col.k{width:9em}
table.c col.s{width:7.5em}table.c col.e{width:19em}"""
)
# Sorting and filtering the candidates in the browser; inline, so the page needs no network.
_SCRIPT = """(()=>{const q=document.getElementById('q'),k=document.getElementById('k');
const shown=document.getElementById('shown');
function filter(){const t=q.value.trim().toLowerCase(),c=k.value;let n=0;
document.querySelectorAll('section.region').forEach(s=>{let m=0;
s.querySelectorAll('tbody tr').forEach(r=>{const ok=(!c||r.dataset.k===c)&&
(!t||r.textContent.toLowerCase().includes(t));r.hidden=!ok;if(ok)m++});
s.hidden=!m;s.querySelector('.count').textContent=m;n+=m});shown.textContent=n}
q.addEventListener('input',filter);k.addEventListener('change',filter);
document.querySelectorAll('table.c th').forEach((th,i)=>th.addEventListener('click',()=>{
const up=th.getAttribute('aria-sort')!=='ascending';
document.querySelectorAll('table.c').forEach(t=>{const col=[...th.parentNode.children].indexOf(th);
t.querySelectorAll('th').forEach(h=>h.removeAttribute('aria-sort'));
t.querySelectorAll('th')[col].setAttribute('aria-sort',up?'ascending':'descending');
const b=t.tBodies[0];[...b.rows].sort((x,y)=>{const a=x.cells[col].textContent,
z=y.cells[col].textContent;return(up?1:-1)*a.localeCompare(z,undefined,{numeric:true})})
.forEach(r=>b.appendChild(r))})}))})();"""


def _bars(
    title: str,
    rows: Sequence[tuple[str, Mapping[str, int]]],
    series: Sequence[str],
    labels: Labels,
    *,
    legend: bool = False,
) -> str:
    """A horizontal bar chart as inline SVG, stacked by ``series`` (coloured by class), sized
    to its labels, title and legend so that none is cut."""
    names = [labels.word(name) for name in series]
    label_width = 12 + max([text_width(labels.word(label)) for label, _ in rows] or [40])
    bar_width, row_height = 300, 20
    legend_widths = [24 + text_width(name) for name in names] if legend else []
    width = max(label_width + bar_width + 60, text_width(title, 13) + 8, sum(legend_widths))
    top = 44 if legend else 26
    totals = [sum(values.get(name, 0) for name in series) for _, values in rows]
    biggest = max(totals, default=0) or 1
    height = top + row_height * max(len(rows), 1) + 6
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
        f'viewBox="0 0 {width:.0f} {height}" role="img" aria-label="{escape(title)}">',
        f'<text class="t" x="0" y="14">{escape(title)}</text>',
    ]
    x = 0.0
    for name, shown, step in zip(series, names, legend_widths, strict=False):
        parts.append(
            f'<rect x="{x:.0f}" y="22" width="10" height="10" fill="{_COLOURS.get(name, _BAR)}"/>'
            f'<text x="{x + 14:.0f}" y="31">{escape(shown)}</text>'
        )
        x += step
    for i, ((label, values), total) in enumerate(zip(rows, totals, strict=True)):
        y = top + i * row_height
        shown_label = labels.word(label)
        parts.append(
            f'<text x="{label_width - 6:.0f}" y="{y + 14}" text-anchor="end">'
            f"{escape(shown_label)}</text>"
        )
        x = float(label_width)
        for name, shown in zip(series, names, strict=True):
            if count := values.get(name, 0):
                bar = count / biggest * bar_width
                parts.append(
                    f'<rect x="{x:.1f}" y="{y + 3}" width="{bar:.1f}" height="{row_height - 6}" '
                    f'fill="{_COLOURS.get(name, _BAR)}"><title>{escape(shown_label)}, '
                    f"{escape(shown)}: {count}</title></rect>"
                )
                x += bar
        parts.append(f'<text x="{x + 4:.1f}" y="{y + 14}">{total}</text>')
    if not rows:
        parts.append(f'<text x="0" y="{top + 14}">{escape(labels("none"))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _cell(value: Any) -> str:
    if isinstance(value, int | float):
        return f'<td class="n">{value}</td>'
    return f"<td>{escape(str(value))}</td>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], labels: Labels) -> str:
    if not rows:
        return f"<p>{escape(labels('none'))}</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(map(_cell, row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _changes(changes: Sequence[Mapping[str, Any]], labels: Labels) -> str:
    rows = [
        (c["child_id"], labels.word(c["before"]), labels.word(c["after"]),
         "; ".join(w["text"] for w in c["why"]))
        for c in changes
    ]  # fmt: skip
    columns = (labels("child"), labels("before"), labels("now"), labels("why"))
    return _table(columns, rows, labels)


def _candidates(rows: Sequence[Mapping[str, Any]], labels: Labels) -> str:
    """The candidates grouped by region (rows arrive sorted by class, then region), each group
    with its count by class, under a filter box, a class choice and sortable columns."""
    by_region: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        by_region[row["region_code"] or labels("(blank)")].append(row)
    header = "".join(
        f"<th>{escape(labels.column(c))}</th>"
        for c in ("child_id", "child_name", "classification", "father_status",
                  "mother_status", "reasons", "evidence")
    )  # fmt: skip
    columns = (
        '<colgroup><col class="id"><col class="nm"><col class="k"><col class="s"><col class="s">'
        '<col><col class="e"></colgroup>'
    )
    sections = []
    for region in sorted(by_region):
        members = by_region[region]
        counts = Counter(r["classification"] for r in members)
        split = ", ".join(f"{labels.word(c)} {counts[c]}" for c in ROW_ORDER if counts[c])
        body = "".join(
            f'<tr data-k="{escape(r["classification"])}"><td>{escape(r["child_id"])}</td>'
            f"<td>{escape(r['child_name'])}</td><td>{escape(labels.word(r['classification']))}"
            f"</td><td>{escape(labels.word(r['father_status']))}</td>"
            f"<td>{escape(labels.word(r['mother_status']))}</td>"
            f"<td>{escape('; '.join(r['reasons']))}</td>"
            f'<td class="e">{"<br>".join(map(escape, r["evidence"]))}</td></tr>'
            for r in members
        )
        sections.append(
            f'<section class="region"><h3>{escape(labels("Region"))} {escape(region)}: '
            f'<span class="count">{len(members)}</span> ({escape(split)})</h3>'
            f'<table class="c">{columns}<thead><tr>{header}</tr></thead>'
            f"<tbody>{body}</tbody></table></section>"
        )
    options = "".join(
        f'<option value="{c}">{escape(labels.word(c))}</option>' for c in ROW_ORDER[:3]
    )
    controls = (
        f'<div class="controls"><label>{escape(labels("Find"))} <input id="q" type="search" '
        f'placeholder="{escape(labels("identifier, name, status, reason"))}"></label>'
        f'<label>{escape(labels("Class"))} <select id="k"><option value="">'
        f"{escape(labels('all'))}</option>{options}</select></label>"
        f'<span>{escape(labels("shown"))}: <b id="shown">{len(rows)}</b></span></div>'
    )
    return controls + "".join(sections) if rows else f"<p>{escape(labels('none'))}</p>"


def html_report(doc: Mapping[str, Any], labels: Labels | None = None) -> str:
    """report.html: a self-contained page (inline CSS, SVG and script) drawn from the
    results.json document only, in ``labels``' language; it fits a 1280-pixel window."""
    labels = labels or Labels("en")
    t = labels
    counts, changes = doc["counts"], doc["changes"]
    candidates = [c for c in CLASSES if c in CANDIDATES]
    class_chart = _bars(
        t("Children by class"),
        [(c, {c: n}) for c, n in counts["classification"].items()],
        CLASSES,
        labels,
    )
    region_chart = _bars(
        t("Candidates by region code"),
        [(r, v) for r, v in counts["region"].items() if any(v.get(c) for c in candidates)],
        candidates,
        labels,
        legend=True,
    )
    status_chart = _bars(
        t("Parents of minors by the status that counts"),
        [(s, {"parents": n}) for s, n in counts["status"].items() if s not in (NONE, NOT_ASKED)],
        ("parents",),
        labels,
    )
    nodes = _table(
        [t(h) for h in ("node", "dataset", "statuses", "epoch", "table version", "asked",
                        "evaluated", "from cache", "matched", "seconds")],
        [(n["node"], n["dataset"], ", ".join(map(labels.word, n["statuses"])), n["epoch"],
          n["table_version"], n["queried"], n["evaluated"], n["cached"], n["matched"],
          round(n["seconds"], 2))
         for n in doc["nodes"]],
        labels,
    )  # fmt: skip
    previous = changes["previous"]
    if previous:
        since = (
            "<p>"
            + escape(
                t("Compared with the run of {run_at} as of {as_of} ({file}).").format_map(previous)
            )
            + "</p>"
            f"<h3>{escape(t('New candidates'))} ({len(changes['new'])})</h3>"
            f"{_changes(changes['new'], labels)}"
            f"<h3>{escape(t('Eligibility ended'))} ({len(changes['ended'])})</h3>"
            f"{_changes(changes['ended'], labels)}"
            f"<h3>{escape(t('Changed'))} ({len(changes['changed'])})</h3>"
            f"{_changes(changes['changed'], labels)}"
        )
    else:
        since = f"<p>{escape(t('No earlier run in the history: nothing to compare with.'))}</p>"
    candidates_rows = [r for r in doc["children"] if r["classification"] in CANDIDATES]
    listed = _candidates(candidates_rows[:LISTED], labels)
    if len(candidates_rows) > LISTED:
        listed += (
            "<p>"
            + escape(
                t("The first {listed} of {total} candidates; all are in {file}.").format(
                    listed=f"{LISTED:,}", total=f"{len(candidates_rows):,}", file=RESULTS_CSV
                )
            )
            + "</p>"
        )
    uncovered = doc["uncovered_statuses"]
    warning = (
        '<p class="warn">'
        + escape(
            t("No node serves {statuses}: those statuses cannot be found.").format(
                statuses=", ".join(map(labels.word, uncovered))
            )
        )
        + "</p>"
        if uncovered
        else ""
    )
    title = t("Orphans and de facto unattended children: screening as of {as_of}").format(
        as_of=doc["as_of"]
    )
    roster, rules = doc["roster"], doc["rules"]
    run = t(
        "Run at {run_at} in {seconds} s; roster {roster}: {children} children, {rejects} "
        "rejected cells (rejects.csv); rules {rules} (sha256 {sha}…)."
    ).format(
        run_at=doc["run_at"], seconds=doc["seconds"], roster=roster["file"],
        children=roster["children"], rejects=roster["rejects"], rules=rules["file"],
        sha=rules["sha256"][:12],
    )  # fmt: skip
    minimisation = t("Data minimisation: {what}.").format(what=t(doc["minimisation"]))
    lang = "zh-Hans" if labels.lang == "zh" else "en"
    return (
        f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1><p>{escape(run)}</p><p>{escape(minimisation)}</p>"
        f'{warning}<div class="charts">{class_chart}{status_chart}{region_chart}</div>'
        f"<h2>{escape(t('Changes since the last run'))}</h2>{since}"
        f"<h2>{escape(t('Nodes asked'))}</h2>{nodes}"
        f"<h2>{escape(t('Candidates by region'))}</h2>{listed}"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )
