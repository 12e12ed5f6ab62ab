"""The monthly screening at city scale: five department node processes on loopback (gRPC, mutual
TLS) and ``nodes.client.screening.screen`` in this process, a full run and a rerun after small
changes.

    python -m benchmarks.screening [--children 1000000] [--background 0] [--out FILE]

Data: ``nodes.demo.synth.generate_city`` (``--background`` scales the registers; 0 keeps only the
roster parents' records, about 0.7 records per child in all, the closest the generator comes to
100,000 records per department at a million children) written with ``write_city``, in a child
process so that this process's memory is the client's alone. The same child makes the rerun's
inputs: ``--change`` (1%) of roster rows replaced by new families (new children and parents, from a
second city of another seed, none colliding with the first) and, in each register, that fraction of
rows changed: a third get a new end date, a third are removed, a third are replaced by records of
other people (the new families' parents first).

Steps, each timed: the node tables are built in this process (``LocalFederation.build``, what
``psi node build`` does), the nodes start, ``screen`` runs end to end (all five datasets queried
concurrently, classification, outputs, history); then the changed registers replace the old ones,
the tables are built again (the running nodes pick up the new versions) and ``screen`` runs again
into a new folder with the same history and client cache.

Measured: wall time and phases (the screening's own steps, and each node's query phases from
``QueryResult.timings``), CPU seconds of this process and of the node processes per step and
sampled every ``--sample-period`` seconds (which side computes when), CPU taken by other
processes (/proc/stat, the machine is shared), bytes on the wire counted from the messages
themselves (protobuf size plus gRPC's 5-byte prefix, by a client interceptor; loopback counters as
an upper bound including TLS, HTTP/2 and TCP/IP), the client's peak memory during each run (VmHWM,
reset before each run) and every node's VmHWM.

The floor is the scalar multiplications the run cannot avoid: the client blinds each identifier
it sends once for all nodes, each node evaluates each identifier sent to it, the client unblinds
each answer; plus, separately, one evaluation per register person for the node tables. Times the
cost of one bare libsodium multiplication measured here on one core (``oprf_rates.raw_rates``,
the fastest of a measurement before and after the runs), divided by the cores. A second floor
uses the rate of one such measurement per core run at once (a virtual machine's cores rarely
scale perfectly); the targets use the first.

Targets (issue 5), at a million children: the full run at most 25 minutes and within 1.4x of its
floor; the rerun at most 5% of the full run. Results go to ``screening_<children>.json``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import nodes.client.screening.run as screening_run
from benchmarks.common import (
    GRPC_PREFIX,
    RESULTS,
    WireCounter,
    busy_cpu_seconds,
    cpu_seconds,
    load,
    report,
)
from benchmarks.oprf_rates import raw_rates
from nodes.client.client import Client, QueryResult
from nodes.demo.federation import LocalFederation
from nodes.demo.synth import DEPARTMENTS, ROSTER_COLUMNS, generate_city, write_city
from nodes.department.state import NodeState
from nodes.shared.config import PER_NODE_BLINDS, SHARED_BLINDS, Limits
from psi.labels import REGISTER_COLUMNS
from psi.oprf import cpu_count
from psi.suites import DEFAULT_SUITE, get_suite

AS_OF = date(2026, 11, 30)
ELEMENT_BYTES = get_suite(DEFAULT_SUITE).element_size
MIB = 1 << 20
MINUTES = 60
LIMITS = Limits(per_session=50_000_000, per_day=500_000_000, per_epoch=2_000_000_000)
TARGET_FULL_SECONDS = 25 * MINUTES
TARGET_FLOOR_RATIO = 1.4
TARGET_RERUN_SHARE = 0.05
LOAD_POLL_SECONDS = 30


# ---- the data, made in a child process -------------------------------------------------------


def _write(path: Path, header: tuple[str, ...], rows) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def make_data(
    folder: Path, children: int, seed: int, background: float, change: float, as_of: date
) -> None:
    """The city in ``folder/city`` (``write_city``), the rerun's roster and registers in
    ``folder/rerun``, and what was made in ``folder/data.json``."""
    t = time.perf_counter()
    city = generate_city(children=children, as_of=as_of, seed=seed, background=background)
    generate_seconds = time.perf_counter() - t
    t = time.perf_counter()
    write_city(city, folder / "city")
    write_seconds = time.perf_counter() - t

    t = time.perf_counter()
    rng = random.Random(seed + 1)
    taken = {
        city.canonical(x)
        for row in city.roster
        for x in (row.child_id, row.father_id, row.mother_id)
        if x
    }
    taken |= {city.canonical(r.id_number) for rows in city.registers.values() for r in rows}
    taken.discard(None)
    replace = round(change * children)
    other = generate_city(
        children=int(replace * 1.2) + 10, as_of=as_of, seed=seed + 1, background=background
    )

    def ids_of(row) -> set[str | None]:
        return {other.canonical(x) for x in (row.child_id, row.father_id, row.mother_id) if x}

    families = [row for row in other.roster if not (ids_of(row) - {None}) & taken][:replace]
    new_parents = {p for row in families for p in ids_of(row)} - {None}
    roster = list(city.roster)
    for position, row in zip(rng.sample(range(children), len(families)), families, strict=True):
        roster[position] = row
    (folder / "rerun").mkdir(parents=True, exist_ok=True)
    _write(folder / "rerun" / "roster.csv", ROSTER_COLUMNS, roster)

    changes = {}
    for department, rows in city.registers.items():
        rows = list(rows)
        touched = round(change * len(rows))
        picks = rng.sample(range(len(rows)), touched)
        third = touched // 3
        for i in picks[:third]:
            row = rows[i]
            end = date.fromisoformat(row.start_date) + timedelta(rng.randint(30, 1500))
            if end.isoformat() == row.end_date:
                end += timedelta(1)
            rows[i] = row._replace(end_date=end.isoformat())
        removed = set(picks[third : 2 * third])
        rows = [row for i, row in enumerate(rows) if i not in removed]
        candidates = [
            r
            for r in other.registers[department]
            if (c := other.canonical(r.id_number)) is not None and c not in taken
        ]
        candidates.sort(key=lambda r: other.canonical(r.id_number) not in new_parents)
        added = [
            r._replace(record_ref=f"{r.record_ref}-R") for r in candidates[: touched - 2 * third]
        ]
        rows += added
        rng.shuffle(rows)
        _write(folder / "rerun" / f"{department}.csv", REGISTER_COLUMNS, rows)
        changes[department] = {
            "rows_before": len(city.registers[department]),
            "end_date_changed": third,
            "removed": len(removed),
            "added": len(added),
            "rows_after": len(rows),
        }
    info = {
        "children": children,
        "seed": seed,
        "background": background,
        "as_of": as_of.isoformat(),
        "generate_seconds": generate_seconds,
        "write_seconds": write_seconds,
        "rerun_inputs_seconds": time.perf_counter() - t,
        "roster_rows": len(city.roster),
        "register_rows": {d: len(rows) for d, rows in city.registers.items()},
        "truth_classes": dict(Counter(t.classification for t in city.truth)),
        "rerun_changes": {
            "change": change,
            "roster_rows_replaced": len(families),
            "new_parent_ids": len(new_parents),
            "registers": changes,
        },
    }
    (folder / "data.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


# ---- measuring -----------------------------------------------------------------------------------


class SafeWireCounter(WireCounter):
    """``WireCounter`` for concurrent streams. The screening's five Evaluate streams are consumed
    by five gRPC threads at once, and ``Counter[key] += n`` from several threads loses updates
    (unlocked, a 1M run counted 255.3 MB sent for the 276.3 MB of blinded elements)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def _messages(self, counter: Counter[str], method: str, messages):
        name = method.rsplit("/", 1)[-1]
        for message in messages:
            size = message.ByteSize() + GRPC_PREFIX
            with self._lock:
                counter[name] += size
            yield message


