"""What the benchmark runs inside worker processes.

Two flavours of the same small functions: ``ap_*`` are activities for activitypool, the plain ones
are for the peers (ProcessPoolExecutor, multiprocessing.Pool, loky, pebble), so a peer never runs
any activitypool code. numpy is imported inside the functions that need it, so an idle worker's
memory is not inflated by it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sdk import activity

# -- plain functions (the peers) ------------------------------------------------------------


def noop(x: Any = None) -> Any:
    return x


def echo(payload: Any) -> Any:
    return payload


def typed_noop(x: int) -> int:
    return x


def pid_then_sleep(path: str, seconds: float) -> int:
    """Announce this worker's pid in ``path`` (written then renamed), then sleep."""
    _announce_pid(path)
    time.sleep(seconds)
    return os.getpid()


def pid() -> int:
    return os.getpid()


def sleep_forever() -> None:
    time.sleep(3600)


def matmul_work(seed: int, size: int = 256, rounds: int = 8) -> float:
    return _matmul(seed, size, rounds)


# -- activities (activitypool) --------------------------------------------------------------


@activity(name="bench_noop")
def ap_noop(x=None):
    return x


@activity(name="bench_typed_noop")
def ap_typed_noop(x: int) -> int:  # hints: the caller checks the argument and the result
    return x


@activity(name="bench_pid")
def ap_pid():
    return os.getpid()


@activity(name="bench_echo")
def ap_echo(payload):
    return payload


@activity(name="bench_pid_then_sleep", retry_policy_max_attempts=1)
def ap_pid_then_sleep(path, seconds):
    _announce_pid(path)
    time.sleep(seconds)
    return os.getpid()


@activity(name="bench_sleep_forever", start_to_close_timeout=0.2, retry_policy_max_attempts=1)
def ap_sleep_forever():
    time.sleep(3600)


@activity(name="bench_stop_beating", heartbeat_timeout=0.1, retry_policy_max_attempts=1)
def ap_stop_beating():
    # the details carry when the beat was given; CLOCK_MONOTONIC is system-wide on Linux
    activity.heartbeat(time.monotonic())
    time.sleep(3600)


@activity(name="bench_heartbeat_cost")
def ap_heartbeat_cost(n):
    """Nanoseconds per ``activity.heartbeat()`` over ``n`` calls, and per empty loop turn."""
    beat = activity.heartbeat
    t0 = time.perf_counter()
    for _ in range(n):
        beat()
    t1 = time.perf_counter()
    for _ in range(n):
        pass
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e9, (t2 - t1) / n * 1e9


@activity(name="bench_matmul_work")
def ap_matmul_work(seed, size=256, rounds=8):
    return _matmul(seed, size, rounds)


# -- shared bodies ---------------------------------------------------------------------------


def _announce_pid(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:  # not pathlib: a worker that imports this module stays light
        f.write(str(os.getpid()))
    os.replace(tmp, path)


def _matmul(seed: int, size: int, rounds: int) -> float:
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((size, size))
    b = rng.standard_normal((size, size))
    for _ in range(rounds):
        a = a @ b
        a /= np.abs(a).max()
    return float(a.sum())
