"""Activities for the per-call options tests (module level: workers import them)."""

from __future__ import annotations

import time

from sdk import activity


@activity(retry_policy_max_attempts=4, retry_policy_initial_interval=0.01)
def fails_until(attempt_ok: int) -> int:
    """Fails every attempt before ``attempt_ok``; returns the attempt that succeeded."""
    attempt = activity.info().attempt
    if attempt < attempt_ok:
        raise RuntimeError(f"attempt {attempt} fails")
    return attempt


@activity(start_to_close_timeout=30, retry_policy_max_attempts=1)
def naps(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@activity(heartbeat_timeout=5)
def resumes(steps: int) -> dict:
    """Heartbeats ``steps`` values after what an earlier attempt reached; returns what it saw."""
    info = activity.info()
    start = info.heartbeat_details or 0
    for i in range(start + 1, start + steps + 1):
        activity.heartbeat(i)
    return {"attempt": info.attempt, "resumed_from": info.heartbeat_details}
