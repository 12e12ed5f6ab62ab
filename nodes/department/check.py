"""``psi node check``: everything a node needs before it serves, checked without serving.

A department runs it after editing ``node.toml``, renewing a certificate or moving the register:
the configuration, the certificate against the node's name, the listening addresses, each
register (readable, columns mapped, the statuses it holds against those the dataset declares),
the grants, and the key ring passphrase. Each problem is one line that names what to fix; nothing
is written, and no identity number is printed (rejected rows are counted, not shown).
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nodes.department.budgets import unlimited
from nodes.department.state import NodeState
from nodes.shared.certs import Role, party_problems
from nodes.shared.config import DatasetConfig, NodeConfig, load_node_config
from psi.errors import InputError, KinlinkError
from psi.keys import PASSPHRASE_VAR, KeyRing


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a host and a port number, or InputError."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InputError(f"{address!r} is not HOST:PORT with a port from 0 to 65535")
    return host.strip("[]"), int(port)


@dataclass
class Findings:
    """What ``check_node`` found: problems (the node would misbehave; exit 2) and notes."""

    config: NodeConfig | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_node(path: Path, passphrase: bytes | None) -> Findings:
    """Every problem of the node configured in ``path``; stops early only if it does not load."""
    try:
        config = load_node_config(path)
    except KinlinkError as exc:
        return Findings(problems=[str(exc)])
    found = Findings(config)
    found.notes += [warning for *_, warning in unlimited(config)]
    found.problems += [
        *_certificate(config),
        *_addresses(config),
        *_grants(config),
        *_passphrase(config, passphrase, found.notes),
    ]
    state = NodeState(config, passphrase or b"")
    for dataset in config.datasets.values():
        found.problems += [f"dataset {dataset.id}: {p}" for p in _register(state, dataset, found)]
    return found


def _certificate(config: NodeConfig) -> list[str]:
    try:
        ca, cert, key = config.tls.read()
    except InputError as exc:
        return [f"node.tls: {exc}"]
    problems = party_problems(ca, cert, key, config.id, Role.NODE)
    return [f"node.tls {config.tls.cert}: {p}" for p in problems]


def _addresses(config: NodeConfig) -> Iterator[str]:
    addresses = {"listen": config.listen, "metrics": config.metrics}
    bound: dict[tuple[str, int], str] = {}
    for key, address in addresses.items():
        if address is None:
            continue
        try:
            host, port = split_address(address)
        except InputError as exc:
            yield f"node.{key}: {exc}"
            continue
        if port and (host, port) in bound:
            yield f"node.{key}: {address} is also node.{bound[host, port]}"
            continue
        bound[host, port] = key
        problem = bindable(host, port)
        if problem:
            yield f"node.{key} {address}: {problem}"


def bindable(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now, or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host!r}: {exc.strerror}"
    family, kind, proto, _, where = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(where)
        except OSError as exc:
            hint = " (is the node already running?)" if exc.errno == 98 else ""
            return f"cannot listen: {exc.strerror}{hint}"
    return None


def _grants(config: NodeConfig) -> Iterator[str]:
    for index, grant in enumerate(config.grants):
        for name in grant.datasets:
            problem = config.datasets[name].unservable(grant.purposes)
            if problem:
                yield f"grants[{index}] ({grant.client}): {problem}"


def _passphrase(config: NodeConfig, passphrase: bytes | None, notes: list[str]) -> Iterator[str]:
    if not passphrase:
        yield f"set the key ring passphrase in the environment variable {PASSPHRASE_VAR}"
        return
    ring = config.state / "keyring.kin"
    if ring.exists():
        try:
            KeyRing.load(ring, passphrase)
        except KinlinkError as exc:
            yield str(exc)
    elif config.state.exists() and not os.access(config.state, os.W_OK):
        yield f"node.state {config.state}: not writable, so `psi node build` cannot create it"
    else:
        notes.append(f"no key ring in {config.state} yet: `psi node build` creates it")


def _register(state: NodeState, dataset: DatasetConfig, found: Findings) -> Iterator[str]:
    try:
        register = state.read_register(dataset)
    except KinlinkError as exc:
        yield str(exc)
        return
    held = Counter(e.record.status for entries in register.people.values() for e in entries)
    undeclared = register.undeclared
    if undeclared:
        listed = ", ".join(f"{status} ({rows} rows)" for status, rows in undeclared.most_common())
        yield (
            f"the register holds statuses the dataset does not declare: {listed}; they are "
            f"left out of its tables (declared: {', '.join(dataset.statuses)})"
        )
    absent = [s for s in dataset.statuses if not held[s]]
    if absent:
        yield (
            f"declares {', '.join(absent)} but the register holds none: clients would read "
            "no match as not having that status"
        )
    bad = len(register.rejects) - sum(undeclared.values())
    found.notes.append(
        f"dataset {dataset.id}: {len(register.people)} people, {sum(held.values())} records"
        + (f"; {bad} malformed rows (`psi node build` lists them in rejects.csv)" if bad else "")
    )
