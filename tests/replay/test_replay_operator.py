"""The department operator's attacks and fixes replayed through public interfaces only: the ``psi``
command line in subprocesses, configuration files written as an operator writes them, the node's
Prometheus endpoint over HTTP, and gRPC stubs generated from the .proto with a federation
certificate. Nothing here imports the implementation."""

import csv
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc

PASSPHRASE = "replay passphrase, not for production"
NODE, CLIENT = "prison", "civil-affairs"
TLS = '{{ ca = "certs/ca.pem", cert = "certs/{0}.pem", key = "certs/{0}-key.pem" }}'


def psi(root: Path, *args: object, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    run = subprocess.run(
        [sys.executable, "-m", "nodes.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "KINLINK_KEY_PASSPHRASE": PASSPHRASE},
        timeout=120,
    )
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode in ok, f"exit {run.returncode}: {run.stdout}{run.stderr}"
    return run


def node_toml(statuses='["imprisoned"]', purposes='["screening"]', extra="", budget="per_session"):
    return f"""[node]
id = "{NODE}"
listen = "127.0.0.1:0"
state = "state"
metrics = "127.0.0.1:0"
tls = {TLS.format(NODE)}

[datasets.{NODE}]
csv = "data/{NODE}.csv"
statuses = {statuses}
{extra}
[[grants]]
client = "{CLIENT}"
datasets = ["{NODE}"]
purposes = {purposes}
{budget} = 100000
per_day = 100000
per_epoch = 1000000
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay-operator")
    psi(root, "synth", "--out", "data", "--children", "200", "--as-of", "2026-11-30", "--seed", "3")
    psi(root, "certs", "init", "--out", "certs", "--nodes", NODE, "--clients", CLIENT)
    return root


@pytest.fixture(scope="module")
def node(root):
    """A node serving prison.csv, granting civil affairs "statistics" on a dataset with no
    statistics, as the issue found it; civil affairs' federation file pointing at it."""
    (root / "node.toml").write_text(node_toml(purposes='["screening", "statistics"]'))
    psi(root, "node", "build", "--config", "node.toml")
    with open(root / "serve.out", "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "nodes.cli", "node", "serve", "--config", "node.toml"],
            cwd=root,
            env={**os.environ, "KINLINK_KEY_PASSPHRASE": PASSPHRASE},
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60
        while "metrics on port" not in (root / "serve.out").read_text():
            assert process.poll() is None and time.monotonic() < deadline, "node did not start"
            time.sleep(0.05)
        ports = re.search(r"on port (\d+); metrics on port (\d+)", (root / "serve.out").read_text())
        (root / "federation.toml").write_text(
            f'[client]\nid = "{CLIENT}"\ncache = "cache"\ntls = {TLS.format(CLIENT)}\n'
            f'[nodes.{NODE}]\naddress = "127.0.0.1:{ports[1]}"\n'
        )
        yield int(ports[1]), int(ports[2])
    finally:
        process.terminate()
        process.wait(timeout=20)


def query(root: Path, purpose: str = "screening", ok=(0,)) -> subprocess.CompletedProcess:
    return psi(
        root, "query", "--federation", "federation.toml", "--node", NODE, "--dataset", NODE,
        "--ids", "data/roster.csv", "--column", "father_id", "--purpose", purpose,
        "--out", f"matches-{purpose}.csv", ok=ok,
    )  # fmt: skip


def matched(root: Path) -> set[str]:
    with open(root / "matches-screening.csv", newline="") as handle:
        return {row["id_number"] for row in csv.DictReader(handle)}


def test_a_misspelt_budget_is_named_not_unlimited(root):
    (root / "typo.toml").write_text(node_toml(budget="per_sesion"))
    run = psi(root, "node", "check", "--config", "typo.toml", ok=(2,))
    assert "grants[0].per_sesion: unknown key; did you mean per_session?" in run.stdout


def test_undeclared_statuses_are_named_and_never_published(root):
    (root / "deceased.toml").write_text(
        node_toml(statuses='["deceased"]').replace('state = "state"', 'state = "state-d"')
    )
    check = psi(root, "node", "check", "--config", "deceased.toml", ok=(2,))
    assert re.search(r"does not declare: imprisoned \(\d+ rows\)", check.stdout), check.stdout
    assert not re.search(r"\d{17}[\dX]", check.stdout)
    build = psi(root, "node", "build", "--config", "deceased.toml")
    assert "version 1 published; 0 entries" in build.stdout


def test_the_statistics_purpose_never_yields_named_matches(root, node):
    refused = query(root, "statistics", ok=(3,))
    assert "PERMISSION_DENIED" in refused.stderr and "statistics only" in refused.stderr
    assert not (root / "matches-statistics.csv").exists()
    request = psi(
        root, "catalog", "request", "--federation", "federation.toml", "--node", NODE,
        "--dataset", NODE, "--purpose", "statistics", "--legal-basis", "Statistics law",
        "--reason", "counts per county", ok=(3,),
    )  # fmt: skip
    assert "offers no statistics" in request.stderr
    check = psi(root, "node", "check", "--config", "node.toml", ok=(2,))
    assert "purpose 'statistics' cannot be granted" in check.stdout


def open_session(root: Path, port: int, epoch: int):
    certs = root / "certs"
    credentials = grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(),
        (certs / f"{CLIENT}-key.pem").read_bytes(),
        (certs / f"{CLIENT}.pem").read_bytes(),
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        return psi_pb2_grpc.DepartmentNodeStub(channel).OpenSession(
            psi_pb2.OpenSessionRequest(
                dataset_id=NODE, purpose_code="screening", element_count=1,
                suite="ristretto255-SHA512", key_epoch=epoch, protocol_version=1,
            ),
            timeout=10,
        )  # fmt: skip


def test_rotation_serves_the_old_epoch_until_the_new_one_is_built(root, node):
    port, _ = node
    assert "epoch 1" in query(root).stdout
    before = matched(root)
    assert "epoch 2 prepared" in psi(root, "node", "rotate", "--config", "node.toml").stdout
    assert "epoch 1" in query(root).stdout and matched(root) == before
    built = psi(root, "node", "build", "--config", "node.toml")
    assert "key epoch 2 started; epoch 1 retired" in built.stdout
    assert "epoch 2" in query(root).stdout and matched(root) == before
    with pytest.raises(grpc.RpcError) as retired:
        open_session(root, port, 1)
    assert retired.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_metrics_endpoint_counts_without_naming_anyone(root, node):
    _, metrics_port = node
    query(root)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    assert re.search(
        r'kinlink_requests_total\{client="civil-affairs",code="OK",method="OpenSession"\} [1-9]',
        text,
    ), text
    assert f'kinlink_elements_evaluated_total{{client="{CLIENT}",dataset="{NODE}"}}' in text
    assert (
        'kinlink_budget_left_elements{client="civil-affairs",dataset="prison",window="day"}' in text
    )
    assert not re.search(r"\d{17}[\dX]", text)
