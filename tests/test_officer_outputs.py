"""The screening's outputs as an officer uses them, and the reviewer's audit page: names and
regions, sorting, evidence that ``psi disputes raise`` takes as it stands, Simplified Chinese,
GB18030 and .xlsx rosters, results.xlsx; both HTML reports opened in headless Chromium (fits
1280 px, charts whole, the candidates' filter works)."""

import csv
import gettext
import io
import json
import re
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from openpyxl import Workbook, load_workbook

from nodes.client.screening.report import RESULT_COLUMNS, ROW_ORDER
from nodes.demo.federation import LocalFederation
from nodes.demo.synth import generate_city, write_city
from nodes.shared.i18n import LOCALE_DIR

AS_OF = "2026-11-30"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def psi(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    city = generate_city(children=300, as_of=date.fromisoformat(AS_OF), seed=21)
    return city, write_city(city, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def federation(city, tmp_path_factory):
    _, paths = city
    registers = {d: paths[d] for d in ("prison", "police")}
    with LocalFederation(tmp_path_factory.mktemp("fed"), registers) as fed:
        fed.setup()
        fed.build()
        fed.start()
        yield fed


def screen(fed, roster, out, *extra):
    return psi(
        "screen", "--federation", fed.federation_file, "--roster", roster, "--as-of", AS_OF,
        "--out", out, *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def english(city, federation, tmp_path_factory):
    _, paths = city
    out = tmp_path_factory.mktemp("runs") / "en"
    run = screen(federation, paths["roster"], out, "--lang", "en", "--xlsx")
    assert run.returncode == 0, run.stderr
    return out


def read(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_results_name_each_child_sorted_by_class_then_region(city, english):
    c, _ = city
    rows = read(english / "results.csv")
    assert tuple(rows[0]) == RESULT_COLUMNS
    roster = {r.child_id: r for r in c.roster}
    for row in rows:
        assert row["child_name"] == roster[row["child_id"]].child_name
        assert row["region_code"] == roster[row["child_id"]].region_code
    keys = [(ROW_ORDER.index(r["classification"]), r["region_code"]) for r in rows]
    assert keys == sorted(keys) and keys[0][0] < keys[-1][0]
    report = (english / "report.html").read_text(encoding="utf-8")
    first = next(r for r in rows if r["evidence"])
    assert first["child_name"] in report
    assert re.search(r"Region \w+: <span class=\"count\">\d+</span>", report)
    assert "rules the packaged rules.toml" in report  # not an installed path
    document = json.loads((english / "results.json").read_text(encoding="utf-8"))
    assert all(0 < n["seconds"] <= document["seconds"] for n in document["nodes"])  # wall times


def test_the_evidence_value_raises_a_dispute_as_it_stands(federation, english):
    evidence = next(r["evidence"] for r in read(english / "results.csv") if r["evidence"])
    first = evidence.split()[0]
    raised = psi(
        "disputes", "raise", "--federation", federation.federation_file, "--handle", first,
        "--reason", "the parent was released in May", "--evidence", "case file 2026-117",
    )  # fmt: skip
    assert raised.returncode == 0, raised.stderr
    listed = psi("disputes", "list", "--federation", federation.federation_file, "--json")
    assert listed.returncode == 0, listed.stderr
    disputes = json.loads(listed.stdout)
    node = first.split("/", 1)[0]
    assert any(d["node"] == node and first.endswith(d["handle"]) for d in disputes)
    shown = psi("catalog", "show", "--federation", federation.federation_file, "--node", node,
                "--json")  # fmt: skip
    assert json.loads(shown.stdout)["node_id"] == node


def test_results_xlsx_holds_the_csv_cell_for_cell(english):
    book = load_workbook(english / "results.xlsx", read_only=True)
    cells = [[c or "" for c in row] for row in book.worksheets[0].iter_rows(values_only=True)]
    with open(english / "results.csv", encoding="utf-8", newline="") as handle:
        assert cells == list(csv.reader(handle))


def test_chinese_outputs_use_the_policy_terms(city, federation, tmp_path):
    _, paths = city
    run = screen(federation, paths["roster"], tmp_path / "zh", "--lang", "zh")
    assert run.returncode == 0, run.stderr
    assert "截至 2026-11-30 的筛查" in run.stdout and "事实无人抚养儿童" in run.stdout
    rows = read(tmp_path / "zh" / "results.csv")
    assert tuple(rows[0])[:4] == ("儿童身份证号", "儿童姓名", "区划代码", "认定类别")
    assert {r["认定类别"] for r in rows} <= {"孤儿", "事实无人抚养儿童", "需人工复核", "不符合条件"}
    assert any(r["父亲情况"] == "服刑在押" or r["母亲情况"] == "服刑在押" for r in rows)
    report = (tmp_path / "zh" / "report.html").read_text(encoding="utf-8")
    assert '<html lang="zh-Hans">' in report and "按区划列出的候选儿童" in report
    document = json.loads((tmp_path / "zh" / "results.json").read_text(encoding="utf-8"))
    assert {c["classification"] for c in document["children"]} <= set(ROW_ORDER)  # codes


def test_the_compiled_catalogue_matches_its_source():
    """Every translation of the .po is in the .mo the program reads, and no other."""
    from babel.messages.pofile import read_po

    for po in LOCALE_DIR.glob("*/LC_MESSAGES/*.po"):
        with open(po, "rb") as source:
            wanted = {
                (f"{m.context}\x04{m.id}" if m.context else m.id): m.string
                for m in read_po(source)
                if m.id
            }
        with open(po.with_suffix(".mo"), "rb") as compiled:
            held = gettext.GNUTranslations(compiled)._catalog  # the parsed .mo, as gettext holds it
        assert {k: v for k, v in held.items() if k} == wanted, (
            f"{po} changed: run python -m nodes.shared.i18n"
        )


def test_gb18030_and_xlsx_rosters(city, federation, english, tmp_path):
    _, paths = city
    text = paths["roster"].read_text(encoding="utf-8")
    gb = tmp_path / "roster-gb.csv"
    gb.write_bytes(text.encode("gb18030"))
    refused = screen(federation, gb, tmp_path / "x")
    assert refused.returncode == 2
    assert "give --encoding gb18030" in refused.stderr and "Traceback" not in refused.stderr
    read_gb = screen(federation, gb, tmp_path / "gb", "--encoding", "gb18030")
    assert read_gb.returncode == 0, read_gb.stderr
    book = Workbook()
    sheet = book.active
    for row in csv.reader(io.StringIO(text)):
        sheet.append(row)
    book.save(tmp_path / "roster.xlsx")
    read_xlsx = screen(federation, tmp_path / "roster.xlsx", tmp_path / "xlsx")
    assert read_xlsx.returncode == 0, read_xlsx.stderr
    expected = [
        (r["child_id"], r["child_name"], r["classification"]) for r in read(english / "results.csv")
    ]
    for out in ("gb", "xlsx"):
        got = [(r["child_id"], r["child_name"], r["classification"])
               for r in read(tmp_path / out / "results.csv")]  # fmt: skip
        assert got == expected, out


def test_an_identifier_stored_as_a_number_in_a_workbook_is_rejected(tmp_path):
    """Excel keeps 15 significant digits: an 18-digit number cell has lost its last digits and
    must never be read as some other person's identifier."""
    from psi.ids import read_ids

    book = Workbook()
    book.active.append(["id_number"])
    book.active.append([150102198008254548])  # stored by Excel as a double
    book.active.append(["150102198008254548"])
    book.save(tmp_path / "ids.xlsx")
    column = read_ids(tmp_path / "ids.xlsx", "id_number")
    assert column.valid.tolist() == [False, True]


def test_stats_values_too_large_and_too_many_groups_say_what_to_do(federation, city, tmp_path):
    c, _ = city
    parents = sorted(c.parents_as_written().values())[:20]
    path = tmp_path / "values.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id_number", "days", "county"])
        for i, x in enumerate(parents):
            writer.writerow([x, 10**40 if i == 2 else i, f"county-{i}"])
    common = ("stats", "--federation", federation.federation_file, "--node", "prison",
              "--dataset", "prison", "--ids", path, "--purpose", "statistics")  # fmt: skip
    large = psi(*common, "--values", "days")
    assert large.returncode == 2 and "Traceback" not in large.stderr
    assert "values.csv:4 (column days): over the largest value a sum takes" in large.stderr
    groups = psi(*common, "--group-by", "county")
    assert groups.returncode == 2, groups.stderr
    assert "20 groups; prison/prison sums at most 16 per run: group by a coarser" in groups.stderr


# ---- in a real browser ------------------------------------------------------------------------

# Appended to a copy of a report: what the page measures once laid out at 1280 px, in the DOM
# that ``chromium --dump-dom`` prints.
MEASURE = """<script>
addEventListener('load',()=>{const root=document.documentElement,out={
scroll:root.scrollWidth,client:root.clientWidth,
svgs:[...document.querySelectorAll('svg')].map(s=>{const w=s.getBoundingClientRect();
return{width:w.width,rects:s.querySelectorAll('rect').length,cut:[...s.querySelectorAll('text')]
.filter(t=>{const b=t.getBoundingClientRect();return b.right>w.right+1||b.left<w.left-1})
.map(t=>t.textContent)}}),
wide:[...document.querySelectorAll('table')].filter(t=>t.getBoundingClientRect().right>root.clientWidth)
.length};const q=document.getElementById('q');if(q){const shown=document.getElementById('shown');
out.before=+shown.textContent;q.value=%s;q.dispatchEvent(new Event('input'));
out.after=+shown.textContent}const p=document.createElement('pre');p.id='measure';
p.textContent=JSON.stringify(out);document.body.appendChild(p)})</script>"""


def in_chromium(page: Path, tmp_path: Path, find: str = "") -> dict:
    probe = tmp_path / f"measured-{page.name}"
    probe.write_text(page.read_text(encoding="utf-8") + MEASURE % json.dumps(find), "utf-8")
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
         "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    found = re.search(r'<pre id="measure">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium (.ci/run installs Debian's package)"
)


@needs_chromium
def test_the_screening_report_fits_1280_px_and_filters_in_a_browser(english, tmp_path):
    rows = read(english / "results.csv")
    name = next(r["child_name"] for r in rows if r["evidence"])
    measured = in_chromium(english / "report.html", tmp_path, find=name)
    assert measured["scroll"] <= measured["client"] >= 1250, measured  # a scrollbar
    assert measured["wide"] == 0
    assert len(measured["svgs"]) == 3 and all(s["rects"] for s in measured["svgs"])
    assert all(not s["cut"] for s in measured["svgs"]), measured["svgs"]
    assert measured["before"] > measured["after"] >= 1  # the filter box works, offline


@needs_chromium
def test_the_audit_report_fits_1280_px_with_whole_charts_in_a_browser(
    federation, english, tmp_path
):
    log = next(federation.root.glob("prison/**/audit.sqlite"))
    key = log.with_name("audit-key.pub.pem")
    page = tmp_path / "audit.html"
    run = psi("audit", "report", log, "--key", key, "--html", page)
    assert run.returncode == 0, run.stderr
    assert "verified: no tampering found" in page.read_text(encoding="utf-8")
    measured = in_chromium(page, tmp_path)
    assert measured["scroll"] <= measured["client"] >= 1250, measured  # a scrollbar
    assert measured["wide"] == 0
    assert len(measured["svgs"]) == 2 and all(s["rects"] for s in measured["svgs"])
    assert all(not s["cut"] for s in measured["svgs"]), measured["svgs"]
