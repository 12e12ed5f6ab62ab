"""Issue 13, finding 6, written as the attacks: a node that will not stop, a second node on a port
already in use, a node serving under a certificate of another name, and a client misled into
pinning the wrong node's key. Real `psi node serve` processes, real gRPC over mutual TLS."""

import contextlib
import signal
import subprocess
import sys
import time
from datetime import date

import pytest
from test_federation import channel, open_session

from nodes.client.client import Client, NodeError
from nodes.demo.federation import LocalFederation
from nodes.demo.synth import generate_city, write_city
from nodes.shared.config import Limits, load_federation
from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc

VALID_ELEMENT = bytes.fromhex("609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c")
PER_CHUNK = 65_536
ID = "11010519491231002X"


@pytest.fixture(scope="module")
def registers(tmp_path_factory):
    city = generate_city(children=100, as_of=date(2026, 11, 30), seed=13)
    return write_city(city, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def pair(registers, tmp_path_factory):
    """Prison and police, each serving on a port of its own."""
    chosen = {d: registers[d] for d in ("prison", "police")}
    with LocalFederation(tmp_path_factory.mktemp("pair"), chosen) as fed:
        fed.setup()
        fed.build()
        fed.start()
        yield fed


def serve(config, env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nodes.cli", "node", "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def refused(process: subprocess.Popen, seconds: float = 20) -> tuple[int, str]:
    """The exit status and error of a node that should refuse to start; one still serving after
    ``seconds`` is stopped and fails the test."""
    try:
        _, err = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"the node kept serving for {seconds} s")
    return process.returncode, err


def variant(fed: LocalFederation, node: str, name: str, **changes: str):
    """A copy of ``node``'s node.toml beside it (so relative paths hold) with some keys of its
    ``[node]`` table changed."""
    text = fed.config_file(node).read_text()
    for key, value in changes.items():
        line = next(x for x in text.splitlines() if x.startswith(f"{key} = "))
        text = text.replace(line, f'{key} = "{value}"')
    path = fed.config_file(node).parent / name
    path.write_text(text)
    return path


def test_sigterm_after_load_stops_within_the_grace_period(registers, tmp_path):
    """Six streams keep the node evaluating (twenty 65,536-element chunks each, answers never
    read); SIGTERM must stop it after its grace period (1 s here), not once all that work is
    done."""
    limits = Limits(20 * PER_CHUNK, 200 * PER_CHUNK, 400 * PER_CHUNK)
    with LocalFederation(tmp_path, {"prison": registers["prison"]}, limits=limits) as fed:
        fed.setup()
        config = fed.config_file("prison")
        config.write_text(config.read_text() + "\n[serve]\nstop_grace_seconds = 1\n")
        fed.build()
        fed.start()
        process = fed.processes["prison"]
        with channel(fed, "prison") as ch:
            stub = psi_pb2_grpc.DepartmentNodeStub(ch)
            calls = []
            for _ in range(6):
                session = open_session(stub, element_count=20 * PER_CHUNK).session_id
                chunks = (
                    psi_pb2.EvaluateChunk(
                        session_id=session if i == 0 else "",
                        sequence=i,
                        count=PER_CHUNK,
                        elements=VALID_ELEMENT * PER_CHUNK,
                    )
                    for i in range(20)
                )
                calls.append(stub.Evaluate(chunks))
            time.sleep(3)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
            stopped = time.monotonic() - started
            for call in calls:
                call.cancel()
        assert process.returncode == 0 and stopped < 15, f"{stopped:.1f} s after SIGTERM"


def test_a_second_node_on_a_port_in_use_is_refused(pair, registers):
    """Police, misconfigured onto prison's port, must not start a second listener there."""
    port = pair.ports["prison"]
    clash = variant(pair, "police", "clash.toml", listen=f"127.0.0.1:{port}")
    code, err = refused(serve(clash, pair.env()))
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    line = err.strip()
    assert f"127.0.0.1:{port}" in line and "in use" in line, line


def test_a_node_whose_id_is_not_its_certificates_is_refused(pair):
    """A node.toml that says ``police`` but holds prison's certificate must not serve (a fresh
    state folder, built: nothing else stands in its way)."""
    wrong = variant(pair, "prison", "wrong-id.toml", id="police", state="state-wrong-id")
    psi = [sys.executable, "-m", "nodes.cli", "node", "build", "--config", str(wrong)]
    subprocess.run(psi, env=pair.env(), check=True, capture_output=True)
    code, err = refused(serve(wrong, pair.env()))
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    line = err.strip()
    assert "wrong-id.toml" in line and "'police'" in line and "'prison'" in line, line


def test_another_node_at_the_address_is_suspected_before_its_key(pair, tmp_path):
    """Civil affairs has pinned prison's key; the federation file then points prison at police's
    port. The client must say the address is suspect, not invite replacing the pinned key."""
    with Client(load_federation(pair.federation_file)) as client:
        client.catalogue("prison")  # pins prison's audit key
    text = pair.federation_file.read_text()
    address = f"127.0.0.1:{pair.ports['police']}"
    misdirected = pair.root / "federation-misdirected.toml"
    misdirected.write_text(text.replace(f"127.0.0.1:{pair.ports['prison']}", address))
    with (
        Client(load_federation(misdirected)) as client,
        pytest.raises(NodeError) as info,
    ):
        client.query("prison", "prison", [ID], purpose="screening")
    message = str(info.value)
    assert address in message and "federation" in message, message
    if "replace" in message:
        assert message.index(address) < message.index("replace"), message


def test_a_changed_key_message_suspects_the_address_first(pair):
    """Even when the node answers under the right name, a key that differs from the pinned one
    is first a question about the address, then about the key."""
    pinned = pair.root / "client-cache" / "node-keys" / "police.pem"
    with Client(load_federation(pair.federation_file)) as client:
        client.catalogue("police")
    original = pinned.read_bytes()
    pinned.write_bytes((pair.root / "client-cache" / "node-keys" / "prison.pem").read_bytes())
    try:
        with (
            Client(load_federation(pair.federation_file)) as client,
            pytest.raises(NodeError) as info,
        ):
            client.catalogue("police")
    finally:
        pinned.write_bytes(original)
    message = str(info.value)
    address = f"127.0.0.1:{pair.ports['police']}"
    assert address in message and message.index(address) < message.index("replace"), message
