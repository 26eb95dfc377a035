"""What the chaos run (``benchmarks/chaos.py``) runs inside worker processes.

Every call gets a ``Spec``: its key (unique in the run), its place in its sticky session (or -1),
the fault it plays (on its first attempt; a hang on its first three), its payload and the path
of the run's execution log.
The result names the call it belongs to (its key and a digest of its payload), so a result
handed to the wrong caller, or a payload mixed up on the way, is seen by the caller.

Each execution appends one line to the execution log, before doing anything else:
``key attempt pid in_order``. The log counts executions (repeated ones are by design after a
kill) and carries what only the worker can see: whether a sticky call started in its session's
order. Lines are single ``write``s to a file opened with ``O_APPEND``, padded to
``LOG_RECORD`` bytes, which divides the page size: concurrent writers never interleave inside a
line, and a SIGKILL cannot tear one (the kernel may stop a write between two pages of the file,
and a record never spans two).

No type hints on the activities: they would have each fresh worker import pydantic, which is not
what this run is about.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import NamedTuple

from sdk import ApplicationError, activity

LOG_RECORD = 64  # bytes per line of the execution log (see above)

# A hang is caught by this heartbeat timeout; calls that do not hang finish well within it.
HEARTBEAT_TIMEOUT = 0.1
# Sticky calls get more slack: a miss loses the whole session, which is a correct outcome but
# leaves less of the session to check.
STICKY_HEARTBEAT_TIMEOUT = 1.0
# A hanging call hangs on this many attempts: the random kills end most hangs before their
# heartbeat timeout does, and the timeout must be seen at work too.
HANGS = 3
RETRY = {"retry_policy_max_attempts": 0, "retry_policy_initial_interval": 0.001}


class Spec(NamedTuple):
    key: int
    seq: int  # place in the sticky session (0, 1, ...), -1 for a plain call
    fault: str  # none | raise | exit | hang | slow | fail
    data: bytes
    log: str


class Outcome(NamedTuple):
    key: int
    pid: int
    digest: bytes
    echo: bytes  # the payload reversed: large payloads come back large


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def payload(key: int, size: int) -> bytes:
    """``size`` bytes that name ``key`` in every 8-byte word: a stray byte shows whose it is."""
    word = key.to_bytes(8, "little")
    return (word * (size // 8 + 1))[:size]


def _begin(spec: Spec) -> int:
    """Log this execution; for a sticky call, check that every earlier call of its session
    has returned in this session's state (a retry of the call itself keeps its place)."""
    attempt = activity.info().attempt
    in_order = 1
    if spec.seq >= 0:
        in_order = int(activity.session_state().get("next", 0) == spec.seq)
    line = f"{spec.key} {attempt} {os.getpid()} {in_order}".ljust(LOG_RECORD - 1).encode() + b"\n"
    fd = os.open(spec.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return attempt


def _first_attempt_fault(spec: Spec, attempt: int) -> None:
    if spec.fault == "fail":
        raise ApplicationError(f"fail {spec.key}", non_retryable=True)
    if attempt != 1:
        return
    if spec.fault == "raise":
        raise ValueError(f"raise {spec.key}")
    if spec.fault == "exit":
        os._exit(3)


def _finish(spec: Spec) -> Outcome:
    if spec.seq >= 0:
        activity.session_state()["next"] = spec.seq + 1
    return Outcome(spec.key, os.getpid(), digest(spec.data), spec.data[::-1])


def _run_sync(spec: Spec) -> Outcome:
    attempt = _begin(spec)
    _first_attempt_fault(spec, attempt)
    if spec.fault == "hang" and attempt <= HANGS:
        time.sleep(3600)  # no heartbeat: the heartbeat timeout kills the worker
    if spec.fault == "slow":
        for _ in range(5):
            activity.heartbeat(spec.key)
            time.sleep(0.002)
    return _finish(spec)


async def _run_async(spec: Spec) -> Outcome:
    attempt = _begin(spec)
    _first_attempt_fault(spec, attempt)
    if spec.fault == "hang" and attempt <= HANGS:
        await asyncio.sleep(3600)
    if spec.fault == "slow":
        for _ in range(5):
            activity.heartbeat(spec.key)
            await asyncio.sleep(0.002)
    await asyncio.sleep(0)
    return _finish(spec)


@activity(name="chaos_plain", heartbeat_timeout=HEARTBEAT_TIMEOUT, **RETRY)
def plain(spec):
    return _run_sync(spec)


@activity(name="chaos_plain_async", heartbeat_timeout=HEARTBEAT_TIMEOUT, **RETRY)
async def plain_async(spec):
    return await _run_async(spec)


@activity(
    name="chaos_sticky",
    sticky_to_worker=True,
    heartbeat_timeout=STICKY_HEARTBEAT_TIMEOUT,
    **RETRY,
)
def sticky(spec):
    return _run_sync(spec)


@activity(
    name="chaos_sticky_async",
    sticky_to_worker=True,
    heartbeat_timeout=STICKY_HEARTBEAT_TIMEOUT,
    **RETRY,
)
async def sticky_async(spec):
    return await _run_async(spec)
