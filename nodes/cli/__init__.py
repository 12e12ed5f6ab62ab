"""The ``psi`` command line; each subcommand lives in ``nodes.cli.<name>``.

A user mistake (``KinlinkError``) prints one clear line and exits 2; never a traceback. Every
file a command writes is owner-only (0600, folders 0700), whatever the umask it was started with
(``nodes.shared.atrest.private_files``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from nodes.shared.atrest import private_files
from psi.errors import KinlinkError

# gRPC's C core logs handshake failures and the like to stderr at INFO; it reads this only when
# it loads, so it is set before any subcommand imports grpc. Set GRPC_VERBOSITY to see them.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

COMMANDS = (
    "synth",
    "certs",
    "node",
    "query",
    "stats",
    "demo",
    "screen",
    "audit",
    "catalog",
    "disputes",
)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="psi",
        description="kinlink: privacy-preserving federated matching between departments.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"nodes.cli.{name}").register(sub)
    return parser


def _version() -> str:
    try:
        return version("kinlink")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    private_files()
    try:
        return int(args.func(args) or 0)
    except KinlinkError as exc:
        print(f"psi {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"psi {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
