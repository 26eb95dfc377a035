"""Activities that print, then fail (tests/integration/test_failure_output.py)."""

from __future__ import annotations

import os
import sys
import time

from sdk import activity

FAST = {"retry_policy_initial_interval": 0.01}


@activity(retry_policy_max_attempts=2, **FAST)
def chatty_fail(lines: int) -> None:
    """Prints ``lines`` lines (stdout and stderr in turn) naming its attempt, then raises."""
    attempt = activity.info().attempt
    for i in range(lines):
        stream = sys.stdout if i % 2 == 0 else sys.stderr
        print(f"attempt {attempt} line {i}", file=stream)
    raise ValueError(f"attempt {attempt} failed")


@activity(retry_policy_max_attempts=2, **FAST)
def loud_then_quiet() -> None:
    """Its first attempt prints, its second does not; both raise."""
    if activity.info().attempt == 1:
        print("only the first attempt says this")
    raise ValueError("no")


@activity(retry_policy_max_attempts=1)
def print_then_crash() -> None:
    print("about to die")
    sys.stdout.flush()
    os._exit(3)


@activity(start_to_close_timeout=0.2, retry_policy_max_attempts=1)
def print_then_hang() -> None:
    print("stuck from here")
    time.sleep(3600)


@activity
def quiet() -> int:
    return 1
