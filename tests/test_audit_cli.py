"""Reports on an audit log, the receipt cross-check, and ``psi audit`` with its exit codes."""

import csv
import io
import json
import re
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree

import pytest

from nodes import cli
from nodes.shared.audit.crosscheck import cross_check
from nodes.shared.audit.log import AuditLog, generate_key
from nodes.shared.audit.report import (
    CSV_COLUMNS,
    build_report,
    parse_utc_offset,
    to_csv,
    to_html,
    to_json,
    to_text,
)
from psi.errors import InputError

CA = {"cn": "civil-affairs", "fingerprint": "ab" * 32}
POLICE = {"cn": "police-liaison", "fingerprint": "cd" * 32}
PRISON = {"cn": "prison", "fingerprint": "ef" * 32}
SCRIPT = "<script>alert(1)</script>"
SVG = "{http://www.w3.org/2000/svg}"

# (UTC time, session id, client, purpose, legal basis, declared); local time is UTC+08:00.
SESSIONS = [
    ("2025-03-03T02:00:00", "s-a", CA, "screening", "case 17", 950),  # 10:00 local
    ("2025-03-03T03:00:00", "s-b", CA, "screening", "case 17", 960),
    ("2025-03-04T04:00:00", "s-d", POLICE, "verification", SCRIPT, 10),
    ("2025-03-04T15:30:00", "s-c", CA, "screening", "case 18", 990),  # 23:30 local
]
REFUSAL = ("2025-03-04T05:00:00", CA, "daily budget for 'prison' exhausted")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def at(self, text: str) -> None:
        self.now = datetime.fromisoformat(text).replace(tzinfo=UTC)


