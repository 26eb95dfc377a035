"""Hung code: an activity stuck in C, holding the GIL, is killed on its heartbeat timeout.

Attempt 1 heartbeats once, then calls C ``sleep(3600)`` through ``ctypes.PyDLL``, which keeps
the GIL: no Python code (no thread, no signal handler) runs in that process again. The
supervisor, in another process, sees no heartbeat for ``heartbeat_timeout``, SIGKILLs the
worker, starts a replacement and retries. Attempt 2 does not hang and returns.

Run: python examples/hung_code.py
"""

from __future__ import annotations

import ctypes
import os
import time
from datetime import timedelta

from pool import Pool, PoolEvent
from sdk import ActivityTimeoutError, activity


@activity(
    heartbeat_timeout=timedelta(milliseconds=500),
    retry_policy_max_attempts=2,
    retry_policy_initial_interval=0.05,
)
def flaky_native_call() -> dict:
    info = activity.info()
    activity.heartbeat("calling into C")
    if info.attempt == 1:
        ctypes.PyDLL(None).sleep(3600)  # stuck in C with the GIL held
    return {"attempt": info.attempt, "pid": os.getpid()}


def main() -> None:
    failures: list[PoolEvent] = []

    def on_event(event: PoolEvent) -> None:
        if event.kind == "attempt_failed":
            failures.append(event)

    with Pool([flaky_native_call], workers=1, on_event=on_event) as pool:
        stuck_pid = pool.worker_pids()[0]
        started = time.perf_counter()
        result = pool.run(flaky_native_call)
        elapsed = time.perf_counter() - started
    error = failures[0].error
    assert isinstance(error, ActivityTimeoutError)
    print(f"attempt 1 on worker {stuck_pid}: stuck in C sleep(3600) holding the GIL")
    print(
        f"killed after no heartbeat for 0.5s: ActivityTimeoutError({error.type.value}), "
        f"last heartbeat {error.last_heartbeat_details!r}"
    )
    print(f"attempt {result['attempt']} on worker {result['pid']} returned after {elapsed:.2f}s")


if __name__ == "__main__":  # workers re-import this file: keep the guard
    main()
