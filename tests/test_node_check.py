"""``psi node check`` as an operator runs it, in a subprocess: a sound node passes (exit 0), and
each thing that would make a node misbehave is one line naming it (exit 2), never a traceback and
never an identity number."""

import re
import socket
import subprocess
import sys
from datetime import date

import pytest

from nodes.demo.federation import DEMO_PASSPHRASE, node_toml
from nodes.demo.synth import generate_city, write_city
from nodes.shared.certs import Role, init_federation, issue
from nodes.shared.config import Limits
from psi.keys import PASSPHRASE_VAR

NODE = "prison"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    register = write_city(generate_city(children=150, as_of=date(2026, 11, 30), seed=17), root)
    init_federation(root / "certs", [NODE, "police"], ["civil-affairs"])
    return root, register[NODE]


def write_config(world, edit=lambda text: text, *, name="node.toml"):
    root, register = world
    text = node_toml(NODE, register, limits=Limits(100, 1000, 10000), statistics=None)
    text = text.replace('"../certs/', '"certs/')
    path = root / name
    path.write_text(edit(text), encoding="utf-8")
    return path


def check(path, passphrase=DEMO_PASSPHRASE):
    env = {PASSPHRASE_VAR: passphrase} if passphrase else {}
    run = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "node", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=60,
    )
    assert "Traceback" not in run.stderr + run.stdout
    assert not re.search(r"\d{17}[\dX]", run.stdout + run.stderr), "an identity number printed"
    return (
        run.returncode,
        [
            line[len("problem: ") :]
            for line in run.stdout.splitlines()
            if line.startswith("problem: ")
        ],
        run.stdout,
    )


def test_a_sound_node_passes(world):
    status, problems, out = check(write_config(world))
    assert (status, problems) == (0, []), out
    assert f"node {NODE} is ready to serve {NODE}" in out
    assert re.search(rf"note: dataset {NODE}: \d+ people, \d+ records", out)


def test_undeclared_statuses_are_named_with_their_rows(world):
    path = write_config(world, lambda t: t.replace('["imprisoned"]', '["deceased"]'))
    status, problems, _ = check(path)
    assert status == 2
    assert any(
        re.search(r"holds statuses the dataset does not declare: imprisoned \(\d+ rows\)", p)
        for p in problems
    ), problems
    assert any("declares deceased but the register holds none" in p for p in problems)


def test_a_certificate_of_another_node_is_named(world):
    path = write_config(world, lambda t: t.replace("certs/prison", "certs/police"))
    status, problems, _ = check(path)
    assert status == 2
    assert any("the certificate names 'police', not 'prison'" in p for p in problems), problems


def test_a_client_certificate_or_a_foreign_ca_is_named(world, tmp_path):
    path = write_config(world, lambda t: t.replace("certs/prison", "certs/civil-affairs"))
    _, problems, _ = check(path)
    assert any("is not for a node" in p for p in problems), problems
    init_federation(tmp_path / "other", [NODE], [])
    issue(tmp_path / "other", "spare", Role.CLIENT)
    foreign = write_config(
        world, lambda t: t.replace('"certs/prison', f'"{tmp_path}/other/prison'), name="f.toml"
    )
    _, problems, _ = check(foreign)
    assert any("not signed by the federation CA" in p for p in problems), problems


def test_a_port_in_use_and_a_bad_address_are_named(world):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(
            world,
            lambda t: t.replace(
                'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"\nmetrics = "localhost"'
            ),
        )
        status, problems, _ = check(path)
    assert status == 2
    assert any(f"node.listen 127.0.0.1:{port}: cannot listen" in p for p in problems), problems
    assert any("node.metrics: 'localhost' is not HOST:PORT" in p for p in problems), problems


def test_a_missing_passphrase_a_wrong_one_and_a_missing_register(world, tmp_path):
    path = write_config(world)
    _, problems, _ = check(path, passphrase=None)
    assert any(PASSPHRASE_VAR in p for p in problems), problems
    built = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "node", "build", "--config", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", PASSPHRASE_VAR: DEMO_PASSPHRASE},
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    _, problems, _ = check(path, passphrase="not the passphrase")
    assert any("wrong passphrase" in p for p in problems), problems
    gone = write_config(
        world, lambda t: re.sub(r'csv = ".*"', f'csv = "{tmp_path}/none.csv"', t), name="g.toml"
    )
    status, problems, _ = check(gone)
    assert status == 2 and any("none.csv" in p and "cannot read" in p for p in problems)


def test_a_config_that_does_not_load_is_one_line(world):
    status, problems, out = check(write_config(world, lambda t: t.replace("csv =", "cvs =")))
    assert status == 2 and len(problems) == 1, out
    assert "cvs: unknown key; did you mean csv?" in problems[0]
