"""In-process labelled match against OpenMined's PSI on the same sets, in the same run.

    python -m benchmarks.labelled_match [--size 100000] [--repeat 2] [--out FILE]

Target (issue 2): kinlink at least 2x faster than OpenMined (ratio openmined / kinlink >= 2), with
equal intersections.

**What is timed.** Both sides run the whole protocol, offline and online steps, in this process,
on the same roster (the client's set) and register (the server's set), ``--size`` each, half shared:

========================  ==========================  =====================================
kinlink step              OpenMined step              work per element, both sides
========================  ==========================  =====================================
department_evaluate       server_setup                hash-to-group, k·H(y) (kinlink: and
                                                      the SHA-512 of Finalize); OpenMined
                                                      also sorts its setup message (RAW)
encode_labels             (none: no labels)           the label bytes, record handle (HMAC)
build_table               (in server_setup)           tag and key (SHA-512), one
                                                      ChaCha20-Poly1305 label, sort
blind                     client_request              hash-to-group, r·H(x)
blind_evaluate            server_process              k·B
finalize                  client_intersection         r⁻¹·Z (one batched inversion), SHA-512
match                     (in client_intersection)    tag, binary search, open the hit
decode                    (none)                      the matched labels into records
========================  ==========================  =====================================

So both do 4 scalar multiplications and 2 hash-to-group per element; kinlink also builds, opens
and decodes labels, which OpenMined's unlabelled PSI does not. Not timed on either side: key
generation, making the synthetic data, checking the results. OpenMined's library runs on one core
(its CPU seconds equal its wall seconds, recorded as ``cores_used``); kinlink spreads the
curve operations and the AEAD over all cores (``psi.oprf``, ``psi.table``). For the comparison at
equal hardware, ``--one-core`` (default on) adds a kinlink run pinned to one core
(``sched_setaffinity``), reported as ``one_core``; the target is the all-cores ratio, as the issue
asks for the library as it runs.

**Method on a shared machine.** Before each run the script waits (``--quiet``, ``--patience``)
until other processes use less than a threshold of CPU, measured from /proc/stat; every run records
the CPU others took while it ran (``others_cores``). The sides run alternately ``--repeat`` times;
the fastest *clean* run of each (others under ``--max-interference`` cores) counts, else the
fastest run, flagged ``noisy``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import private_set_intersection.python as openmined

from benchmarks.common import (
    Interference,
    cpu_seconds,
    load,
    peak_rss_mib,
    report,
    wait_until_quiet,
)
from benchmarks.data import labels, overlapping, register_rows
from nodes.department.build import key_info
from psi.labels import FIELDS, decode_label, record_handle
from psi.oprf import Oprf, cpu_count
from psi.table import build_table, match

DATASET = "prison"
FPR = 1e-9
ELEMENT_BYTES = 32  # a ristretto255 element, each way
DEPARTMENT = ("department_evaluate", "encode_labels", "build_table")


class Phases:
    """Wall time of named steps, in order, with this process's CPU seconds and the cores other
    processes kept busy meanwhile."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.others: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        cpu = cpu_seconds()
        with Interference() as probe:
            result = fn()
        self.seconds[name] = probe.wall
        self.cpu[name] = cpu_seconds() - cpu
        self.others[name] = probe.others
        return result

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    @property
    def cores_used(self) -> float:
        return sum(self.cpu.values()) / self.total if self.total else 0.0

    @property
    def others_cores(self) -> float:
        """Cores other processes used over the whole run (time-weighted)."""
        return sum(self.others[p] * s for p, s in self.seconds.items()) / self.total


