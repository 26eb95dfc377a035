"""Activities for tests/integration/test_lazy_map.py (module level: workers import them)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from sdk import activity


@activity
def plus_one(x: int) -> int:
    return x + 1


@activity
async def async_plus_one(x: int) -> int:
    await asyncio.sleep(0)
    return x + 1


@activity(retry_policy_max_attempts=1)
def fails_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("item 3 fails")
    return x


@activity(retry_policy_max_attempts=1)
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@activity(retry_policy_max_attempts=1)
def runs_until_cancelled(path: str) -> str:
    """Marks its start and its end in files. Item ``.../0`` returns once item 1 has started
    (so something runs when the caller leaves); the others run until cancelled (or 10 s)."""
    Path(path + ".start").touch()
    first = path.endswith("/0")
    second = Path(path[: -len("0")] + "1.start")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not activity.is_cancelled():
            if first and second.exists():
                break
            time.sleep(0.005)
    finally:
        Path(path + ".end").touch()
    return path


@activity(retry_policy_max_attempts=1)
async def async_runs_until_cancelled(path: str) -> str:
    Path(path + ".start").touch()
    first = path.endswith("/0")
    second = Path(path[: -len("0")] + "1.start")
    try:
        for _ in range(2000):
            if first and second.exists():
                break
            await asyncio.sleep(0.005)
    finally:
        Path(path + ".end").touch()
    return path


@activity(sticky_to_worker=True)
def sticky_where(x: int) -> tuple[int, int, int]:
    """The item, the worker's pid, and how many items this session ran before it."""
    state = activity.session_state()
    seen = state.get("seen", 0)
    state["seen"] = seen + 1
    return x, os.getpid(), seen


@activity(sticky_to_worker=True)
def sticky_nap(item: tuple[float, str]) -> int:
    """``(seconds, marker)``: touches the file ``marker`` (if any) as it starts, then sleeps."""
    seconds, marker = item
    if marker:
        Path(marker).touch()
    time.sleep(seconds)
    return os.getpid()
