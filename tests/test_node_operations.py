"""What an operator watches a running node with: Prometheus metrics on the port node.toml names
(requests by method, status and client; elements evaluated; budget left; builds), log lines as
text or JSON at the level asked for, and gRPC's C-core lines kept off stderr unless asked for.
The node is the real ``psi node serve`` process; metrics are scraped over HTTP."""

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import date

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodes.client.client import Client, NodeError
from nodes.demo.federation import CLIENT, LocalFederation
from nodes.demo.synth import expected_matches, generate_city, write_city
from nodes.shared.config import Limits, load_federation

NODE = "prison"
LIMITS = Limits(10_000, 50_000, 200_000)


class Serving:
    """``psi node serve`` with extra arguments; the ports from its first line on stdout."""

    def __init__(self, fed: LocalFederation, *args: str, env: dict | None = None):
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "nodes.cli", "node", "serve"),
                *("--config", str(fed.config_file(NODE)), *args),
            ],
            env={**fed.env(), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        found = re.search(r"on port (\d+)(?:; metrics on port (\d+))?", line)
        assert found, line + self.process.stderr.read()
        self.port = int(found[1])
        self.metrics_port = int(found[2]) if found[2] else None
        fed.ports[NODE] = self.port
        fed.federation_file.write_text(fed.federation_toml(), encoding="utf-8")

    def stop(self) -> str:
        """Stop the node; its stderr."""
        self.process.terminate()
        _, err = self.process.communicate(timeout=20)
        return err


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    city = generate_city(children=150, as_of=date(2026, 11, 30), seed=19)
    paths = write_city(city, tmp_path_factory.mktemp("data"))
    with LocalFederation(tmp_path_factory.mktemp("fed"), {NODE: paths[NODE]}, LIMITS) as fed:
        fed.setup()
        config = fed.config_file(NODE)
        text = config.read_text(encoding="utf-8")
        config.write_text(
            text.replace('state = "state"\n', 'state = "state"\nmetrics = "127.0.0.1:0"\n'),
            encoding="utf-8",
        )
        fed.entries = fed.build()[NODE][0].entries
        fed.matched = sorted(expected_matches(city)[NODE])
        yield fed


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert not re.search(r"\d{17}[\dX]", text), "an identity number in the metrics"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def handshake_without_certificate(fed: LocalFederation, port: int) -> None:
    """What a stranger's TLS client does: no client certificate, so the handshake fails."""
    ca = (fed.certs / "ca.pem").read_bytes()
    channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca))
    with channel, pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(channel).result(timeout=1.5)


def test_metrics_count_requests_evaluations_budgets_and_builds(fed):
    node = Serving(fed, "--log-format", "json")
    try:
        with Client(load_federation(fed.federation_file)) as client:
            result = client.query(NODE, NODE, fed.matched, purpose="screening")
            with pytest.raises(NodeError):
                client.query(NODE, NODE, fed.matched, purpose="marketing")
        handshake_without_certificate(fed, node.port)
        metrics = scrape(node.metrics_port)
    finally:
        err = node.stop()
    who = ("client", CLIENT)
    opened = ("kinlink_requests_total", (who, ("code", "OK"), ("method", "OpenSession")))
    denied = ("code", "PERMISSION_DENIED")
    # The refused query needs no evaluation (its outputs are cached): its table is refused.
    refused = ("kinlink_requests_total", (who, denied, ("method", "FetchTable")))
    evaluated = ("kinlink_elements_evaluated_total", (who, ("dataset", NODE)))
    assert metrics[opened] == 1 and metrics[refused] == 1
    assert metrics[("kinlink_requests_total", (who, ("code", "OK"), ("method", "Evaluate")))] == 1
    assert metrics[evaluated] == len(fed.matched) == result.queried
    day = ("kinlink_budget_left_elements", (who, ("dataset", NODE), ("window", "day")))
    assert metrics[day] == LIMITS.per_day - len(fed.matched)
    assert metrics[("kinlink_table_entries", (("dataset", NODE),))] == fed.entries
    assert metrics[("kinlink_build_seconds", (("dataset", NODE),))] > 0
    assert metrics[("kinlink_key_epoch", (("dataset", NODE),))] == 1

    lines = err.splitlines()
    assert lines and all(json.loads(line)["logger"].startswith("kinlink") for line in lines), err
    assert not any("ssl_transport_security" in line for line in lines)
    assert any("session_opened client=civil-affairs" in json.loads(x)["message"] for x in lines)


def test_quiet_logs_nothing_but_problems_and_grpc_lines_come_when_asked_for(fed):
    node = Serving(fed, "-q", env={"GRPC_VERBOSITY": "INFO"})
    try:
        handshake_without_certificate(fed, node.port)
        with Client(load_federation(fed.federation_file)) as client:
            client.query(NODE, NODE, fed.matched[:3], purpose="screening")
    finally:
        err = node.stop()
    assert "ssl_transport_security" in err  # asked for with GRPC_VERBOSITY=INFO
    assert " INFO kinlink" not in err and "session_opened" not in err
    log = (fed.root / NODE / "state" / "node.log").read_text(encoding="utf-8")
    assert "session_opened" in log  # from the first test: the file keeps what was logged


def test_sighup_is_no_reload_and_says_so(fed):
    node = Serving(fed)
    try:
        node.process.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert node.process.poll() is None, "SIGHUP ended the node"
    finally:
        err = node.stop()
    assert "is not reloaded; restart the node to apply a change (still serving)" in err


def test_serve_help_names_no_missing_option_and_what_needs_a_restart():
    run = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "node", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    text = " ".join(run.stdout.split())
    assert run.returncode == 0 and "--listen" not in text
    assert "restart after changing them" in text and "listen = HOST:0" in text
