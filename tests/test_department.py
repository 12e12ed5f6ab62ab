"""A department's register through to a client's labelled query: bad rows, resumable and
incremental builds, per-client label fields."""

import csv
import random
import re
from datetime import date, timedelta

import numpy as np
import pytest

from nodes.department.build import build_dataset_table, evaluate_people, server_key
from nodes.department.register import csv_rows, read_rows
from nodes.shared.cache import OutputCache
from psi.ids import check_character
from psi.keys import KeyRing
from psi.labels import FIELDS, REGISTER_COLUMNS
from psi.matching import labelled_query
from psi.oprf import Oprf
from psi.table import diff

AS_OF = "2026-11-30"
HEADER = REGISTER_COLUMNS


def person(i: int) -> str:
    """Distinct valid identifiers for i < 20,000,000."""
    born = date(1950, 1, 1) + timedelta(days=i % 20_000)
    body = f"150802{born:%Y%m%d}{i // 20_000:03d}"
    return body + check_character(body)


def write_register(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def oprf():
    return Oprf(workers=2)


def query(oprf, keyring, table, dataset, ids, fields=FIELDS):
    key = server_key(oprf, keyring, dataset, keyring.current(dataset)[0], fields)
    return labelled_query(
        oprf, [x.encode() for x in ids], lambda b: oprf.blind_evaluate_batch(key.sk, b), table
    )


def test_register_with_ten_percent_malformed_ids(tmp_path, oprf):
    rng = random.Random(7)
    good, rows, bad_lines = [], [], {}
    for i in range(600):
        x = person(i)
        line = len(rows) + 2
        if i % 10 == 3:  # 10% malformed, in the ways real files are
            broken = rng.choice(
                [
                    x[:-1] + ("0" if x[-1] != "0" else "1"),
                    x[:10] + "1332" + x[14:],
                    x[:12] + "4" + x[13:],
                    x + "9",
                    x[:-3] + "AB1",
                ]
            )
            rows.append([broken, "imprisoned", "2025-01-01", "", "", "", f"PR-{i}"])
            bad_lines[line] = x
        else:
            messy = rng.choice(
                [x, x.lower(), x[:6] + " " + x[6:], x[:6] + "-" + x[6:14] + "-" + x[14:]]
            )
            rows.append([messy, "imprisoned", "2025-01-01", "", "", "", f"PR-{i}"])
            good.append(x)
    path = tmp_path / "prison.csv"
    write_register(path, rows)
    register = read_rows(csv_rows(path, {}), str(path))
    assert sorted(register.people) == sorted(good)
    assert {r.line for r in register.rejects} == set(bad_lines)
    assert all(r.file == str(path) and r.column == "id_number" for r in register.rejects)
    for reject in register.rejects:
        assert not re.search(r"\d{11,}", reject.masked + reject.reason)

    keyring = KeyRing()
    keyring.add_dataset("prison")
    table, computed = build_dataset_table(register, keyring, "prison", oprf=oprf)
    assert computed == len(good)
    roster = good[::2] + [person(i) for i in range(1000, 1100)]
    result = query(oprf, keyring, table, "prison", roster)
    assert {roster[f.index] for f in result.found} == set(good[::2])


def test_bad_cells_are_reported_with_their_column(tmp_path):
    x = person(1)
    path = tmp_path / "r.csv"
    write_register(
        path,
        [
            [x, "imprisoned", "2025-13-01", "", "", "", "A"],
            [x, "jailed", "", "", "", "", "B"],
            [x, "severe_disability", "", "", "7", "physical", "C"],
            [x, "imprisoned", "2025-02-01", "2025-01-01", "", "", "D"],
            [x, "imprisoned", "2025-02-01", "", "", "", ""],
            [x, "imprisoned", "2025-02-01", "", "", "", "E"],
        ],
    )
    register = read_rows(csv_rows(path, {}), str(path))
    columns = [(r.line, r.column) for r in register.rejects]
    assert columns == [
        (2, "start_date"),
        (3, "status"),
        (4, "disability_grade"),
        (5, "end_date"),
        (6, "record_ref"),
    ]
    assert [len(e) for e in register.people.values()] == [1]
    assert all(x not in r.reason and x not in r.masked for r in register.rejects)


def test_column_mapping_and_missing_column(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("sfzh,zt,ref\n" + person(2) + ",deceased,H-1\n", encoding="utf-8")
    register = read_rows(
        csv_rows(path, {"id_number": "sfzh", "status": "zt", "record_ref": "ref"}), str(path)
    )
    assert list(register.people) == [person(2)]
    with pytest.raises(Exception, match=r"no column 'id_number'.*sfzh, zt, ref"):
        list(csv_rows(path, {}))


def test_interrupted_build_resumes_and_rebuild_evaluates_only_new_people(
    tmp_path, oprf, monkeypatch
):
    monkeypatch.setattr("nodes.department.build.CACHE_CHUNK", 1000)
    keyring = KeyRing()
    keyring.add_dataset("health")
    key = server_key(oprf, keyring, "health", 1, FIELDS)
    people = [person(i) for i in range(5000)]
    cache = OutputCache(
        tmp_path / "outputs.bin", keyring.handle_key("health"), context="t", remedy="delete it"
    )

    class Interrupted(Exception):
        pass

    done = 0

    def stop_midway(n):
        nonlocal done
        done += n
        if done > 2500:
            raise Interrupted

    with pytest.raises(Interrupted):
        evaluate_people(oprf, key, people, cache, stop_midway)
    outputs, computed = evaluate_people(oprf, key, people, cache)
    assert 0 < computed <= 3000  # the committed chunks were not evaluated again
    assert np.array_equal(outputs, oprf.evaluate_batch(key.sk, [x.encode() for x in people]))
    _, computed = evaluate_people(oprf, key, [*people, person(50_000)], cache)
    assert computed == 1


def test_new_version_ships_only_changes(tmp_path, oprf):
    keyring = KeyRing()
    keyring.add_dataset("prison")
    rows = [[person(i), "imprisoned", "2025-01-01", "", "", "", f"PR-{i}"] for i in range(300)]
    path = tmp_path / "prison.csv"
    write_register(path, rows)
    cache = OutputCache(
        tmp_path / "c.bin", keyring.handle_key("prison"), context="t", remedy="delete it"
    )
    v1, _ = build_dataset_table(
        read_rows(csv_rows(path, {}), "p"), keyring, "prison", oprf=oprf, cache=cache
    )
    rows[5][3] = "2026-01-01"  # released: a changed entry
    del rows[7]  # removed
    rows.append([person(999), "imprisoned", "2026-05-01", "", "", "", "PR-999"])  # added
    write_register(path, rows)
    v2, computed = build_dataset_table(
        read_rows(csv_rows(path, {}), "p"),
        keyring,
        "prison",
        oprf=oprf,
        cache=cache,
        version=2,
        previous=v1,
    )
    assert computed == 1
    delta = diff(v1, v2)
    assert delta.header.removed == 2 and delta.header.added == 2


def test_label_fields_are_removed_before_encryption(tmp_path, oprf):
    keyring = KeyRing()
    keyring.add_dataset("disability")
    path = tmp_path / "d.csv"
    write_register(path, [[person(3), "severe_disability", "2020-01-01", "", "2", "mental", "D-1"]])
    register = read_rows(csv_rows(path, {}), "d")
    fields = {"status", "disability_grade"}
    table, _ = build_dataset_table(register, keyring, "disability", oprf=oprf, fields=fields)
    [found] = query(oprf, keyring, table, "disability", [person(3)], fields).found
    [record] = found.label.records
    assert record.status == "severe_disability" and record.disability_grade == 2
    assert record.disability_kind is None and record.start is None and record.handle is None


def test_register_from_a_sql_query(tmp_path):
    import sqlite3

    from nodes.department.register import sql_rows

    db = tmp_path / "registers.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE inmates (sfzh TEXT, zt TEXT, ks TEXT, js TEXT, ref TEXT)")
        conn.executemany(
            "INSERT INTO inmates VALUES (?, ?, ?, ?, ?)",
            [
                (person(1).lower(), "imprisoned", "2025-01-01", None, "PR-1"),
                (person(2), "imprisoned", "2025-02-30", None, "PR-2"),
                ("bad", "imprisoned", None, None, "PR-3"),
            ],
        )
    columns = {
        "id_number": "sfzh",
        "status": "zt",
        "start_date": "ks",
        "end_date": "js",
        "record_ref": "ref",
    }
    register = read_rows(
        sql_rows(f"sqlite:///{db}", "SELECT * FROM inmates ORDER BY ref", columns), "q"
    )
    assert list(register.people) == [person(1)]
    assert [(r.line, r.column) for r in register.rejects] == [(2, "start_date"), (3, "id_number")]
    with pytest.raises(Exception, match="the query failed"):
        list(sql_rows(f"sqlite:///{db}", "SELECT * FROM nowhere", columns))
