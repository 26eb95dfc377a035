"""Activities that misuse their worker's stdio or channel (module level: workers import them)."""

from __future__ import annotations

import contextlib
import os
import sys

from sdk import activity
from sdk._context import current_activity

NO_RETRY = {"retry_policy_max_attempts": 1}


@activity(**NO_RETRY)
def close_stdio() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.close(1)
    os.close(2)


@activity(**NO_RETRY)
def garbage_onto_stdio(path: str) -> None:
    """Point fds 1 and 2 at a file (the lowest free fds, as a redirection does), then write."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for target in (1, 2):
        if target != fd:
            os.dup2(fd, target)
        os.write(target, b"\xff" * 4096)
    if fd > 2:
        os.close(fd)


@activity(**NO_RETRY)
def noisy_pattern(n: int, seed: int, chatter: int) -> bytes:
    """Print ``chatter`` bytes of text, then return ``n`` bytes that depend on ``seed``."""
    with contextlib.suppress(OSError, ValueError):  # this worker's stdio may be closed
        print("x" * chatter, flush=True)
        os.write(2, b"\xfe" * chatter)
    return pattern(n, seed)


def pattern(n: int, seed: int) -> bytes:
    block = bytes((seed * 131 + i) % 251 for i in range(4096))
    return (block * (n // len(block) + 1))[:n]


@activity(**NO_RETRY)
def stdio_fds() -> dict[int, str]:
    """What this worker's fds 0-2 are now (absent: closed)."""
    found = {}
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return found


@activity(**NO_RETRY)
def channel_fds() -> list[str]:
    """What the worker's own channel fds are (pipes)."""
    ctx = current_activity()
    worker = ctx._worker  # type: ignore[union-attr]
    return [os.readlink(f"/proc/self/fd/{fd}") for fd in (worker.rfd, worker.wfd)]


def _reply_fd() -> int:
    ctx = current_activity()
    return ctx._worker.wfd  # type: ignore[union-attr]


@activity(retry_policy_max_attempts=2, retry_policy_initial_interval=0.001)
def garble_reply(n: int, value: int) -> int:
    """On its first attempt, write ``n`` bytes of 0xff into this worker's reply pipe."""
    if activity.info().attempt == 1:
        os.write(_reply_fd(), b"\xff" * n)
    return value


@activity(**NO_RETRY)
def garble_reply_once(n: int) -> int:
    os.write(_reply_fd(), b"\xff" * n)
    return os.getpid()


@activity(**NO_RETRY)
def this_pid() -> int:
    return os.getpid()


@activity(**NO_RETRY)
def echo_len(data: bytes) -> int:
    return len(data)


@activity(**NO_RETRY)
def swallow_everything(seconds: float) -> str:
    """Catch whatever is raised at it (an exception from a signal handler included)."""
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.005)
        except Exception:
            pass
    return "done"
