"""Regenerate the Python code of the .proto files, or check that the committed code is current.

    python -m protocols.generate          # rewrite protocols/**/*_pb2*.py(i) from the .proto files
    python -m protocols.generate --check  # exit 1 listing generated files that are out of date

The repository root is the proto path root: ``protocols/kinlink/v1/psi.proto`` is compiled under
that name, so generated imports read ``from protocols.kinlink.v1 import psi_pb2`` and resolve the
same from a source checkout and from an installed package. The output depends only on the .proto
files and the grpcio-tools version (which fixes the protobuf and grpcio versions the code needs at
run time), so pyproject.toml pins grpcio-tools and this command refuses any other version.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import tomllib
from importlib import metadata, resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protocols"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

Files = dict[Path, bytes]  # path relative to ROOT -> content


def pinned_tools_version() -> str | None:
    """The grpcio-tools version pyproject.toml pins, or None outside a source checkout."""
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        return None
    extras = tomllib.loads(pyproject.read_text())["project"].get("optional-dependencies", {})
    for requirement in (r.replace(" ", "") for reqs in extras.values() for r in reqs):
        if requirement.startswith("grpcio-tools=="):
            return requirement.removeprefix("grpcio-tools==")
    return None


def generate() -> Files:
    """Compile every .proto under protocols/ into a scratch directory and return the output."""
    protos = sorted(PROTO_DIR.rglob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as scratch:
        args = [
            "grpc_tools.protoc",
            f"--proto_path={ROOT}",
            f"--proto_path={well_known}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *map(str, protos),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; its messages are above")
        out = Path(scratch)
        return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def committed() -> Files:
    """The generated files currently in the tree."""
    return {
        p.relative_to(ROOT): p.read_bytes()
        for p in sorted(PROTO_DIR.rglob("*"))
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def stale(fresh: Files, current: Files) -> list[Path]:
    """Files that differ, are missing, or are left over from a deleted .proto."""
    return sorted(p for p in fresh.keys() | current.keys() if fresh.get(p) != current.get(p))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocols.generate", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if generated code is stale"
    )
    args = parser.parse_args(argv)

    installed, pinned = metadata.version("grpcio-tools"), pinned_tools_version()
    if pinned and installed != pinned:
        print(
            f"grpcio-tools {installed} is installed but pyproject.toml pins {pinned}, and the "
            f"generated code depends on it: pip install 'grpcio-tools=={pinned}'",
            file=sys.stderr,
        )
        return 2

    fresh, current = generate(), committed()
    outdated = stale(fresh, current)
    if args.check:
        for path in outdated:
            print(f"stale: {path}", file=sys.stderr)
        if outdated:
            print("regenerate with: python -m protocols.generate", file=sys.stderr)
        return 1 if outdated else 0
    for path in outdated:
        target = ROOT / path
        if path in fresh:
            target.write_bytes(fresh[path])
            print(f"wrote {path}")
        else:
            target.unlink()
            print(f"removed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
