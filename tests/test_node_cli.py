"""The operator's and civil affairs' commands as real subprocesses: build, rotate, query."""

import csv
import subprocess
import sys
from datetime import date

import grpc
import pytest

from nodes.demo.federation import LocalFederation
from nodes.demo.synth import expected_matches, generate_city, write_city
from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc
from protocols.limits import GRPC_OPTIONS


def psi(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def prison(tmp_path_factory):
    city = generate_city(children=200, as_of=date(2026, 11, 30), seed=5)
    paths = write_city(city, tmp_path_factory.mktemp("data"))
    with LocalFederation(tmp_path_factory.mktemp("fed"), {"prison": paths["prison"]}) as fed:
        fed.setup()
        fed.start_build = psi("node", "build", "--config", fed.config_file("prison"), env=fed.env())
        fed.start()
        yield fed, city, paths


def write_ids(path, ids):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id_number"])
        writer.writerows([x] for x in ids)


def test_build_publishes_then_reports_unchanged(prison):
    fed, _, _ = prison
    assert fed.start_build.returncode == 0, fed.start_build.stderr
    assert "version 1 published" in fed.start_build.stdout
    again = psi("node", "build", "--config", fed.config_file("prison"), env=fed.env())
    assert again.returncode == 0 and "unchanged at version 1" in again.stdout
    assert "0 evaluated" in again.stdout


def test_query_exit_codes(prison, tmp_path):
    fed, city, _ = prison
    matched = sorted(expected_matches(city)["prison"])
    ids = tmp_path / "ids.csv"
    write_ids(ids, [*matched[:5], "11010519491231002X", "not-an-id"])
    out = tmp_path / "matches.csv"
    run = psi(
        "query",
        "--federation",
        fed.federation_file,
        "--node",
        "prison",
        "--dataset",
        "prison",
        "--ids",
        ids,
        "--purpose",
        "screening",
        "--out",
        out,
    )
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(out.open()))
    assert {r["id_number"] for r in rows} == set(matched[:5])
    assert "1 invalid identifiers listed in" in run.stderr
    assert "not-an-id" not in run.stderr + run.stdout

    write_ids(ids, ["11010519491231002X"])
    none = psi(
        "query",
        "--federation",
        fed.federation_file,
        "--node",
        "prison",
        "--dataset",
        "prison",
        "--ids",
        ids,
        "--purpose",
        "screening",
        "--out",
        out,
    )
    assert none.returncode == 1, none.stderr

    refused = psi(
        "query",
        "--federation",
        fed.federation_file,
        "--node",
        "prison",
        "--dataset",
        "prison",
        "--ids",
        ids,
        "--purpose",
        "marketing",
        "--out",
        out,
    )
    assert refused.returncode == 3 and "PERMISSION_DENIED" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_unreachable_node_is_a_failure_not_an_empty_result(prison, tmp_path):
    fed, _, _ = prison
    dead = tmp_path / "federation.toml"
    text = fed.federation_file.read_text()
    dead.write_text(text.replace(f"127.0.0.1:{fed.ports['prison']}", "127.0.0.1:9"))
    for name in ("certs",):
        (tmp_path / name).symlink_to(fed.root / name)
    ids = tmp_path / "ids.csv"
    write_ids(ids, ["11010519491231002X"])
    run = psi(
        "query",
        "--federation",
        dead,
        "--node",
        "prison",
        "--dataset",
        "prison",
        "--ids",
        ids,
        "--purpose",
        "screening",
        "--out",
        tmp_path / "m.csv",
    )
    assert run.returncode == 3 and "UNAVAILABLE" in run.stderr
    assert not (tmp_path / "m.csv").exists()


def test_user_mistakes_are_one_line(prison, tmp_path):
    fed, _, _ = prison
    run = psi(
        "query",
        "--federation",
        tmp_path / "missing.toml",
        "--node",
        "prison",
        "--dataset",
        "prison",
        "--ids",
        tmp_path / "x.csv",
        "--purpose",
        "s",
        "--out",
        tmp_path / "m.csv",
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "missing.toml" in run.stderr
    wrong = psi(
        "node",
        "build",
        "--config",
        fed.config_file("prison"),
        env={**fed.env(), "KINLINK_KEY_PASSPHRASE": "wrong"},
    )
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr


def test_rotation_retires_the_epoch(prison):
    fed, _, _ = prison
    rotated = psi("node", "rotate", "--config", fed.config_file("prison"), env=fed.env())
    assert rotated.returncode == 0 and "key epoch 2 prepared" in rotated.stdout
    built = psi("node", "build", "--config", fed.config_file("prison"), env=fed.env())
    assert built.returncode == 0 and "epoch 2: version 1 published" in built.stdout
    assert "key epoch 2 started; epoch 1 retired" in built.stdout
    ca = (fed.certs / "ca.pem").read_bytes()
    creds = grpc.ssl_channel_credentials(
        ca,
        (fed.certs / "civil-affairs-key.pem").read_bytes(),
        (fed.certs / "civil-affairs.pem").read_bytes(),
    )
    with grpc.secure_channel(f"127.0.0.1:{fed.ports['prison']}", creds, GRPC_OPTIONS) as ch:
        stub = psi_pb2_grpc.DepartmentNodeStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.OpenSession(
                psi_pb2.OpenSessionRequest(
                    dataset_id="prison",
                    purpose_code="screening",
                    element_count=1,
                    suite="ristretto255-SHA512",
                    key_epoch=1,
                    protocol_version=1,
                ),
                timeout=10,
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "epoch 1 was retired" in info.value.details()
        catalogue = stub.GetCatalogue(psi_pb2.CatalogueRequest(), timeout=10)
        assert catalogue.datasets[0].key_epoch == 2
