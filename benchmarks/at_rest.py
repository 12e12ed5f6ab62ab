"""What sealing and authenticating state at rest costs: ``psi node build``, a query with an empty
client cache and its rerun from the cache, for this tree and a baseline commit, interleaved
(baseline, this, this, baseline...) on the same data so that a shared machine's noise falls on
both; medians are reported.

    python -m benchmarks.at_rest [--baseline main] [--this HEAD] [--size 100000] [--rounds 2]

Each side runs in a child process whose imports (and node processes) come from its own tree, a
``git archive`` of its commit in a temporary folder (commit what you measure). Target: at most 5%
more than the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import load, report

DEPARTMENT = "prison"
TARGET = 1.05


def child(size: int, overlap: float, data: Path, work: Path) -> dict:
    """One side's run, in the tree on ``PYTHONPATH``: build, query, rerun, in wall seconds and
    in CPU seconds (the build's process; the client's and the node's), which a busy machine
    disturbs less."""
    from benchmarks.common import cpu_seconds
    from benchmarks.data import overlapping
    from nodes.client.client import Client
    from nodes.demo.federation import LocalFederation
    from nodes.shared.config import load_federation

    roster, register = overlapping(size, overlap)
    shared = len(set(roster) & set(register))
    with LocalFederation(work, {DEPARTMENT: data}) as fed:
        fed.setup()
        config = str(fed.config_file(DEPARTMENT))
        start, cpu = time.perf_counter(), children_cpu()
        subprocess.run(
            [sys.executable, "-m", "nodes.cli", "node", "build", "--config", config],
            env=fed.env(),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seconds = {"build": time.perf_counter() - start, "build_cpu": children_cpu() - cpu}
        fed.start()
        node = fed.processes[DEPARTMENT].pid
        for name in ("query", "rerun"):
            with Client(load_federation(fed.federation_file)) as client:
                start, cpu = time.perf_counter(), cpu_seconds() + cpu_seconds(node)
                result = client.query(DEPARTMENT, DEPARTMENT, roster, purpose="screening")
                found = len(result.matches)
                seconds[name] = time.perf_counter() - start
                seconds[f"{name}_cpu"] = cpu_seconds() + cpu_seconds(node) - cpu
            assert found == shared, f"{name}: {found} matches, expected {shared}"
    return seconds


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def extract(repository: Path, rev: str, folder: Path) -> Path:
    """The tree of ``rev`` in ``folder``."""
    folder.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(repository), "archive", rev], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def run_side(tree: Path, args: argparse.Namespace, data: Path, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, __file__, "--child", str(data), str(work), "--size", str(args.size)]
    done = subprocess.run(command, env=env, cwd=tree, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="main", help="commit to compare with")
    parser.add_argument("--this", default="HEAD", help="commit measured")
    parser.add_argument("--size", type=int, default=100_000, help="roster and register size")
    parser.add_argument("--overlap", type=float, default=0.5, help="fraction shared")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, interleaved")
    parser.add_argument("--out", type=Path, help="results file (JSON)")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.size, args.overlap, *args.child)))
        return

    from benchmarks.data import overlapping, register_rows, write_register

    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="kinlink-at-rest-") as folder:
        root = Path(folder)
        trees = {
            name: extract(here, rev, root / name)
            for name, rev in (("baseline", args.baseline), ("this", args.this))
        }
        data = write_register(root / f"{DEPARTMENT}.csv", register_rows(overlapping(args.size)[1]))
        sides: dict[str, list[dict]] = {"baseline": [], "this": []}
        loads = [load()]
        for i in range(args.rounds):  # ABBA: neither side always runs second
            for name, tree in list(trees.items())[:: 1 if i % 2 == 0 else -1]:
                sides[name].append(run_side(tree, args, data, root / f"{name}-{i}"))
                loads.append(load())
    medians = {
        name: {step: statistics.median(r[step] for r in runs) for step in runs[0]}
        for name, runs in sides.items()
    }
    ratios = {step: medians["this"][step] / medians["baseline"][step] for step in medians["this"]}
    results = {
        "baseline": args.baseline,
        "this": subprocess.run(
            ["git", "rev-parse", args.this], capture_output=True, text=True, cwd=here
        ).stdout.strip(),
        "size": args.size,
        "rounds": args.rounds,
        "runs": sides,
        "medians_seconds": medians,
        "ratio": ratios,
        "within_target": {step: ratio <= TARGET for step, ratio in ratios.items()},
        "load_average": loads,
    }
    rows = [("step (wall or CPU)", "baseline (s)", "this (s)", "ratio")]
    rows += [
        (step, f"{medians['baseline'][step]:.2f}", f"{medians['this'][step]:.2f}", f"{r:.3f}")
        for step, r in ratios.items()
    ]
    report(f"at_rest_{args.size}", results, rows, args.out)


if __name__ == "__main__":
    main()
