"""What serving Prometheus metrics costs a node: the same query against ``psi node serve`` with
``[node] metrics`` unset and set, interleaved (off, on, off, on, ...), each with a fresh client
cache so every identifier is evaluated.

    python -m benchmarks.node_metrics [--size 20000] [--rounds 3]

The figure that matters is the node process's CPU seconds per query (from /proc, so other
processes on a shared machine do not count), with the query's wall time beside it; medians per
mode. The metrics are scraped once after each "on" query, as Prometheus would. Results go to
``node_metrics_<size>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.common import RESULTS, cpu_seconds, load, report
from benchmarks.data import overlapping, register_rows, write_register
from nodes.client.client import Client
from nodes.demo.federation import LocalFederation
from nodes.shared.config import load_federation

DEPARTMENT = "prison"
MODES = ("off", "on")


def serve(fed: LocalFederation, config: Path) -> tuple[subprocess.Popen, int, int | None]:
    """A node process on ``config``: the process, its port and its metrics port (or None)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "nodes.cli", "node", "serve", "--config", str(config), "-q"],
        env=fed.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    found = re.search(r"on port (\d+)(?:; metrics on port (\d+))?", process.stdout.readline())
    assert found, "the node did not start"
    return process, int(found[1]), int(found[2]) if found[2] else None


def one_query(fed: LocalFederation, config: Path, roster: list[str], cache: Path) -> dict:
    process, port, metrics = serve(fed, config)
    try:
        fed.ports[DEPARTMENT] = port
        fed.federation_file.write_text(fed.federation_toml(), encoding="utf-8")
        federation = dataclasses.replace(load_federation(fed.federation_file), cache=cache)
        before = cpu_seconds(process.pid)
        with Client(federation) as client:
            start = time.perf_counter()
            result = client.query(DEPARTMENT, DEPARTMENT, roster, purpose="screening")
            wall = time.perf_counter() - start
        if metrics:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=30) as page:
                page.read()
        node_cpu = cpu_seconds(process.pid) - before
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert result.evaluated == len(roster), "the client cache was not empty"
    return {"wall": wall, "node_cpu": node_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=20_000, help="roster and register size")
    parser.add_argument("--rounds", type=int, default=3, help="queries per mode, interleaved")
    parser.add_argument("--out", type=Path, help="results file (JSON)")
    args = parser.parse_args()
    roster, register = overlapping(args.size)
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    loads = [load()]
    with tempfile.TemporaryDirectory(prefix="kinlink-bench-") as folder:
        root = Path(folder)
        csv = write_register(root / f"{DEPARTMENT}.csv", register_rows(register))
        with LocalFederation(root, {DEPARTMENT: csv}) as fed:
            fed.setup()
            fed.build()
            base = fed.config_file(DEPARTMENT)
            configs = {"off": base, "on": base.with_name("metrics.toml")}
            configs["on"].write_text(
                base.read_text(encoding="utf-8").replace(
                    'state = "state"\n', 'state = "state"\nmetrics = "127.0.0.1:0"\n'
                ),
                encoding="utf-8",
            )
            for round_ in range(args.rounds):
                for mode in MODES:
                    cache = root / f"cache-{mode}-{round_}"
                    runs[mode].append(one_query(fed, configs[mode], roster, cache))
                    print(mode, runs[mode][-1], flush=True)
    loads.append(load())
    medians = {
        mode: {k: statistics.median(r[k] for r in runs[mode]) for k in ("wall", "node_cpu")}
        for mode in MODES
    }
    rows = [("metrics", "node CPU s (median)", "query wall s (median)")]
    rows += [(m, f"{medians[m]['node_cpu']:.2f}", f"{medians[m]['wall']:.2f}") for m in MODES]
    report(
        f"node_metrics_{args.size}",
        {"size": args.size, "runs": runs, "medians": medians, "load": loads},
        rows,
        args.out or RESULTS / f"node_metrics_{args.size}.json",
    )


if __name__ == "__main__":
    main()
