"""Why a plain hash of an identity number is no protection: reverse one by trying every candidate.

A number is a region code, a birth date and a 3-digit sequence; the check character adds nothing,
since it follows from the rest. Whoever knows (or guesses) the county and the birth year of the
person behind a SHA-256 hash has only ~365,000 candidates to try. This script measures the SHA-256
rate of this machine on candidate numbers, reverses a sample hash by enumeration, and extrapolates
to a county and a province. Keyed pseudonyms (an OPRF, as kinlink uses) are what stop this.

    python benchmarks/hash_reversal.py [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from psi.ids import check_characters, mask

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "hash_reversal.json"
DAYS_PER_YEAR = 365.25
SEQUENCES = 1000
CHILDHOOD_YEARS = 18
LIFETIME_YEARS = 100
RATE_YEARS = 4


def candidates(region: str, first: date, days: int) -> list[bytes]:
    """Every well-formed number of ``region`` born in ``days`` days from ``first``: 1000 a day."""
    prefixes = np.array([f"{region}{first + timedelta(days=d):%Y%m%d}" for d in range(days)], "S14")
    sequences = np.char.zfill(np.arange(SEQUENCES).astype("S3"), 3)
    bodies = np.char.add(prefixes[:, None], sequences[None, :]).ravel()
    return np.char.add(bodies, check_characters(bodies)).tolist()


def search(task: tuple[str, date, int, bytes]) -> tuple[int, float, bytes | None]:
    """Hash every candidate of one slice of days: (candidates hashed, seconds hashing, match)."""
    region, first, days, target = task
    numbers = candidates(region, first, days)
    found = None
    start = time.perf_counter()
    for number in numbers:
        if hashlib.sha256(number).digest() == target:
            found = number  # keep going: the timing is for the whole slice, the worst case
    return len(numbers), time.perf_counter() - start, found


def run_search(
    region: str, first: date, days: int, target: bytes, workers: int
) -> tuple[float, float, bytes | None]:
    """Split ``days`` over ``workers`` processes: (hashes per second, wall seconds, match)."""
    share = -(-days // workers)
    tasks = [
        (region, first + timedelta(days=start), min(share, days - start), target)
        for start in range(0, days, share)
    ]
    begin = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(search, tasks))
    wall = time.perf_counter() - begin
    hashed = sum(count for count, _, _ in results)
    rate = hashed / max(seconds for _, seconds, _ in results)  # the processes hash side by side
    return rate, wall, next((found for _, _, found in results if found), None)


def human(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--region", default="150802", help="county region code to enumerate")
    parser.add_argument("--year", type=int, default=2015, help="birth year of the sample")
    parser.add_argument("--workers", type=int, default=2, help="processes (cores) to use")
    parser.add_argument("--counties", type=int, default=100, help="region codes in a province")
    parser.add_argument("--seed", type=int, default=1, help="seed for the sample number")
    args = parser.parse_args()

    first = date(args.year, 1, 1)
    days = (date(args.year + 1, 1, 1) - first).days
    rng = random.Random(args.seed)
    sample = rng.choice(candidates(args.region, first + timedelta(days=rng.randrange(days)), 1))
    target = hashlib.sha256(sample).digest()

    # Throughput over a few years of births (no target), then the demo: one year, one target.
    hashed, seconds, _ = search((args.region, first, days, b""))
    one_rate = hashed / seconds
    rate, _, _ = run_search(args.region, first, RATE_YEARS * days, b"", args.workers)
    _, wall, found = run_search(args.region, first, days, target, args.workers)

    county_children = CHILDHOOD_YEARS * DAYS_PER_YEAR * SEQUENCES
    county_everyone = LIFETIME_YEARS * DAYS_PER_YEAR * SEQUENCES
    spaces = {
        "one county, children (18 birth years)": county_children,
        "one county, everyone (100 birth years)": county_everyone,
        f"one province ({args.counties} counties), children": args.counties * county_children,
        f"one province ({args.counties} counties), everyone": args.counties * county_everyone,
    }
    results = {
        "machine": {
            "python": platform.python_version(),
            "processor": platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "sha256_per_second": {
            "one_process": round(one_rate),
            "all_workers": round(rate),
            "workers": args.workers,
        },
        "demo": {
            "region": args.region,
            "birth_window": f"{first} .. {first + timedelta(days=days - 1)}",
            "candidates": days * SEQUENCES,
            "wall_seconds": round(wall, 2),
            "reversed": found == sample,
            "sample_masked": mask(sample.decode("ascii")),
        },
        "candidate_space": {name: round(size) for name, size in spaces.items()},
        "seconds_to_try_all_on_all_workers": {
            name: round(size / rate, 1) for name, size in spaces.items()
        },
        "note": "a pure-Python hashlib loop; optimised or GPU crackers are far faster still",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    print(
        f"SHA-256 of candidate numbers (Python hashlib loop): {one_rate:,.0f}/s on 1 process, "
        f"{rate:,.0f}/s on {args.workers}"
    )
    print(
        f"reversed {results['demo']['sample_masked']} from its hash: "
        f"{'yes' if found == sample else 'NO'}, trying all {days * SEQUENCES:,} numbers of one "
        f"county born in {args.year} took {wall:.1f} s"
    )
    print(f"\n{'candidate space':45} {'numbers':>15} {'time to try all':>16}")
    for name, size in spaces.items():
        print(f"{name:45} {size:>15,.0f} {human(size / rate):>16}")
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
