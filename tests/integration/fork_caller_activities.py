"""Activities that report what a worker inherited from the caller (test_fork_caller.py)."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import sys

from sdk import activity

CALLER_VALUE: contextvars.ContextVar[str] = contextvars.ContextVar("caller_value", default="unset")


async def _answer() -> int:
    await asyncio.sleep(0)
    return 42


@activity
def inherited(fd: int) -> dict:
    try:
        fd_target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        fd_target = None
    print("printed by the worker", flush=True)
    return {
        "pid": os.getpid(),
        "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
        "fd_target": fd_target,
        "context": CALLER_VALUE.get(),
        "asyncio_run": asyncio.run(_answer()),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "stdout_fd": sys.stdout.fileno(),
    }


@activity
def pid() -> int:
    return os.getpid()