class Probe:
    """What one ``screen`` call did inside its client: wire bytes, blinded and finalized
    element counts, the ``QueryResult`` of every dataset, and the time and CPU (this process,
    and the nodes together) of the screening's steps."""

    def __init__(self, node_pids: list[int]) -> None:
        self.wire = SafeWireCounter()
        self.node_pids = node_pids
        self.blinded = 0
        self.finalized = 0
        self.results: dict[tuple[str, str], QueryResult] = {}
        self.query_many_seconds = 0.0
        self.steps: Counter[str] = Counter()
        self.cpu: dict[str, Counter[str]] = {"client": Counter(), "nodes": Counter()}
        self.lock = threading.Lock()

    def node_cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.node_pids)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Wall, this process's CPU and the nodes' CPU while ``name`` runs (steps that run one
        after another in the calling thread; the CPU is every thread's)."""
        t, client, nodes = time.perf_counter(), cpu_seconds(), self.node_cpu()
        try:
            yield
        finally:
            self.steps[name] += time.perf_counter() - t
            self.cpu["client"][name] += cpu_seconds() - client
            self.cpu["nodes"][name] += self.node_cpu() - nodes

    def client_class(self) -> type[Client]:
        probe = self

        class ProbedClient(Client):
            """The civil-affairs client with ``WireCounter`` on its channels and counters on its
            OPRF batch calls."""

            def __init__(self, config, **kwargs):
                super().__init__(config, interceptors=(probe.wire,), **kwargs)
                blind, finalize = self.oprf.blind_batch, self.oprf.finalize_inverted

                def blind_batch(inputs, *args, **kw):
                    with probe.lock:
                        probe.blinded += len(inputs)
                    return blind(inputs, *args, **kw)

                def finalize_inverted(inputs, *args, **kw):
                    with probe.lock:
                        probe.finalized += len(inputs)
                    return finalize(inputs, *args, **kw)

                self.oprf.blind_batch, self.oprf.finalize_inverted = blind_batch, finalize_inverted

            def _plan(self, *args, **kw):
                with probe.step("query_many.plan"):
                    return super()._plan(*args, **kw)

            def query_many(self, requests, ids, **kw):
                t = time.perf_counter()
                with probe.step("query_many"):
                    answers = super().query_many(requests, ids, **kw)
                probe.query_many_seconds += time.perf_counter() - t
                probe.results.update(
                    (k, v) for k, v in answers.items() if isinstance(v, QueryResult)
                )
                return answers

        return ProbedClient

    def timing(self, name: str, fn: Callable) -> Callable:
        def timed_step(*args, **kwargs):
            with self.step(name):
                return fn(*args, **kwargs)

        return timed_step


class Sampler:
    """CPU seconds of this process and of the nodes together every ``period`` seconds, in a
    thread: shows which side computes when (e.g. nodes evaluating while the client waits)."""

    def __init__(self, probe: Probe, period: float) -> None:
        self.probe, self.period = probe, period
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while True:
            elapsed = round(time.perf_counter() - start, 1)
            self.samples.append((elapsed, round(cpu_seconds(), 1), round(self.probe.node_cpu(), 1)))
            if self._stop.wait(self.period):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


STEPS = ("_previous", "read_roster", "_plan", "_ask", "compare", "write_outputs")


@contextmanager
def probed(probe: Probe) -> Iterator[None]:
    """``nodes.client.screening.run`` with its client and its steps instrumented, for one call."""
    saved = {name: getattr(screening_run, name) for name in ("Client", *STEPS)}
    screening_run.Client = probe.client_class()
    for name in STEPS:
        setattr(screening_run, name, probe.timing(name, saved[name]))
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(screening_run, name, value)


@contextmanager
def build_timer(seconds: dict[str, float]) -> Iterator[None]:
    """Seconds of each department's ``NodeState.build`` inside ``LocalFederation.build``."""
    original = NodeState.build

    def build(self, dataset_id, progress=None):
        t = time.perf_counter()
        try:
            return original(self, dataset_id, progress)
        finally:
            seconds[dataset_id] = time.perf_counter() - t

    NodeState.build = build
    try:
        yield
    finally:
        NodeState.build = original


def proc_status_mib(pid: int | str, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def reset_peak_rss_mib() -> float:
    """Reset this process's VmHWM to its current RSS (Linux clear_refs 5); returns that RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return proc_status_mib("self", "VmHWM")


def loopback_bytes() -> int:
    """Bytes transmitted on the loopback interface so far (/proc/net/dev)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, fields = line.partition(":")
        if name.strip() == "lo":
            return int(fields.split()[8])
    return 0


def wait_for_quiet(threshold: float, patience: float) -> dict[str, Any]:
    """Wait (polling) until the 1-minute load average is below ``threshold``, at most
    ``patience`` seconds; says how long it waited and whether the machine got quiet."""
    start = time.monotonic()
    while True:
        one = os.getloadavg()[0]
        waited = time.monotonic() - start
        if one < threshold or waited >= patience:
            return {"threshold": threshold, "waited_s": round(waited), "quiet": one < threshold}
        print(f"load {one:.2f} >= {threshold}: waiting ({waited:.0f} s so far)", flush=True)
        time.sleep(LOAD_POLL_SECONDS)


# ---- one screening run -----------------------------------------------------------------------


def run_screen(
    fed: LocalFederation,
    roster: Path,
    as_of: date,
    out: Path,
    history: Path,
    sample_period: float,
) -> dict[str, Any]:
    """``screen`` end to end with every measurement around it."""
    gc.collect()
    rss_before = reset_peak_rss_mib()
    nodes = {d: p.pid for d, p in fed.processes.items()}
    probe = Probe(list(nodes.values()))
    cpu_before = {d: cpu_seconds(pid) for d, pid in nodes.items()}
    client_cpu_before = cpu_seconds()
    lo_before = loopback_bytes()
    busy_before = busy_cpu_seconds()
    loads = [load()]
    with probed(probe), Sampler(probe, sample_period) as sampler:
        t = time.perf_counter()
        result = screening_run.screen(fed.federation_file, roster, as_of, out, history_dir=history)
        wall = time.perf_counter() - t
    loads.append(load())
    client_peak = proc_status_mib("self", "VmHWM")
    client_cpu = cpu_seconds() - client_cpu_before
    node_cpu = {d: cpu_seconds(pid) - cpu_before[d] for d, pid in nodes.items()}
    busy = busy_cpu_seconds() - busy_before

    steps = {name.lstrip("_"): probe.steps[name] for name in STEPS}
    steps["classify_and_rest"] = wall - sum(steps.values())
    per_node = {}
    for run in result.nodes:
        answer = probe.results[run.node, run.dataset]
        per_node[f"{run.node}/{run.dataset}"] = {
            "queried": run.queried,
            "evaluated": run.evaluated,
            "cached": run.cached,
            "matched_people": run.matched,
            "table_version": run.table_version,
            "bytes_received_reported": answer.bytes_received,
            "phases_seconds": dict(answer.timings),
        }
    # The nodes' plans (cache lookups) run at once, in threads: the slowest is what they cost.
    plans = max((a.timings.get("plan", 0.0) for a in probe.results.values()), default=0.0)
    sent, received = sum(probe.wire.sent.values()), sum(probe.wire.received.values())
    cpu_by_step = {
        side: {name.lstrip("_"): probe.cpu[side][name] for name in STEPS}
        for side in ("client", "nodes")
    }
    for side, total in (("client", client_cpu), ("nodes", sum(node_cpu.values()))):
        steps_cpu = cpu_by_step[side]
        steps_cpu["classify_and_rest"] = total - sum(steps_cpu.values())
        inner = probe.cpu[side]
        steps_cpu["  query_many"] = inner["query_many"]
        steps_cpu["  query_many.plan"] = inner["query_many.plan"]
        steps_cpu["  query_many.pipeline"] = inner["query_many"] - inner["query_many.plan"]
    return {
        "as_of": as_of.isoformat(),
        "wall_seconds": wall,
        "screen_reported_seconds": result.seconds,
        "steps_seconds": steps,
        "ask_breakdown_seconds": {
            "catalogues_and_plan": steps["plan"],
            "query_many": probe.query_many_seconds,
            "  client_plans_at_once": plans,
            "  pipeline_blind_evaluate_finalize": probe.query_many_seconds - plans,
            "collect_matches": steps["ask"] - probe.query_many_seconds,
        },
        "nodes": per_node,
        "queried_ids": result.nodes[0].queried if result.nodes else 0,
        "blinded": probe.blinded,
        "node_evaluations": sum(r.evaluated for r in result.nodes),
        "unblinded": probe.finalized,
        "children": len(result.children),
        "children_reused": result.reused,
        "counts": dict(result.counts()),
        "changes": {
            "new": len(result.changes.new),
            "ended": len(result.changes.ended),
            "changed": len(result.changes.changed),
        },
        "wire": {
            "sent_by_method": dict(probe.wire.sent),
            "received_by_method": dict(probe.wire.received),
            "sent_bytes": sent,
            "received_bytes": received,
            "total_bytes": sent + received,
            "client_reported_bytes_received": sum(a.bytes_received for a in probe.results.values()),
            "loopback_bytes_upper_bound": loopback_bytes() - lo_before,
            "blinded_element_bytes_each_way": sum(r.evaluated for r in result.nodes)
            * ELEMENT_BYTES,
        },
        "cpu_seconds": {
            "client": client_cpu,
            "nodes": node_cpu,
            "nodes_total": sum(node_cpu.values()),
            "total": client_cpu + sum(node_cpu.values()),
            "machine_busy": busy,
            "other_processes": busy - client_cpu - sum(node_cpu.values()),
            "utilisation_of_cores": (client_cpu + sum(node_cpu.values())) / (wall * cpu_count()),
            "by_step": cpu_by_step,
        },
        "timeline_wall_client_cpu_nodes_cpu": sampler.samples,
        "peak_rss_mib": {
            "client_at_start": rss_before,
            "client": client_peak,
            "nodes_vmhwm": {d: proc_status_mib(pid, "VmHWM") for d, pid in nodes.items()},
        },
        "load_average": loads,
        "_verdicts": {c.verdict.child_id: c.verdict.classification for c in result.children},
    }


def build_tables(fed: LocalFederation) -> dict[str, Any]:
    gc.collect()
    rss_before = reset_peak_rss_mib()
    seconds: dict[str, float] = {}
    cpu_before, busy_before = cpu_seconds(), busy_cpu_seconds()
    t = time.perf_counter()
    with build_timer(seconds):
        reports = fed.build()
    wall = time.perf_counter() - t
    cpu, busy = cpu_seconds() - cpu_before, busy_cpu_seconds() - busy_before
    return {
        "wall_seconds": wall,
        "cpu_seconds": {"this_process": cpu, "other_processes": busy - cpu},
        "seconds_by_department": seconds,
        "reports": {
            d: [
                {
                    "profile": r.profile,
                    "version": r.version,
                    "entries": r.entries,
                    "evaluated": r.evaluated,
                    "added": r.added,
                    "removed": r.removed,
                    "published": r.published,
                }
                for r in rs
            ]
            for d, rs in reports.items()
        },
        "people": {d: rs[0].entries for d, rs in reports.items()},
        "evaluations": sum(r.evaluated for rs in reports.values() for r in rs),
        "peak_rss_mib": {"at_start": rss_before, "peak": proc_status_mib("self", "VmHWM")},
        "load_average": load(),
    }


def check_truth(verdicts: dict[str, str], truth_csv: Path) -> dict[str, int]:
    """The full run's classes against the city's planted truth."""
    with open(truth_csv, encoding="utf-8", newline="") as handle:
        truth = {row["child_id"]: row["classification"] for row in csv.DictReader(handle)}
    wrong = sum(1 for child, cls in verdicts.items() if truth.get(child) != cls)
    return {"children": len(truth), "screened": len(verdicts), "mismatches": wrong}


# ---- the floor -------------------------------------------------------------------------------


def reusable(folder: Path, made: dict[str, Any]) -> dict[str, Any] | None:
    """The data already in ``folder`` when it was made with the same arguments."""
    try:
        data = json.loads((folder / "data.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = all(data.get(k) == v for k, v in made.items() if k != "change")
    same = same and data["rerun_changes"]["change"] == made["change"]
    return {**data, "reused": True} if same else None


def paired_raw_rate(n: int, cores: int) -> float:
    """Scalar multiplications per second of ``cores`` processes running ``raw_rates`` at once,
    together: what the cores of this (virtual) machine give when all are busy."""
    code = f"from benchmarks.oprf_rates import raw_rates; print(raw_rates({n})['scalarmult'])"
    runs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(cores)
    ]
    return sum(float(run.communicate()[0]) for run in runs)


def code_version() -> dict[str, Any]:
    """The commit measured, and any file differing from it (read-only git commands)."""

    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], capture_output=True, text=True, check=False)
        return done.stdout

    changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
    return {"commit": git("rev-parse", "HEAD").strip(), "changed_files": [c[3:] for c in changed]}


def floor(mults: int, cost: float, cores: int) -> float:
    return mults * cost / cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--children", type=int, default=1_000_000, help="roster size")
    parser.add_argument("--background", type=float, default=0.0, help="register padding ratio")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--change", type=float, default=0.01, help="share changed for the rerun")
    parser.add_argument(
        "--rerun-days", type=int, default=0, help="the rerun's as_of, days after the first's"
    )
    parser.add_argument("--quiet-load", type=float, default=1.5, help="wait for 1-min load below")
    parser.add_argument("--patience", type=float, default=900, help="seconds to wait at most")
    parser.add_argument("--raw-n", type=int, default=20000, help="elements per raw-rate timing")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    parser.add_argument(
        "--reuse-data", action="store_true", help="reuse the data already in --keep when it fits"
    )
    parser.add_argument(
        "--sample-period", type=float, default=10.0, help="seconds between CPU samples"
    )
    parser.add_argument(
        "--blinds",
        choices=(SHARED_BLINDS, PER_NODE_BLINDS),
        default=SHARED_BLINDS,
        help="the client's blinds: one for all nodes, or one per node (docs/threat-model.md)",
    )
    parser.add_argument("--note", default="", help="free text kept in the results")
    parser.add_argument("--out", type=Path, help="results file (JSON)")
    parser.add_argument("--make-data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.children
    if args.make_data:
        make_data(args.make_data, n, args.seed, args.background, args.change, AS_OF)
        return

    cores = cpu_count()
    version = code_version()
    quiet = wait_for_quiet(args.quiet_load, args.patience)
    raw_before = raw_rates(args.raw_n)
    paired_before = paired_raw_rate(args.raw_n, cores)
    print(
        f"raw scalarmult {raw_before['scalarmult']:,.0f}/s on one core, "
        f"{paired_before:,.0f}/s on {cores} at once",
        flush=True,
    )
    folder = args.keep or Path(tempfile.mkdtemp(prefix="kinlink-screening-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for stale in ("federation", "registers", "history", "run-1", "run-2"):
            shutil.rmtree(folder / stale, ignore_errors=True)
        made = {"children": n, "seed": args.seed, "background": args.background}
        made |= {"change": args.change, "as_of": AS_OF.isoformat()}
        data = reusable(folder, made) if args.reuse_data else None
        if data is None:
            t = time.perf_counter()
            command = [sys.executable, "-m", "benchmarks.screening", "--make-data", str(folder)]
            command += ["--children", str(n), "--seed", str(args.seed)]
            command += ["--background", str(args.background), "--change", str(args.change)]
            subprocess.run(command, check=True)
            data_seconds = time.perf_counter() - t
            data = json.loads((folder / "data.json").read_text(encoding="utf-8"))
            data["seconds"] = data_seconds
            data["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            print(f"data made in {data_seconds:.0f} s: {data['register_rows']}", flush=True)
        else:
            print(f"data reused from {folder}: {data['register_rows']}", flush=True)

        city = folder / "city"
        (folder / "registers").mkdir()
        registers = {d: folder / "registers" / f"{d}.csv" for d in DEPARTMENTS}
        for department, path in registers.items():
            shutil.copyfile(city / f"{department}.csv", path)
        with LocalFederation(
            folder / "federation", registers, limits=LIMITS, blinds=args.blinds
        ) as fed:
            fed.setup()
            build = build_tables(fed)
            print(f"tables built in {build['wall_seconds']:.0f} s", flush=True)
            t = time.perf_counter()
            fed.start()
            start_seconds = time.perf_counter() - t
            history = folder / "history"
            full = run_screen(
                fed, city / "roster.csv", AS_OF, folder / "run-1", history, args.sample_period
            )
            print(f"full run {full['wall_seconds']:.0f} s", flush=True)

            for department, path in registers.items():
                shutil.copyfile(folder / "rerun" / f"{department}.csv", path)
            rebuild = build_tables(fed)
            print(f"tables rebuilt in {rebuild['wall_seconds']:.0f} s", flush=True)
            rerun_as_of = AS_OF + timedelta(args.rerun_days)
            rerun = run_screen(
                fed,
                folder / "rerun" / "roster.csv",
                rerun_as_of,
                folder / "run-2",
                history,
                args.sample_period,
            )
            print(f"rerun {rerun['wall_seconds']:.0f} s", flush=True)
        truth = check_truth(full.pop("_verdicts"), city / "truth.csv")
        rerun.pop("_verdicts")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    raw_after = raw_rates(args.raw_n)
    paired_after = paired_raw_rate(args.raw_n, cores)
    raw = max((raw_before, raw_after), key=lambda r: r["scalarmult"])
    paired = max(paired_before, paired_after)
    cost = 1 / raw["scalarmult"]  # seconds per scalar multiplication on one core
    h2g = 1 / raw["from_hash"]

    def floors(run: dict[str, Any], builds: dict[str, Any]) -> dict[str, Any]:
        mults = run["blinded"] + run["node_evaluations"] + run["unblinded"]
        seconds = floor(mults, cost, cores)
        with_h2g = seconds + floor(run["blinded"], h2g, cores)
        build_seconds = floor(builds["evaluations"], cost, cores)
        both = run["wall_seconds"] + builds["wall_seconds"]
        return {
            "scalar_mults": {
                "client_blind": run["blinded"],
                "node_evaluate": run["node_evaluations"],
                "client_unblind": run["unblinded"],
                "screen_total": mults,
                "table_builds": builds["evaluations"],
                "with_builds": mults + builds["evaluations"],
            },
            "floor_seconds": seconds,
            "ratio": run["wall_seconds"] / seconds if seconds else None,
            "floor_seconds_all_cores_measured_together": mults / paired,
            "ratio_all_cores_measured_together": run["wall_seconds"] * paired / mults
            if mults
            else None,
            "floor_seconds_incl_hash_to_group": with_h2g,
            "ratio_incl_hash_to_group": run["wall_seconds"] / with_h2g if with_h2g else None,
            "build_floor_seconds": build_seconds,
            "build_ratio": builds["wall_seconds"] / build_seconds if build_seconds else None,
            "with_builds_floor_seconds": seconds + build_seconds,
            "with_builds_ratio": both / (seconds + build_seconds) if seconds else None,
            "cpu_seconds_per_floor_cpu_second": run["cpu_seconds"]["total"] / (mults * cost)
            if mults
            else None,
        }

    full_floor, rerun_floor = floors(full, build), floors(rerun, rebuild)
    share = rerun["wall_seconds"] / full["wall_seconds"]
    targets = {
        "full_within_floor_ratio_1_4": full_floor["ratio"] <= TARGET_FLOOR_RATIO,
        "rerun_at_most_5_percent_of_full": share <= TARGET_RERUN_SHARE,
    }
    if n >= 1_000_000:
        targets["full_within_25_minutes"] = full["wall_seconds"] <= TARGET_FULL_SECONDS
    results = {
        "note": args.note,
        "children": n,
        "blinds": args.blinds,
        "cores": cores,
        "load_wait": quiet,
        "code": version,
        "raw_per_second": {"before": raw_before, "after": raw_after, "used": raw},
        "raw_scalarmult_per_second_all_cores_together": {
            "before": paired_before,
            "after": paired_after,
            "used": paired,
        },
        "seconds_per_scalarmult_one_core": cost,
        "data": data,
        "register_people": build["people"],
        "node_start_seconds": start_seconds,
        "build": build,
        "full": {**full, "floor": full_floor, "truth_check": truth},
        "rebuild": rebuild,
        "rerun": {**rerun, "floor": rerun_floor, "share_of_full": share},
        "targets_met": targets,
    }

    def ask(run: dict[str, Any]) -> list[tuple[str, str]]:
        b = run["ask_breakdown_seconds"]
        return [
            (f"  {k.strip()} (s)", f"{v:.1f}") for k, v in b.items() if k != "catalogues_and_plan"
        ]

    def phases(run: dict[str, Any]) -> list[tuple[str, str]]:
        most = Counter()
        for node in run["nodes"].values():
            for phase, s in node["phases_seconds"].items():
                most[phase] = max(most[phase], s)
        return [(f"    {p}, slowest node (s)", f"{s:.1f}") for p, s in most.items()]

    def mib(run: dict[str, Any]) -> str:
        return f"{run['peak_rss_mib']['client']:.0f}"

    rows = [("measure", "full run", "rerun")]
    rows += [
        ("as_of", full["as_of"], rerun["as_of"]),
        ("table build (s)", f"{build['wall_seconds']:.1f}", f"{rebuild['wall_seconds']:.1f}"),
        ("  evaluations", f"{build['evaluations']:,}", f"{rebuild['evaluations']:,}"),
        ("screen wall (s)", f"{full['wall_seconds']:.1f}", f"{rerun['wall_seconds']:.1f}"),
    ]
    for step in full["steps_seconds"]:
        rows.append(
            (
                f"  {step} (s)",
                f"{full['steps_seconds'][step]:.1f}",
                f"{rerun['steps_seconds'][step]:.1f}",
            )
        )
    for (label, a), (_, b) in zip(ask(full), ask(rerun), strict=True):
        rows.append((label, a, b))
    for (label, a), (_, b) in zip(phases(full), phases(rerun), strict=False):
        rows.append((label, a, b))
    rows += [
        ("ids queried", f"{full['queried_ids']:,}", f"{rerun['queried_ids']:,}"),
        ("ids blinded", f"{full['blinded']:,}", f"{rerun['blinded']:,}"),
        (
            "node evaluations (all nodes)",
            f"{full['node_evaluations']:,}",
            f"{rerun['node_evaluations']:,}",
        ),
        (
            "scalar mults (screen)",
            f"{full_floor['scalar_mults']['screen_total']:,}",
            f"{rerun_floor['scalar_mults']['screen_total']:,}",
        ),
        (
            "floor (s) / ratio",
            f"{full_floor['floor_seconds']:.1f} / {full_floor['ratio']:.2f}x",
            f"{rerun_floor['floor_seconds']:.1f} / {rerun_floor['ratio']:.2f}x",
        ),
        (
            "floor with builds (s) / ratio",
            f"{full_floor['with_builds_floor_seconds']:.1f} / "
            f"{full_floor['with_builds_ratio']:.2f}x",
            f"{rerun_floor['with_builds_floor_seconds']:.1f} / "
            f"{rerun_floor['with_builds_ratio']:.2f}x",
        ),
        (
            "CPU s client / nodes",
            f"{full['cpu_seconds']['client']:.0f} / {full['cpu_seconds']['nodes_total']:.0f}",
            f"{rerun['cpu_seconds']['client']:.0f} / {rerun['cpu_seconds']['nodes_total']:.0f}",
        ),
        (
            "CPU s taken by other processes",
            f"{full['cpu_seconds']['other_processes']:.0f}",
            f"{rerun['cpu_seconds']['other_processes']:.0f}",
        ),
        (
            "wire bytes (MB)",
            f"{full['wire']['total_bytes'] / 1e6:.1f}",
            f"{rerun['wire']['total_bytes'] / 1e6:.1f}",
        ),
        ("peak RSS client (MiB)", mib(full), mib(rerun)),
        (
            "max node VmHWM (MiB)",
            f"{max(full['peak_rss_mib']['nodes_vmhwm'].values()):.0f}",
            f"{max(rerun['peak_rss_mib']['nodes_vmhwm'].values()):.0f}",
        ),
        ("rerun / full", "", f"{share:.1%}"),
        ("truth mismatches", f"{truth['mismatches']:,}", ""),
    ]
    rows += [(f"target {name}", str(met), "") for name, met in targets.items()]
    report("screening", results, rows, args.out or RESULTS / f"screening_{n}.json")


if __name__ == "__main__":
    main()
