"""Activities the Temporal tests run on two worker hosts (module level: workers import them)."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

from sdk import activity


def _host() -> str:
    return os.environ.get("ACTIVITYPOOL_TEST_HOST", "?")


@activity(start_to_close_timeout=10, heartbeat_timeout=2)
def ran_where(i: int, seconds: float = 0.0) -> dict[str, int | str]:
    """Which host and subprocess ran item ``i`` (heartbeats while it sleeps ``seconds``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        activity.heartbeat(i)
        time.sleep(min(0.05, seconds))
    return {"i": i, "host": _host(), "pid": os.getpid()}


@activity
def squared(x: int) -> int:
    return x * x


@activity(sticky_to_worker=True)
def session_load(name: str) -> dict[str, int | str]:
    activity.session_state()["model"] = {"name": name, "weight": 3}
    return {"host": _host(), "pid": os.getpid()}


@activity(sticky_to_worker=True)
async def session_predict(x: int) -> dict[str, int | str]:
    model = activity.session_state()["model"]
    return {"y": x * model["weight"], "host": _host(), "pid": os.getpid()}


@activity(heartbeat_timeout=1.0, retry_policy_initial_interval=0.1, retry_policy_max_attempts=3)
def hangs_once(steps: int, pid_file: str) -> dict[str, int | str | None]:
    """Heartbeats steps from where the last attempt stopped; the first attempt then writes its
    pid to ``pid_file`` and hangs in C (a libc sleep, deaf to Python) until it is killed."""
    info = activity.info()
    start = info.heartbeat_details or 0
    for step in range(start + 1, steps + 1):
        activity.heartbeat(step)
    if info.attempt == 1:
        Path(pid_file).write_text(str(os.getpid()))
        ctypes.CDLL(None).sleep(3600)
    return {
        "attempt": info.attempt,
        "resumed_from": info.heartbeat_details,
        "host": _host(),
        "pid": os.getpid(),
    }


@activity(heartbeat_timeout=1.0, start_to_close_timeout=60, retry_policy_max_attempts=1)
def spins(pid_file: str) -> None:
    """Writes its pid, then heartbeats until it is stopped; it never checks for cancellation."""
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        activity.heartbeat()
        time.sleep(0.05)
