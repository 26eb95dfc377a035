"""CPU-heavy map: one CPU-bound function over 10,000 items, pool.map beside a plain loop.

``pool.map`` sends one item per call and yields results in input order. The speed-up is bounded
by the number of CPUs and by the per-call round trip, so each item here does ~0.15 ms of work.

Run: python examples/cpu_map.py
"""

from __future__ import annotations

import math
import os
import time

from pool import Pool
from sdk import activity

ITEMS = 10_000


@activity
def score(seed: int) -> float:
    """Pure-Python floating point work: no I/O, holds the GIL all along."""
    total = 0.0
    for i in range(1, 3_000):
        total += math.sqrt((seed * 7919 + i) % 104_729)
    return total


def main() -> None:
    cpus = os.cpu_count() or 1
    items = range(ITEMS)
    started = time.perf_counter()
    sequential = [score(i) for i in items]
    seq_s = time.perf_counter() - started
    print(f"sequential:             {seq_s:6.2f}s for {ITEMS} items")
    with Pool([score], workers=cpus) as pool:
        started = time.perf_counter()
        parallel = list(pool.map(score, items))
        par_s = time.perf_counter() - started
    print(f"pool.map, {cpus} workers:    {par_s:6.2f}s ({seq_s / par_s:.1f}x on {cpus} CPUs)")
    print(f"same results in the same order: {parallel == sequential}")


if __name__ == "__main__":  # workers re-import this file: keep the guard
    main()
