"""The activities of benchmarks/temporal_hung.py, one per contender (module level: both
temporalio's process pool and activitypool's workers import them by name)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import temporalio.activity

from sdk import activity


def _hang_on_first_attempt(attempt: int, pid_file: str) -> dict[str, int]:
    # Stuck in C (a libc sleep): no Python signal handler or exception can stop it.
    if attempt == 1:
        Path(pid_file).write_text(str(os.getpid()))
        ctypes.CDLL(None).sleep(3600)
    return {"attempt": attempt, "pid": os.getpid()}


@temporalio.activity.defn(name="hangs_native")
def hangs_native(pid_file: str) -> dict[str, int]:
    """For temporalio's own process-pool executor."""
    info = temporalio.activity.info()
    temporalio.activity.heartbeat()
    return _hang_on_first_attempt(info.attempt, pid_file)


@activity(name="hangs_pooled", heartbeat_timeout=1.0, retry_policy_initial_interval=0.1)
def hangs_pooled(pid_file: str) -> dict[str, int]:
    """For activitypool (pool.temporal)."""
    info = activity.info()
    activity.heartbeat()
    return _hang_on_first_attempt(info.attempt, pid_file)


@activity
def square(x: int) -> int:
    return x * x


@temporalio.activity.defn(name="square_native")
async def square_native(x: int) -> int:
    """A plain temporalio async activity, for the round-trip baseline (no pool)."""
    return x * x
