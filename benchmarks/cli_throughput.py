"""The command line's throughput and memory on no-op lines, beside the Python API's map.

    python -m benchmarks.cli_throughput [--lines N] [--workers W] [--chunksize K]

Writes N lines (``[i]``) to a temporary file, then times, with 2 workers by default:
- ``activitypool run benchmarks._activities:ap_noop -i FILE -o /dev/null -q`` (subprocess);
- the same with the progress display on (to a file: the plain lines; the events are on);
- ``for _ in pool.map(ap_noop, range(N))`` in a fresh process (the API, no JSON at all).
Wall times include each process's start (the pool's too). CPU time per line sums every
process (the command, its workers, the fork server): steadier than wall time on a shared
machine. Peak memory is the largest resident set of the command (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_API = """
import sys
from pool import Pool
from benchmarks._activities import ap_noop
n, w, k = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with Pool([ap_noop], workers=w) as pool:
    for _ in pool.map(ap_noop, range(n), chunksize=k):
        pass
"""


def _child(argv: list[str], stderr: object = subprocess.DEVNULL) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (the process and every descendant it reaped: the workers
    too), its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed with {proc.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu, proc.stdout


def _peak_mib() -> float:
    """The largest resident set of any child so far (ru_maxrss is a maximum, not a sum)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunksize", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, w, k = args.lines, args.workers, args.chunksize
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        with open(src, "w") as f:
            f.writelines(f"[{i}]\n" for i in range(n))
        size = os.path.getsize(src) / 2**20
        print(f"{n:,} lines ({size:.1f} MiB), {w} workers, chunksize {k}, median of {args.repeat}")
        run = [sys.executable, "-m", "pool", "run", "benchmarks._activities:ap_noop"]
        run += ["-i", str(src), "-o", os.devnull, "-w", str(w), "--chunksize", str(k)]
        log = open(Path(tmp) / "progress.txt", "w")  # noqa: SIM115 - closed with tmp
        rows: dict[str, list[tuple[float, float]]] = {"cli --quiet": [], "cli + progress": []}
        rows["api pool.map"] = []
        # first: the CLI alone, so that ru_maxrss (the largest child yet) is its peak
        wall, cpu, _ = _child([*run, "-q"])
        rows["cli --quiet"].append((wall, cpu))
        cli_peak = _peak_mib()
        for i in range(args.repeat):
            if i:
                rows["cli --quiet"].append(_child([*run, "-q"])[:2])
            rows["cli + progress"].append(_child(run, stderr=log)[:2])
            wall, cpu, _ = _child([sys.executable, "-c", _API, str(n), str(w), str(k)])
            rows["api pool.map"].append((wall, cpu))
        log.close()
        for name, runs in rows.items():
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            print(
                f"{name:15} {wall:7.2f} s wall  {n / wall:9,.0f} /s  "
                f"{cpu / n * 1e6:6.1f} us CPU per line (all processes)"
            )
        print(f"peak RSS of the command (largest process): {cli_peak:.1f} MiB")


if __name__ == "__main__":
    main()
