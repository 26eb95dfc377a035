"""Heartbeat resume: a long activity is killed half way; the retry carries on where it stopped.

``process_records`` heartbeats ``{"next": i}`` after each record. Half way through, the worker
is SIGKILLed from outside (as the kernel's OOM killer would). The supervisor notices at once,
starts a replacement and retries; attempt 2 reads ``activity.info().heartbeat_details`` and
resumes instead of starting over.

Run: python examples/heartbeat_resume.py
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import timedelta

from pool import Pool
from sdk import activity

TOTAL = 100


@activity(
    heartbeat_timeout=timedelta(seconds=2),
    retry_policy_max_attempts=3,
    retry_policy_initial_interval=0.05,
)
def process_records(total: int) -> dict:
    info = activity.info()
    start = info.heartbeat_details["next"] if info.heartbeat_details else 0
    for i in range(start, total):
        time.sleep(0.01)  # the work on record i
        activity.heartbeat({"next": i + 1})
        if (i + 1) % 10 == 0:
            print(f"progress {i + 1}", flush=True)
    return {"attempt": info.attempt, "resumed_from": start, "pid": os.getpid()}


def main() -> None:
    half_way = threading.Event()

    def on_output(worker_id: int, activity_name: str | None, line: str) -> None:
        if line == f"progress {TOTAL // 2}":
            half_way.set()

    with Pool([process_records], workers=1, on_output=on_output) as pool:
        started = time.perf_counter()
        future = pool.submit(process_records, TOTAL)
        half_way.wait(30)
        victim = pool.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        print(f"attempt 1: worker {victim} SIGKILLed after record {TOTAL // 2} of {TOTAL}")
        result = future.result()
        print(
            f"attempt {result['attempt']} on worker {result['pid']}: resumed from record "
            f"{result['resumed_from']}, redid {TOTAL // 2 - result['resumed_from']} records "
            f"instead of {TOTAL // 2}"
        )
        print(f"done in {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":  # workers re-import this file: keep the guard
    main()