def kinlink(roster: list[str], rows, oprf: Oprf) -> tuple[Phases, set[str], dict[str, Any]]:
    """Department build then client query; the ids found and what the run sent."""
    t = Phases()
    key = oprf.derive_key_pair(os.urandom(32), key_info(DATASET, 1, FIELDS))
    handle_key = os.urandom(32)
    # Department: its own register, then the table.
    register = [r.id_number.encode() for r in rows]
    outputs = t("department_evaluate", lambda: oprf.evaluate_batch(key.sk, register))
    encoded = t("encode_labels", lambda: labels(rows, handle_key))
    table = t(
        "build_table",
        lambda: build_table(DATASET, 1, 1, outputs, encoded, oprf.suite.name),
    )
    # Client and department online.
    inputs = [x.encode() for x in roster]
    blinds, blinded = t("blind", lambda: oprf.blind_batch(inputs))
    evaluated = t("blind_evaluate", lambda: oprf.blind_evaluate_batch(key.sk, blinded))
    mine = t("finalize", lambda: oprf.finalize_batch(inputs, blinds, evaluated))
    result = t("match", lambda: match(table, mine))
    decoded = t("decode", lambda: [(m.query, decode_label(m.label)) for m in result.matches])
    # Every label must be the register's record for that person.
    by_id = {r.id_number: r for r in rows}
    for query, label in decoded:
        row = by_id[roster[query]]
        expected = replace(row.record, handle=record_handle(handle_key, row.record_ref))
        assert label.records == (expected,), f"wrong label for roster row {query}"
    sizes = {
        "table_bytes": len(table.to_bytes()),
        "entries": len(table),
        "label_size": table.header.label_size,
        "false_hits": result.false_hits,
    }
    return t, {roster[q] for q, _ in decoded}, sizes


def openmined_psi(roster: list[str], register: list[str]) -> tuple[Phases, set[str], dict]:
    """OpenMined's PSI with a raw (sorted) server set, as its README's example."""
    t = Phases()
    server = openmined.server.CreateWithNewKey(True)
    client = openmined.client.CreateWithNewKey(True)
    setup = t(
        "server_setup",
        lambda: server.CreateSetupMessage(FPR, len(roster), register, openmined.DataStructure.RAW),
    )
    request = t("client_request", lambda: client.CreateRequest(roster))
    response = t("server_process", lambda: server.ProcessRequest(request))
    found = t("client_intersection", lambda: client.GetIntersection(setup, response))
    sizes = {
        "setup_bytes": setup.ByteSize(),
        "request_bytes": request.ByteSize(),
        "response_bytes": response.ByteSize(),
    }
    return t, {roster[i] for i in found}, sizes


def _best(runs: list[Phases], max_interference: float) -> tuple[Phases, bool]:
    """The fastest clean run, else the fastest; and whether it is clean."""
    clean = [run for run in runs if run.others_cores <= max_interference]
    return min(clean or runs, key=lambda run: run.total), bool(clean)


def _run_summary(run: Phases) -> dict[str, float]:
    return {
        "total": run.total,
        "cores_used": round(run.cores_used, 3),
        "others_cores": round(run.others_cores, 3),
    }


