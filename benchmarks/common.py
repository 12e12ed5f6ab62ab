"""Shared plumbing for benchmark scripts: timing, peak memory, and a results file plus table."""

from __future__ import annotations

import json
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

    def intercept_stream_stream(self, continuation, details, requests):
        requests = self._messages(self.sent, details.method, requests)
        return self._messages(self.received, details.method, continuation(details, requests))
