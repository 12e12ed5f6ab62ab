"""What a civil-affairs officer or script author meets: the README's Python example run as
written, identifiers spelt as real files spell them, exit codes, output options and progress,
against a real node over mutual TLS."""

import csv
import json
import re
import subprocess
import sys
import time
from datetime import date

import pytest

from nodes.client.client import Client, NodeError
from nodes.demo.federation import LocalFederation
from nodes.demo.synth import expected_matches, generate_city, write_city
from nodes.shared.config import load_federation
from psi.errors import InputError

README = __import__("pathlib").Path(__file__).resolve().parents[1] / "README.md"


def psi(*args, cwd=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def prison(tmp_path_factory):
    city = generate_city(children=200, as_of=date(2026, 11, 30), seed=5, messy=0.5)
    paths = write_city(city, tmp_path_factory.mktemp("data"))
    with LocalFederation(tmp_path_factory.mktemp("fed"), {"prison": paths["prison"]}) as fed:
        fed.setup()
        fed.build()
        fed.start()
        yield fed, sorted(expected_matches(city)["prison"]), city.parents_as_written()


def write_ids(path, ids, column="id_number"):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([column])
        writer.writerows([x] for x in ids)
    return path


def query(fed, ids, *extra, dataset="prison", out=None, cwd=None):
    return psi(
        "query",
        "--federation",
        fed.federation_file,
        "--node",
        "prison",
        "--dataset",
        dataset,
        "--ids",
        ids,
        "--purpose",
        "screening",
        *(["--out", out] if out is not None else []),
        *extra,
        cwd=cwd,
    )


def test_the_readme_example_runs_as_written_and_finds_every_spelling(prison):
    fed, matched, written = prison
    assert any(len(v) == 15 for v in written) and any("x" in v for v in written)
    write_ids(fed.root / "parents.csv", written)
    code = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=fed.root, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    printed = [line.split(" ", 1)[0] for line in run.stdout.splitlines()]
    assert sorted(printed) == matched  # every spelling found, named canonically


def test_an_invalid_identifier_stops_the_query_with_counts_and_no_number(prison):
    fed, matched, _ = prison
    with (
        Client(load_federation(fed.federation_file)) as client,
        pytest.raises(InputError) as raised,
    ):
        client.query("prison", "prison", [*matched[:3], "110105194912310021"], purpose="s")
    message = str(raised.value)
    assert "1 of 4 identifiers are not identity numbers (wrong check character: 1)" in message
    assert "index 3" in message and "110105194912310021" not in message


def test_progress_counts_each_identifier_once(prison):
    fed, matched, _ = prison
    ids = [*matched, "11010519491231002X"]
    for _ in range(2):  # asked, then answered from the cache
        seen = []
        with Client(load_federation(fed.federation_file)) as client:
            client.query("prison", "prison", ids, purpose="screening", progress=seen.append)
        assert sum(seen) == len(ids)


def test_a_file_without_a_valid_identifier_is_an_input_error(prison, tmp_path):
    fed, _, _ = prison
    run = query(fed, write_ids(tmp_path / "ids.csv", ["not-an-id", "110105"]), out=tmp_path / "m")
    assert run.returncode == 2, run.stderr
    assert "no valid identifier in column 'id_number'" in run.stderr
    assert "matched" not in run.stdout + run.stderr and not (tmp_path / "m").exists()


def test_a_misspelt_dataset_is_an_input_error_listing_the_datasets(prison, tmp_path):
    fed, matched, _ = prison
    ids = write_ids(tmp_path / "ids.csv", matched[:2])
    run = query(fed, ids, dataset="prisons", out=tmp_path / "m.csv")
    assert run.returncode == 2, run.stderr
    error = run.stderr.strip().splitlines()[-1]
    assert "no dataset 'prisons'" in error and "its datasets: prison " in error
    assert "Traceback" not in run.stderr


def test_out_dash_writes_to_stdout_and_json_is_one_document(prison, tmp_path):
    fed, matched, _ = prison
    ids = write_ids(tmp_path / "ids.csv", [*matched[:4], "not-an-id"])
    run = query(fed, ids, out="-", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(run.stdout.splitlines()))
    assert {r["id_number"] for r in rows} == set(matched[:4])
    assert "4 of 4 identifiers matched" in run.stderr and not (tmp_path / "-").exists()
    assert (tmp_path / "ids.rejects.csv").exists()  # stdout has no folder: the current one
    out = tmp_path / "out" / "matches.json"
    out.parent.mkdir()
    as_json = query(fed, ids, "--json", "--lang", "zh", out=out)
    assert as_json.returncode == 0, as_json.stderr
    assert "4 个身份证号中 4 个匹配" in as_json.stdout
    document = json.loads(out.read_text(encoding="utf-8"))
    assert {m["id_number"] for m in document["matches"]} == set(matched[:4])
    assert document["datasets"][0]["matched"] == 4
    # The rejects go beside the output, not beside the input.
    assert (out.parent / "matches.rejects.csv").exists()


def test_version():
    run = psi("--version")
    assert run.returncode == 0 and re.fullmatch(r"psi \d+\.\d+\.\d+\S*\n", run.stdout)


def test_an_unreachable_node_fails_fast_naming_address_and_cause(prison, tmp_path):
    fed, _, _ = prison
    dead = tmp_path / "federation.toml"
    dead.write_text(
        fed.federation_file.read_text().replace(f"127.0.0.1:{fed.ports['prison']}", "127.0.0.1:9")
    )
    (tmp_path / "certs").symlink_to(fed.certs)
    ids = write_ids(tmp_path / "ids.csv", ["11010519491231002X"])
    with Client(load_federation(dead)) as client:
        started = time.monotonic()
        with pytest.raises(NodeError, match=r"nothing listens at 127\.0\.0\.1:9"):
            client.query("prison", "prison", ["11010519491231002X"], purpose="screening")
        assert time.monotonic() - started < 5
    run = psi(
        "query", "--federation", dead, "--node", "prison", "--dataset", "prison",
        "--ids", ids, "--purpose", "screening", "--out", tmp_path / "m.csv",
    )  # fmt: skip
    assert run.returncode == 3
    error = run.stderr.strip().splitlines()[-1]
    assert "node 'prison' at 127.0.0.1:9" in error and "nothing listens" in error