def one_core_kinlink(roster, rows, truth) -> Phases:
    """kinlink pinned to one core: every thread of this process, and those it starts, may run on
    that core only, and the batch paths see one core (``cpu_count`` follows the affinity)."""
    allowed = os.sched_getaffinity(0)
    threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    for tid in threads:
        os.sched_setaffinity(tid, {min(allowed)})
    try:
        run = kinlink(roster, rows, Oprf())
    finally:
        for tid in threads:
            os.sched_setaffinity(tid, allowed)
    assert run[1] == truth, "kinlink's intersection is wrong (one core)"
    return run[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=100_000, help="roster and register size")
    parser.add_argument("--overlap", type=float, default=0.5, help="fraction shared")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side; best counts")
    parser.add_argument(
        "--one-core",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run kinlink pinned to one core",
    )
    parser.add_argument(
        "--quiet", type=float, default=0.15, help="wait until others use fewer cores than this"
    )
    parser.add_argument("--patience", type=float, default=600, help="seconds to wait at most")
    parser.add_argument(
        "--max-interference",
        type=float,
        default=0.15,
        help="cores others may use during a run that counts as clean",
    )
    parser.add_argument("--out", type=Path, help="results file (JSON)")
    args = parser.parse_args()

    roster, register = overlapping(args.size, args.overlap)
    rows = list(register_rows(register))
    truth = set(roster) & set(register)
    oprf = Oprf()
    kinlink(roster[:2000], rows[:2000], oprf)  # warm-ups: thread pools, caches, lazy set-ups
    openmined_psi(roster[:2000], register[:2000])
    loads, waits = [load()], []
    runs_k: list[tuple[Phases, set[str], dict[str, Any]]] = []
    runs_o: list[tuple[Phases, set[str], dict[str, Any]]] = []
    started = time.monotonic()
    for _ in range(args.repeat):
        waits.append(wait_until_quiet(args.quiet, args.patience))
        runs_k.append(kinlink(roster, rows, oprf))
        loads.append(load())
        waits.append(wait_until_quiet(args.quiet, args.patience))
        runs_o.append(openmined_psi(roster, register))
        loads.append(load())
        assert runs_k[-1][1] == truth, "kinlink's intersection is wrong"
        assert runs_o[-1][1] == truth, "OpenMined's intersection is wrong"
    k, k_clean = _best([run for run, _, _ in runs_k], args.max_interference)
    o, o_clean = _best([run for run, _, _ in runs_o], args.max_interference)
    k_sizes = next(sizes for run, _, sizes in runs_k if run is k)
    o_sizes = next(sizes for run, _, sizes in runs_o if run is o)
    one = None
    if args.one_core and cpu_count() > 1:
        waits.append(wait_until_quiet(args.quiet, args.patience))
        one = one_core_kinlink(roster, rows, truth)
        loads.append(load())

    n = args.size
    online = k.total - sum(k.seconds[p] for p in DEPARTMENT)
    us = {p: s / n * 1e6 for p, s in k.seconds.items()}  # both sides have n elements
    wire = {
        "kinlink_elements": 2 * ELEMENT_BYTES,
        "kinlink_table": k_sizes["table_bytes"] / k_sizes["entries"],
        "openmined_request_response": (o_sizes["request_bytes"] + o_sizes["response_bytes"]) / n,
        "openmined_setup": o_sizes["setup_bytes"] / n,
    }
    ratio = o.total / k.total
    results: dict[str, Any] = {
        "size": n,
        "overlap": args.overlap,
        "intersection": len(truth),
        "intersections_equal": True,  # asserted above, for every run
        "repeat": args.repeat,
        "seconds": round(time.monotonic() - started),
        "load_average": loads,
        "quiet_waits": waits,
        "max_interference_cores": args.max_interference,
        "kinlink_seconds": {**k.seconds, "total": k.total, "online": online},
        "kinlink_us_per_element": us,
        "kinlink_cpu_seconds": k.cpu,
        "kinlink_others_cores": {p: round(v, 3) for p, v in k.others.items()},
        "kinlink_run": {**_run_summary(k), "noisy": not k_clean},
        "kinlink_all_runs": [_run_summary(run) for run, _, _ in runs_k],
        "kinlink_sizes": k_sizes,
        "openmined_seconds": {**o.seconds, "total": o.total},
        "openmined_us_per_element": {p: s / n * 1e6 for p, s in o.seconds.items()},
        "openmined_cpu_seconds": o.cpu,
        "openmined_run": {**_run_summary(o), "noisy": not o_clean},
        "openmined_all_runs": [_run_summary(run) for run, _, _ in runs_o],
        "openmined_sizes": o_sizes,
        "bytes_per_element": wire,
        "ratio_openmined_over_kinlink": ratio,
        "target_ratio": 2.0,
        "target_met": ratio >= 2.0,
    }
    rows_out = [("step", "seconds", "us/element")]
    rows_out += [(f"kinlink {p}", f"{s:.2f}", f"{us[p]:.1f}") for p, s in k.seconds.items()]
    rows_out.append(("kinlink total", f"{k.total:.2f}", f"{k.total / n * 1e6:.1f}"))
    rows_out += [(f"openmined {p}", f"{s:.2f}", f"{s / n * 1e6:.1f}") for p, s in o.seconds.items()]
    rows_out.append(("openmined total", f"{o.total:.2f}", f"{o.total / n * 1e6:.1f}"))
    rows_out.append(("ratio openmined/kinlink", f"{ratio:.2f}x", "target >= 2x"))
    rows_out.append(
        ("cores used kinlink / openmined", f"{k.cores_used:.2f} / {o.cores_used:.2f}", "")
    )
    rows_out.append(
        ("others' cores kinlink / openmined", f"{k.others_cores:.2f} / {o.others_cores:.2f}", "")
    )
    if one is not None:
        results["one_core"] = {
            "kinlink_seconds": {**one.seconds, "total": one.total},
            **_run_summary(one),
            "ratio_openmined_over_kinlink": o.total / one.total,
        }
        rows_out.append(("kinlink on one core", f"{one.total:.2f}", f"{one.total / n * 1e6:.1f}"))
        rows_out.append(("ratio openmined/kinlink, one core", f"{o.total / one.total:.2f}x", ""))
    for name, value in wire.items():
        rows_out.append((f"bytes/element {name}", f"{value:.1f}", ""))
    results["peak_rss_mib"] = peak_rss_mib()
    report("labelled_match", results, rows_out, args.out)


if __name__ == "__main__":
    main()
