"""OPRF batch rates against the raw libsodium operations they are made of, on 1 and all cores.

Run from the repository root: ``python -m benchmarks.oprf_rates [--n 20000] [--out FILE]``.
Targets (issue 2): batch paths at >= 85% of the raw scalar-multiplication rate per core, and
>= 1.7x on 2 cores.
"""

from __future__ import annotations

import argparse
import ctypes
import os
from pathlib import Path

import numpy as np

from benchmarks.common import report, timed
from psi.oprf import Oprf, cpu_count
from psi.suites import ristretto255 as r255


def raw_rates(n: int) -> dict[str, float]:
    """Operations per second of bare libsodium calls in a tight loop (no OPRF around them)."""
    suite = r255.Ristretto255Sha512()
    scalars = suite.random_scalars(n)
    points = suite.hash_to_group([os.urandom(18) for _ in range(n)], b"bench")
    out = np.empty_like(points)
    s, p, o = scalars.ctypes.data, points.ctypes.data, out.ctypes.data
    mult = r255._scalarmult

    def scalarmult() -> None:
        for i in range(n):
            mult(o + 32 * i, s + 32 * i, p + 32 * i)

    uniform = os.urandom(64)
    buf = ctypes.create_string_buffer(32)

    def from_hash() -> None:
        for _ in range(n):
            r255._from_hash(buf, uniform)

    t_mult, _ = timed(scalarmult, repeat=3)
    t_map, _ = timed(from_hash, repeat=3)
    return {"scalarmult": n / t_mult, "from_hash": n / t_map}


def oprf_rates(n: int, workers: int) -> dict[str, float]:
    oprf = Oprf(workers=workers)
    key = oprf.derive_key_pair(os.urandom(32), b"bench")
    inputs = [f"15080219800101{i % 10000:04d}".encode() for i in range(n)]
    t_blind, (blinds, blinded) = timed(lambda: oprf.blind_batch(inputs), repeat=2)
    t_eval, evaluated = timed(lambda: oprf.blind_evaluate_batch(key.sk, blinded), repeat=2)
    t_fin, _ = timed(lambda: oprf.finalize_batch(inputs, blinds, evaluated), repeat=2)
    t_full, _ = timed(lambda: oprf.evaluate_batch(key.sk, inputs), repeat=2)
    return {
        "blind": n / t_blind,
        "blind_evaluate": n / t_eval,
        "finalize": n / t_fin,
        "evaluate": n / t_full,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000, help="elements per measurement")
    parser.add_argument("--out", type=Path, help="results file (JSON)")
    args = parser.parse_args()

    raw = raw_rates(args.n)
    cores = cpu_count()
    one = oprf_rates(args.n, 1)
    many = oprf_rates(args.n, cores)
    # What each batch operation costs in raw libsodium work, in scalar-multiplication units.
    raw_cost = {
        "blind": 1 / raw["scalarmult"] + 1 / raw["from_hash"],
        "blind_evaluate": 1 / raw["scalarmult"],
        "finalize": 1 / raw["scalarmult"],
        "evaluate": 1 / raw["scalarmult"] + 1 / raw["from_hash"],
    }
    ops = {}
    rows = [("operation", "1 core /s", "vs raw mult", "vs raw ops", f"{cores} cores /s", "gain")]
    for op in one:
        ops[op] = {
            "rate_1_core": one[op],
            "fraction_of_raw_scalarmult": one[op] / raw["scalarmult"],
            "fraction_of_raw_ops": one[op] * raw_cost[op],
            f"rate_{cores}_cores": many[op],
            "speedup": many[op] / one[op],
        }
        rows.append(
            (
                op,
                f"{one[op]:,.0f}",
                f"{ops[op]['fraction_of_raw_scalarmult']:.1%}",
                f"{ops[op]['fraction_of_raw_ops']:.1%}",
                f"{many[op]:,.0f}",
                f"{ops[op]['speedup']:.2f}x",
            )
        )
    rows.append(("raw scalarmult", f"{raw['scalarmult']:,.0f}", "100%", "", "", ""))
    rows.append(("raw hash-to-group map", f"{raw['from_hash']:,.0f}", "", "", "", ""))
    report(
        "oprf_rates",
        {"n": args.n, "cores": cores, "raw_per_second": raw, "operations": ops},
        rows,
        args.out,
    )


if __name__ == "__main__":
    main()
