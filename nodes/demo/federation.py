"""A whole federation on one machine: certificates, one node process per department on loopback,
and civil affairs' federation file. Used by ``psi demo``, the tests and the benchmarks; the nodes
are the real ``psi node serve`` processes an operator runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nodes.demo.synth import DEPARTMENTS
from nodes.department.state import BuildReport, NodeState
from nodes.shared.certs import init_federation
from nodes.shared.config import (
    SHARED_BLINDS,
    STATISTICS_PURPOSE,
    UNLIMITED,
    Limits,
    StatisticsPolicy,
    load_node_config,
)
from psi.errors import KinlinkError
from psi.labels import FIELDS, STATUS_CODES
from psi.oprf import Oprf
from psi.stats import PROTOCOLS

CLIENT = "civil-affairs"
ROLL = "civil-affairs-roll"  # civil affairs' own node: its roll, queried by education and others
ROLL_STATUSES = ("orphan", "de_facto_unattended")
PURPOSES = ("screening", "verification")
DEMO_PASSPHRASE = "kinlink demo passphrase, not for production"
START_TIMEOUT = 60.0
# The prison opts into every statistic for civil affairs, under the purpose "statistics".
DEMO_STATISTICS = {"prison": StatisticsPolicy(PROTOCOLS, (STATISTICS_PURPOSE,))}
_UNLIMITED_TOML = f'"{UNLIMITED}"'


def demo_limits(parents: int) -> Limits:
    """Budgets that fit a demo roster of ``parents`` distinct parents, not a county: a session
    asks about them all with a quarter to spare, a day holds the demo's runs (the query, the
    statistics, the screening) and a rerun, an epoch twelve such days."""
    session = parents + parents // 4 + 1
    return Limits(per_session=session, per_day=4 * session, per_epoch=48 * session)


def _toml_list(values) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def node_toml(
    department: str,
    register: Path,
    *,
    limits: Limits,
    fields: Mapping[str, Iterable[str]] | None = None,
    clients: tuple[str, ...] = (CLIENT,),
    statistics: StatisticsPolicy | None = None,
) -> str:
    """A node.toml granting each of ``clients`` the dataset with its ``fields`` (default: all
    label fields)."""
    fields = fields or {}
    statuses = {**DEPARTMENTS, ROLL: ROLL_STATUSES}.get(department, tuple(STATUS_CODES))
    budget = "".join(
        f"{name} = {_UNLIMITED_TOML if value is None else value}\n"
        for name, value in vars(limits).items()
    )
    purposes = (*PURPOSES, *statistics.purposes) if statistics else PURPOSES
    grants = "".join(
        f'\n[[grants]]\nclient = "{client}"\ndatasets = ["{department}"]\n'
        f"purposes = {_toml_list(purposes)}\n"
        f"fields = {_toml_list(sorted(fields.get(client, FIELDS)))}\n{budget}"
        for client in clients
    )
    offer = (
        f"\n[datasets.{department}.statistics]\nprotocols = {_toml_list(statistics.protocols)}\n"
        f"purposes = {_toml_list(statistics.purposes)}\nmin_elements = {statistics.min_elements}\n"
        f"max_groups = {statistics.max_groups}\nmin_key_bits = {statistics.min_key_bits}\n"
        if statistics
        else ""
    )
    return (
        f'[node]\nid = "{department}"\nlisten = "127.0.0.1:0"\nstate = "state"\n'
        f'tls = {{ ca = "../certs/ca.pem", cert = "../certs/{department}.pem", '
        f'key = "../certs/{department}-key.pem" }}\n\n'
        f"[datasets.{department}]\n"
        f'title = "{department} register (demo)"\ncsv = "{register.resolve()}"\n'
        f"statuses = {_toml_list(statuses)}\n"
        f'legal_basis = "Inner Mongolia notice on the information-sharing and data-comparison '
        f'mechanism for orphans and de facto unattended children"\n'
        f'update_frequency = "P1M"\nresponsible_unit = "{department} data office"\n{offer}{grants}'
    )


@dataclass
class LocalFederation:
    """Nodes for ``registers`` (department -> CSV) under ``root``; a context manager that stops
    every node process on exit, whatever happened."""

    root: Path
    registers: Mapping[str, Path]
    limits: Limits = field(default_factory=Limits)  # the node's defaults unless given
    passphrase: str = DEMO_PASSPHRASE
    clients: tuple[str, ...] = (CLIENT,)
    fields: Mapping[str, Iterable[str]] = field(default_factory=dict)  # client -> label fields
    statistics: Mapping[str, StatisticsPolicy] = field(default_factory=lambda: DEMO_STATISTICS)
    blinds: str = SHARED_BLINDS  # the clients' federation files' [client] blinds
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def federation_file(self) -> Path:
        return self.root / "federation.toml"

    def config_file(self, department: str) -> Path:
        return self.root / department / "node.toml"

    def setup(self) -> None:
        init_federation(self.certs, list(self.registers), list(self.clients), force=True)
        for department, register in self.registers.items():
            self.config_file(department).parent.mkdir(parents=True, exist_ok=True)
            self.config_file(department).write_text(
                node_toml(
                    department,
                    register,
                    limits=self.limits,
                    fields=self.fields,
                    clients=self.clients,
                    statistics=self.statistics.get(department),
                ),
                encoding="utf-8",
            )

    def build(self, oprf: Oprf | None = None) -> dict[str, list[BuildReport]]:
        """Build every node's tables (as ``psi node build`` does, in this process)."""
        reports = {}
        for department in self.registers:
            config = load_node_config(self.config_file(department))
            state = NodeState(config, self.passphrase.encode(), oprf)
            reports[department] = state.build(department)
        return reports

    def env(self) -> dict[str, str]:
        return {**os.environ, "KINLINK_KEY_PASSPHRASE": self.passphrase}

    def start(self) -> None:
        """One ``psi node serve`` process per department; returns once all listen."""
        for department in self.registers:
            port_file = self.root / department / "port"
            port_file.unlink(missing_ok=True)
            # stderr to a file, not a pipe nobody drains while the node runs (it would block)
            with open(self.stderr_file(department), "wb") as stderr:
                self.processes[department] = subprocess.Popen(
                    [
                        *(sys.executable, "-m", "nodes.cli", "node", "serve"),
                        *("--config", str(self.config_file(department))),
                        *("--port-file", str(port_file)),
                    ],
                    env=self.env(),
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
        deadline = time.monotonic() + START_TIMEOUT
        for department, process in self.processes.items():
            port_file = self.root / department / "port"
            while not (port_file.exists() and port_file.read_text().strip()):
                if process.poll() is not None:
                    error = self.stderr_file(department).read_text(errors="replace").strip()
                    raise KinlinkError(f"node {department} did not start: {error}")
                if time.monotonic() > deadline:
                    raise KinlinkError(f"node {department} did not start in {START_TIMEOUT} s")
                time.sleep(0.05)
            self.ports[department] = int(port_file.read_text())
        for client in self.clients:
            self.federation_file_of(client).write_text(
                self.federation_toml(client), encoding="utf-8"
            )

    def stderr_file(self, department: str) -> Path:
        """Where the node process's stderr (its log lines) goes."""
        return self.root / department / "serve.err"

    def federation_file_of(self, client: str) -> Path:
        """The federation file of one client (civil affairs' is ``federation_file``)."""
        return self.federation_file if client == CLIENT else self.root / f"federation-{client}.toml"

    def federation_toml(self, client: str = CLIENT) -> str:
        nodes = "".join(
            f'\n[nodes.{d}]\naddress = "127.0.0.1:{p}"\n' for d, p in self.ports.items()
        )
        cache = "client-cache" if client == CLIENT else f"client-cache-{client}"
        return (
            f'[client]\nid = "{client}"\ncache = "{cache}"\nblinds = "{self.blinds}"\n'
            f'tls = {{ ca = "certs/ca.pem", cert = "certs/{client}.pem", '
            f'key = "certs/{client}-key.pem" }}\n{nodes}'
        )

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
