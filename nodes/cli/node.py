"""``psi node check|build|serve|rotate|catalog|disputes``: what a department operator runs."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from nodes.cli import EXIT_USER_ERROR
from nodes.cli.node_admin import add_actions
from nodes.department.check import check_node
from nodes.department.server import start_node
from nodes.department.state import NodeState
from nodes.shared.config import load_node_config
from nodes.shared.logs import FORMATS, configure, level
from nodes.shared.progress import progress
from psi.errors import InputError
from psi.keys import PASSPHRASE_VAR, passphrase_from_env

log = logging.getLogger("kinlink.node")
NO_RELOAD = "SIGHUP: %s is not reloaded; restart the node to apply a change (still serving)"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("node", help="run a department node")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    env = f"the key ring passphrase is read from ${PASSPHRASE_VAR}"
    for name, helptext, func in (
        ("build", "(re)build the tables of the node's datasets for the current key epoch", build),
        ("serve", "serve the node's datasets over gRPC with mutual TLS", serve),
        ("rotate", "start a new key epoch (then rebuild)", rotate),
        ("check", "check the configuration, certificate, ports, registers and passphrase", check),
    ):
        action = actions.add_parser(name, help=helptext, description=f"{helptext}; {env}")
        action.add_argument("--config", type=Path, required=True, help="node.toml")
        action.set_defaults(func=func)
        if name in ("build", "rotate"):
            action.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
        if name == "serve":
            action.description += (
                "; node.toml and certificates are read at start: restart after changing them "
                "(approvals, dispute decisions, builds and rotations need no restart)"
            )
            action.add_argument(
                "--port-file",
                type=Path,
                help="write the port actually bound here (for node.toml's listen = HOST:0)",
            )
            action.add_argument(
                "-v", "--verbose", action="count", default=0, help="log more (repeatable)"
            )
            action.add_argument("-q", "--quiet", action="count", default=0, help="log less")
            action.add_argument(
                "--log-format", choices=FORMATS, default="text", help="log lines (default text)"
            )
    add_actions(actions)  # catalog, disputes: nodes/cli/node_admin.py


def _datasets(state: NodeState, chosen: list[str] | None) -> list[str]:
    for name in chosen or []:
        if name not in state.config.datasets:
            raise InputError(
                f"no dataset {name!r} in {state.config.path}; "
                f"it has: {', '.join(state.config.datasets)}"
            )
    return chosen or list(state.config.datasets)


def build(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    state = NodeState(config, passphrase_from_env())
    for dataset in _datasets(state, args.dataset):
        register_rows = state.read_register(config.datasets[dataset])
        profiles = state.registry.profiles(config, dataset)  # each evaluates under its own key
        total = len(register_rows.people) * len(profiles)
        with progress(total, f"{dataset}: evaluating") as advance:
            reports = state.build(dataset, progress=advance)
        rejects = state.root / dataset / "rejects.csv"
        for r in reports:
            what = (
                f"version {r.version} published"
                if r.published
                else f"unchanged at version {r.version}"
            )
            print(
                f"{dataset} [{r.profile}] epoch {r.epoch}: {what}; {r.entries} entries, "
                f"{r.evaluated} evaluated, +{r.added} -{r.removed}"
            )
        retired = {r.retired for r in reports} - {None}
        if retired:
            print(f"{dataset}: key epoch {reports[0].epoch} started; epoch {retired.pop()} retired")
        if len(register_rows.rejects):
            print(f"{dataset}: {len(register_rows.rejects)} bad rows listed in {rejects}")
    return 0


def check(args: argparse.Namespace) -> int:
    """One line per problem, then a verdict; exit 2 on any problem."""
    found = check_node(args.config, os.environ.get(PASSPHRASE_VAR, "").encode() or None)
    for note in found.notes:
        print(f"note: {note}")
    for problem in found.problems:
        print(f"problem: {problem}")
    if found.problems:
        print(f"{args.config}: {len(found.problems)} problem(s)")
        return EXIT_USER_ERROR
    assert found.config is not None
    print(
        f"{args.config}: node {found.config.id} is ready to serve "
        f"{', '.join(found.config.datasets)}"
    )
    return 0


def rotate(args: argparse.Namespace) -> int:
    state = NodeState(load_node_config(args.config), passphrase_from_env())
    for dataset in _datasets(state, args.dataset):
        epoch = state.rotate(dataset)
        print(
            f"{dataset}: key epoch {epoch} prepared; epoch {epoch - 1} serves until "
            f"`psi node build --config {args.config}` publishes epoch {epoch}'s tables, "
            "then is retired"
        )
    return 0


def serve(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    config.state.mkdir(parents=True, exist_ok=True)
    configure(args.log_format, level(args.verbose, args.quiet), config.state / "node.log")
    node = start_node(config, passphrase_from_env())
    for warning in node.warnings:
        print(f"psi node serve: warning: {warning}", file=sys.stderr, flush=True)
    if args.port_file:
        args.port_file.write_text(f"{node.port}\n")
    metrics = f"; metrics on port {node.metrics_port}" if node.metrics_port else ""
    print(
        f"node {config.id} serving {', '.join(config.datasets)} on port {node.port}{metrics}",
        flush=True,
    )
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    # SIGHUP would end the node by default; it is no reload either, so say so and serve on.
    signal.signal(signal.SIGHUP, lambda *_: log.warning(NO_RELOAD, args.config))
    stopped.wait()
    print(f"node {config.id} stopping (grace {config.serve.stop_grace_seconds:g} s)", flush=True)
    node.stop()
    print(f"node {config.id} stopped", flush=True)
    return 0
