"""The command line's throughput and memory on no-op lines, beside the Python API's map.

    python -m benchmarks.cli_throughput [--lines N] [--workers W] [--chunksize K]

Writes N lines (``[i]``) to a temporary file, then times, with 2 workers by default:
- ``activitypool run benchmarks._activities:ap_noop -i FILE -o /dev/null -q`` (subprocess);
- the same with the progress display on (to a file: the plain lines; the events are on);
- ``for _ in pool.map(ap_noop, range(N))`` in a fresh process (the API, no JSON at all).
Peak memory is the largest resident set of that process (``ru_maxrss`` of the child).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_API = """
import sys, time
from pool import Pool
from benchmarks._activities import ap_noop
n, w, k = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with Pool([ap_noop], workers=w) as pool:
    t = time.perf_counter()
    for _ in pool.map(ap_noop, range(n), chunksize=k):
        pass
    print(time.perf_counter() - t)
"""


def _child(argv: list[str], stderr: object = subprocess.DEVNULL) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) of the child, its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed with {proc.returncode}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest of any child so far: run the biggest first or read
    # it as an upper bound
    return wall, max(peak, before) / 1024, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunksize", type=int, default=1)
    args = parser.parse_args()
    n, w, k = args.lines, args.workers, args.chunksize
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        with open(src, "w") as f:
            f.writelines(f"[{i}]\n" for i in range(n))
        size = os.path.getsize(src) / 2**20
        print(f"{n:,} lines ({size:.1f} MiB), {w} workers, chunksize {k}")
        run = [sys.executable, "-m", "pool", "run", "benchmarks._activities:ap_noop"]
        run += ["-i", str(src), "-o", os.devnull, "-w", str(w), "--chunksize", str(k)]
        wall, rss, _ = _child([*run, "-q"])
        print(f"cli --quiet:     {wall:7.2f} s  {n / wall:9,.0f} lines/s  peak RSS {rss:6.1f} MiB")
        with open(Path(tmp) / "progress.txt", "w") as log:
            wall, rss, _ = _child(run, stderr=log)
        print(
            f"cli + progress:  {wall:7.2f} s  {n / wall:9,.0f} lines/s  peak RSS <= {rss:.1f} MiB"
        )
        wall, rss, out = _child([sys.executable, "-c", _API, str(n), str(w), str(k)])
        mapped = float(out)
        print(
            f"api pool.map:    {mapped:7.2f} s  {n / mapped:9,.0f} items/s  "
            f"(process {wall:.2f} s; peak RSS <= {rss:.1f} MiB)"
        )


if __name__ == "__main__":
    main()
