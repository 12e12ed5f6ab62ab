"""Shared plumbing for benchmark scripts: timing, peak memory, CPU taken by other processes (the
machine is shared), and a results file plus table."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from psi.oprf import cpu_count

RESULTS = Path(__file__).parent / "results"
GRPC_PREFIX = 5  # compressed flag and length in front of every gRPC message


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU seconds of this process (all threads) or of a live process."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy so far, all processes, steal included
    (/proc/stat; 0 where there is none)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:  # pragma: no cover - not Linux
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in first[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def load() -> dict[str, float]:
    """Load averages (1, 5, 15 min) now."""
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


class Interference:
    """Wall time of a block and the CPU that *other* processes took meanwhile, in cores (machine
    busy time less this process's and ``pids``'). On a shared machine a measurement with others
    busy beside it says little about the code; callers keep samples below a threshold.

    /proc/stat counts in ticks of 10 ms, so blocks should last a good fraction of a second."""

    def __init__(self, pids: tuple[int, ...] = ()) -> None:
        self.pids = pids
        self.wall = self.others = 0.0

    def _own(self) -> float:
        return cpu_seconds() + sum(cpu_seconds(pid) for pid in self.pids)

    def __enter__(self) -> Interference:
        self._busy, self._mine = busy_cpu_seconds(), self._own()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._start
        others = (busy_cpu_seconds() - self._busy) - (self._own() - self._mine)
        self.others = max(0.0, others) / self.wall if self.wall > 0 else 0.0


def busy_others(seconds: float = 1.0) -> float:
    """Cores other processes keep busy, measured over ``seconds`` of this process sleeping."""
    with Interference() as probe:
        time.sleep(seconds)
    return probe.others


def wait_until_quiet(
    threshold: float = 0.15, patience: float = 900.0, probe_seconds: float = 2.0
) -> dict[str, Any]:
    """Wait until other processes use less than ``threshold`` cores (probed over
    ``probe_seconds``), at most ``patience`` seconds; says how long it waited and what it saw."""
    start = time.monotonic()
    while True:
        others = busy_others(probe_seconds)
        waited = time.monotonic() - start
        if others < threshold or waited >= patience:
            return {
                "threshold_cores": threshold,
                "others_cores": round(others, 3),
                "waited_s": round(waited),
                "quiet": others < threshold,
            }
        print(f"others use {others:.2f} cores: waiting ({waited:.0f} s so far)", flush=True)
        time.sleep(max(0.0, 5.0 - probe_seconds))


def machine() -> dict[str, Any]:
    return {
        "cores": cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def report(name: str, results: dict[str, Any], rows: list[tuple[str, ...]], out: Path | None):
    """Write ``results`` as JSON (default ``benchmarks/results/<name>.json``) and print ``rows``."""
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2) + "\n")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\nresults written to {path}")


class WireCounter(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Bytes of every message sent and received, per RPC method."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()

    def _messages(self, counter: Counter[str], method: str, messages):
        for message in messages:
            counter[method.rsplit("/", 1)[-1]] += message.ByteSize() + GRPC_PREFIX
            yield message

    def intercept_unary_unary(self, continuation, details, request):
        list(self._messages(self.sent, details.method, [request]))
        outcome = continuation(details, request)
        if outcome.exception() is None:
            list(self._messages(self.received, details.method, [outcome.result()]))
        return outcome

    def intercept_unary_stream(self, continuation, details, request):
        list(self._messages(self.sent, details.method, [request]))
        return self._messages(self.received, details.method, continuation(details, request))

    def intercept_stream_unary(self, continuation, details, requests):
        outcome = continuation(details, self._messages(self.sent, details.method, requests))
        if outcome.exception() is None:
            list(self._messages(self.received, details.method, [outcome.result()]))
        return outcome

    def intercept_stream_stream(self, continuation, details, requests):
        requests = self._messages(self.sent, details.method, requests)
        return self._messages(self.received, details.method, continuation(details, requests))