def _receipt(sid: str, purpose: str, basis: str, declared: int) -> dict:
    return {
        "session_id": sid,
        "dataset": "prison",
        "purpose": purpose,
        "legal_basis_ref": basis,
        "key_epoch": 1,
        "table_version": 2,
        "declared": declared,
        "evaluated": declared,
        "chunks": 1,
    }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A prison node's log and civil affairs' log of the same sessions, with their keys."""
    tmp_path = tmp_path_factory.mktemp("logs")
    clock = Clock()
    node_key, client_key = (generate_key(tmp_path / f"{n}-key.pem") for n in ("prison", "ca"))
    node = AuditLog(tmp_path / "prison.sqlite", node_key, "prison", clock=clock)
    client = AuditLog(tmp_path / "ca.sqlite", client_key, "civil-affairs", clock=clock)
    events = [(t, "session", s) for t, *s in SESSIONS] + [(REFUSAL[0], "refusal", REFUSAL[1:])]
    for when, kind, details in sorted(events, key=lambda e: e[0]):
        clock.at(when)
        if kind == "refusal":
            peer, reason = details
            node.append(
                {
                    "event": "session_refused",
                    "peer": peer,
                    "dataset": "prison",
                    "purpose": "screening",
                    "declared": 500,
                    "outcome": "refused",
                    "reason": reason,
                }
            )
            continue
        sid, peer, purpose, basis, declared = details
        receipt = _receipt(sid, purpose, basis, declared)
        node.append(
            {
                "event": "session_opened",
                "peer": peer,
                "limit": 1000,
                **{k: receipt[k] for k in ("session_id", "dataset", "purpose", "declared")},
            }
        )
        node.append({"event": "elements_evaluated", "session_id": sid, "evaluated": declared})
        node.append({"event": "receipt_issued", "peer": peer, "outcome": "ok", **receipt})
        node.sign_tree_head()
        if peer is CA:
            client.append({"event": "receipt_received", "peer": PRISON, **receipt})
            client.sign_tree_head()
    node.append({"event": "table_fetched", "peer": CA, "dataset": "prison", "bytes": 4096})
    node.close()
    client.close()
    return tmp_path


@pytest.fixture
def logs(pristine, tmp_path) -> dict[str, Path]:
    """A fresh copy of the logs for each test, which may tamper with them."""
    for path in pristine.iterdir():
        shutil.copy(path, tmp_path)
    return {
        "node": tmp_path / "prison.sqlite",
        "client": tmp_path / "ca.sqlite",
        "node_key": tmp_path / "prison-key.pub.pem",
        "client_key": tmp_path / "ca-key.pub.pem",
    }


def test_report_who_asked_what_budgets_and_anomalies(logs):
    report = build_report(logs["node"])
    assert report.owner == "prison" and report.entries == 14
    assert report.totals() == [
        ("civil-affairs", "prison", "screening", 3, 2900),
        ("police-liaison", "prison", "verification", 1, 10),
    ]
    assert [(r.peer, r.reason) for r in report.refusals] == [("civil-affairs", REFUSAL[2])]
    assert [(b.peer, str(b.day), b.sessions, b.elements) for b in report.budget] == [
        ("civil-affairs", "2025-03-03", 2, 1910),
        ("civil-affairs", "2025-03-04", 1, 990),
        ("police-liaison", "2025-03-04", 1, 10),
    ]
    assert [(a.kind, a.peer, a.sessions) for a in report.anomalies] == [
        ("near-limit", "civil-affairs", ("s-a", "s-b", "s-c")),
        ("off-hours", "civil-affairs", ("s-c",)),
    ]
    assert "2025-03-04 23:30 local time" in report.anomalies[1].message
    session = next(s for s in report.sessions if s.session_id == "s-c")
    assert (session.declared, session.evaluated, session.limit, session.receipt) == (
        990,
        990,
        1000,
        True,
    )
    # In UTC the late session is at 15:30 and the morning ones at 02:00 and 03:00.
    night = [a.sessions for a in build_report(logs["node"], parse_utc_offset("+00:00")).anomalies]
    assert night == [("s-a", "s-b", "s-c"), ("s-a",), ("s-b",), ("s-d",)]


def test_report_formats(logs):
    report = build_report(logs["node"])
    text = to_text(report)
    assert "civil-affairs        prison           screening                   3       2900" in text
    assert "near-limit: civil-affairs / prison" in text and REFUSAL[2] in text
    data = json.loads(to_json(report))
    assert len(data["sessions"]) == 4 and data["utc_offset"] == "UTC+08:00"
    assert data["budget"][0] == {
        "peer": "civil-affairs",
        "dataset": "prison",
        "day": "2025-03-03",
        "sessions": 2,
        "elements": 1910,
    }
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 4
    assert rows[0]["opened"] == "2025-03-03T10:00:00+08:00" and rows[0]["declared"] == "950"
    page = to_html(report)
    assert page.startswith("<!doctype html>") and page.count("<svg") == 2
    assert "<script" not in page and "&lt;script&gt;" in page  # every value is escaped
    assert "href=" not in page and "src=" not in page and "<link" not in page
    assert page.count("http") == page.count('xmlns="http://www.w3.org/2000/svg"')
    for svg in re.findall(r"<svg.*?</svg>", page, re.S):  # well-formed, bars within the plot
        rects = [
            r
            for r in ElementTree.fromstring(svg).iter(f"{SVG}rect")
            if r.find(f"{SVG}title") is not None
        ]
        assert rects and all(float(r.get("y")) >= 30 for r in rects)


def test_utc_offsets():
    assert parse_utc_offset("-05:30").utcoffset(None).total_seconds() == -5.5 * 3600
    for bad in ("8", "+8:00", "+15:00", "+08:60", "UTC"):
        with pytest.raises(InputError, match="--utc-offset"):
            parse_utc_offset(bad)


def test_cross_check_accounts_for_every_receipt(logs, tmp_path):
    check = cross_check(logs["client"], logs["node"])
    assert (
        check.ok
        and check.matched == 3
        and (check.client, check.node)
        == (
            "civil-affairs",
            "prison",
        )
    )
    # Change the client's side: one count differs, one receipt gone, one the node never issued.
    db = sqlite3.connect(logs["client"])
    with db:
        db.execute(
            "UPDATE entries SET data = replace(data, '\"evaluated\":950', '\"evaluated\":951')"
        )
        db.execute("UPDATE entries SET data = replace(data, '\"s-b\"', '\"s-z\"')")
    db.close()
    check = cross_check(logs["client"], logs["node"])
    assert not check.ok and check.matched == 1
    assert [(d.session_id, d.kind) for d in check.differences] == [
        ("s-z", "missing-at-node"),
        ("s-b", "missing-at-client"),
        ("s-a", "differs"),
    ]
    assert "evaluated: client 951, node 950" in str(check.differences[2])


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture
def psi(monkeypatch, capsys):
    """``psi``'s own entry point (its exit codes and one-line errors) with only ``audit``
    registered, so that these tests do not depend on the other subcommands."""
    monkeypatch.setattr(cli, "COMMANDS", ("audit",))

    def run(*args: object) -> tuple[int, str, str]:
        code = cli.main(["audit", *map(str, args)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_verify(psi, logs):
    code, out, err = psi("verify", logs["node"], "--key", logs["node_key"])
    assert code == 0 and "verified: no tampering found" in out and not err
    assert "all 14 entries under signed tree heads" in out  # closing the log signed the last
    code, out, _ = psi("verify", logs["node"], "--key", logs["client_key"])
    assert code == 1 and "log: the log declares signing key" in out
    db = sqlite3.connect(logs["node"])
    with db:
        db.execute("UPDATE entries SET data = replace(data, '960', '96') WHERE idx = 3")
    db.close()
    code, out, _ = psi("verify", logs["node"], "--key", logs["node_key"])
    assert code == 1 and "TAMPERED" in out
    assert "  entry 3: its content does not match its recorded leaf hash" in out


def test_cli_report_writes_every_format(psi, logs, tmp_path):
    outputs = [tmp_path / f"report.{ext}" for ext in ("json", "csv", "html")]
    code, out, _ = psi(
        "report",
        logs["node"],
        "--json",
        outputs[0],
        "--csv",
        outputs[1],
        "--html",
        outputs[2],
        "--utc-offset",
        "+00:00",
    )
    assert code == 0 and "audit report for the log of prison" in out
    assert all(p.is_file() and f"wrote {p}" in out for p in outputs)
    assert json.loads(outputs[0].read_text())["utc_offset"] == "UTC"


def test_cli_cross_check(psi, logs):
    code, out, _ = psi("cross-check", logs["client"], logs["node"])
    assert code == 0 and "3 agree, 0 differences" in out
    db = sqlite3.connect(logs["client"])
    with db:
        db.execute("DELETE FROM entries WHERE data LIKE '%\"s-b\"%'")
    db.close()
    code, out, _ = psi("cross-check", logs["client"], logs["node"])
    assert code == 1 and "2 agree, 1 differences" in out
    assert (
        "  session s-b: the node logged a receipt the client never did [missing-at-client]" in out
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("verify", "missing.sqlite", "--key", "{node_key}"), "no audit log at missing.sqlite"),
        (("verify", "{node}", "--key", "missing.pem"), "cannot read public key missing.pem"),
        (("verify", "{node}", "--key", "{node}"), "not a PEM public key"),
        (("report", "{node}", "--utc-offset", "8"), "--utc-offset '8'"),
        (("report", "{node}", "--html", "{node}/no/such/dir.html"), "cannot write"),
        (("cross-check", "{client}", "missing.sqlite"), "no audit log at missing.sqlite"),
        (
            ("cross-check", "{node}", "{client}"),
            "it is not a client's log (the order is CLIENT_LOG",
        ),
    ],
)
def test_cli_user_errors_print_one_line(psi, logs, args, message):
    code, _, err = psi(*(a.format(**logs) for a in args))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("psi audit: error: ") and message in err


def test_cli_report_refuses_a_log_with_an_invalid_entry(psi, logs):
    db = sqlite3.connect(logs["node"])
    with db:
        db.execute("UPDATE entries SET data = '[1, 2]' WHERE idx = 2")
    db.close()
    code, _, err = psi("report", logs["node"])
    assert code == 2 and "entry 2 is not a valid entry" in err and "psi audit verify" in err
