"""Activities the command-line tests run (``activitypool run <this module>:NAME``)."""

from __future__ import annotations

import dataclasses
import datetime
import os
import time

from sdk import ApplicationError, Depends, activity


@activity(
    name="cli_test.add",
    start_to_close_timeout=10,
    retry_policy_max_attempts=2,
    retry_policy_initial_interval=0.01,
)
def add(x: int, y: int = 0) -> int:
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x + y


@activity(name="cli_test.noop", start_to_close_timeout=10)
def noop(x: object) -> None:
    return None


@dataclasses.dataclass
class Point:
    x: int
    when: datetime.datetime


@activity(name="cli_test.shapes")
def shapes(n: int) -> dict:
    import numpy as np

    return {
        "point": Point(n, datetime.datetime(2024, 1, 1, 12, 0, n)),
        "i64": np.int64(n),
        "arr": np.arange(n),
        "f32": np.float32(0.5),
        "nan": float("nan"),
    }


@activity(
    name="cli_test.hangs_first",
    start_to_close_timeout=10,
    retry_policy_max_attempts=3,
    retry_policy_initial_interval=0.01,
)
def hangs_first(x: int) -> int:
    if activity.info().attempt == 1:
        time.sleep(60)
    return x


@activity(name="cli_test.crashes", retry_policy_max_attempts=2, retry_policy_initial_interval=0.01)
def crashes(x: int) -> int:
    os._exit(3)


@activity(
    name="cli_test.typed_failure", retry_policy_max_attempts=5, retry_policy_initial_interval=0.01
)
def typed_failure(x: int) -> int:
    raise ApplicationError("no luck", type="LuckError", non_retryable=True)


@activity(name="cli_test.slow", start_to_close_timeout=10)
def slow(x: int) -> int:
    time.sleep(0.05)
    return x


@activity(name="cli_test.where", start_to_close_timeout=10)
def where(x: int, y: int = 0) -> int:
    return os.getpid()


def not_an_activity(x: int) -> int:
    return x


def _offset() -> int:
    return 100


@activity(name="cli_test.with_dep", start_to_close_timeout=10)
def with_dep(x: int, y: int = 0, offset: int = Depends(_offset)) -> int:
    return x + y + offset


@activity(name="cli_test.with_dep_async", start_to_close_timeout=10)
async def with_dep_async(x: int, offset: int = Depends(_offset)) -> int:
    return x + offset


@activity(name="cli_test.lies", start_to_close_timeout=10)
def lies(x: int) -> int:
    return "not an int" if x == 2 else x  # type: ignore[return-value]


@activity(name="cli_test.chatty", start_to_close_timeout=10)
def chatty(x: int) -> int:
    time.sleep(0.01)
    print(f"chatty says {x}")
    return x


@activity(name="cli_test.crashes_first", retry_policy_initial_interval=0.01)
def crashes_first(x: int) -> int:
    if activity.info().attempt == 1:
        os._exit(3)
    return x
