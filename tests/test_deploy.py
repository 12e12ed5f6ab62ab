"""The deployment files in nodes/department/deploy, checked as far as the machine allows: the
systemd unit by ``systemd-analyze verify`` (no warning) and its offline security exposure, the
container image definition by its paths and, where a Docker daemon runs, a real build; and the
commands both run are ones ``psi`` accepts."""

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from nodes.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "nodes" / "department" / "deploy"
UNIT = DEPLOY / "kinlink-node@.service"
CONTAINERFILE = DEPLOY / "Containerfile"
INSTALLED_PSI = "/opt/kinlink/bin/psi"
MAX_EXPOSURE = 2.5  # systemd-analyze security: 0 (locked down) to 10 (exposed)


def unit_commands() -> list[list[str]]:
    """The unit's ExecStartPre and ExecStart commands, for the instance ``prison``."""
    lines = re.findall(r"^ExecStart(?:Pre)?=(.+)$", UNIT.read_text(encoding="utf-8"), re.M)
    return [shlex.split(line.replace("%i", "prison")) for line in lines]


def container_command() -> list[str]:
    text = CONTAINERFILE.read_text(encoding="utf-8")
    entry = re.search(r"^ENTRYPOINT (\[.+\])$", text, re.M)
    command = re.search(r"^CMD (\[.+\])$", text, re.M)
    assert entry and command, "ENTRYPOINT and CMD in exec form"
    return [*json.loads(entry[1]), *json.loads(command[1])]


@pytest.mark.parametrize(
    "command", [*unit_commands(), container_command()], ids=lambda c: " ".join(c[1:3])
)
def test_the_commands_are_ones_psi_accepts(command):
    assert Path(command[0]).name == "psi"
    args = build_parser().parse_args(command[1:])
    assert args.command == "node" and args.config.name == "node.toml"


@pytest.fixture
def instance(tmp_path):
    """The unit as an instance file whose commands point at this environment's psi."""
    psi = Path(sys.executable).with_name("psi")
    if not psi.exists():
        pytest.skip("psi is not installed beside this Python")
    unit = tmp_path / "kinlink-node@prison.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(INSTALLED_PSI, str(psi)))
    return unit


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_the_systemd_unit_verifies_without_a_warning(instance):
    run = subprocess.run(
        ["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_the_systemd_unit_is_locked_down(instance):
    run = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in run.stderr:
        pytest.skip("this systemd-analyze cannot judge a unit offline")
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", run.stdout + run.stderr)
    assert level, run.stdout + run.stderr
    assert float(level[1]) <= MAX_EXPOSURE, run.stdout


def test_the_containerfile_copies_what_exists_on_a_supported_python():
    text = CONTAINERFILE.read_text(encoding="utf-8")
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    least = tuple(map(int, project["requires-python"].removeprefix(">=").split(".")))
    for version in re.findall(r"^FROM python:(\d+\.\d+)", text, re.M):
        assert tuple(map(int, version.split("."))) >= least


def _docker_runs() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not _docker_runs(), reason="no Docker daemon runs here")
def test_the_image_builds_and_its_psi_runs():
    tag = "kinlink-node:test"
    build = subprocess.run(
        ["docker", "build", "-f", str(CONTAINERFILE), "-t", tag, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run(
        ["docker", "run", "--rm", tag, "check", "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0 and "passphrase" in run.stdout, run.stderr
