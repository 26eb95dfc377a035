"""Activities the integration tests run in real workers (module level: workers import them)."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sdk import ApplicationError, Depends, RateLimit, activity

FAST = {"retry_policy_initial_interval": 0.01}


@activity
def add(a: int, b: int) -> int:
    return a + b


@activity
def echo(x):
    return x


@activity
def pid_of() -> int:
    return os.getpid()


@activity(name="custom_activity_name")
def renamed(x: int) -> int:
    return x * 10


@activity
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@activity
def sleep_for(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@activity(retry_policy_max_attempts=1)
def write_pid_and_sleep(path: str, seconds: float) -> int:
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


@activity(retry_policy_max_attempts=5, **FAST)
def flaky(failures: int) -> int:
    """Fails its first ``failures`` attempts, then returns the attempt number."""
    attempt = activity.info().attempt
    if attempt <= failures:
        raise ValueError(f"attempt {attempt} fails")
    return attempt


@activity(retry_policy_max_attempts=3, retry_policy_initial_interval=0.05)
def always_fails() -> None:
    raise ValueError("always")


@activity(retry_policy_max_attempts=5, **FAST)
def not_retryable() -> None:
    raise ApplicationError("stop now", "detail", non_retryable=True)


@activity(retry_policy_max_attempts=5, non_retryable_error_types=[KeyError], **FAST)
def key_error() -> None:
    raise KeyError("missing")


@activity(retry_policy_max_attempts=2, retry_policy_initial_interval=10.0)
def explicit_delay() -> int:
    if activity.info().attempt == 1:
        raise ApplicationError("again soon", next_retry_delay=0.02)
    return activity.info().attempt


@activity(start_to_close_timeout=0.1, retry_policy_max_attempts=1)
def hang_sleep() -> None:
    time.sleep(3600)


@activity(start_to_close_timeout=0.1, retry_policy_max_attempts=1)
def hang_busy() -> None:
    while True:
        pass


@activity(start_to_close_timeout=0.1, retry_policy_max_attempts=1)
def hang_in_c_holding_gil() -> None:
    # PyDLL keeps the GIL across the call: no Python code runs in this process meanwhile
    ctypes.PyDLL(None).sleep(3600)


@activity(heartbeat_timeout=0.1, start_to_close_timeout=10, retry_policy_max_attempts=1)
def beat_then_stall(beats: int) -> None:
    for i in range(beats):
        activity.heartbeat({"done": i + 1})
        time.sleep(0.01)
    time.sleep(3600)


@activity(heartbeat_timeout=0.1, start_to_close_timeout=10, retry_policy_max_attempts=1)
def never_beats() -> None:
    time.sleep(3600)


@activity(heartbeat_timeout=0.25, start_to_close_timeout=10, retry_policy_max_attempts=1)
def beats_steadily(seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        activity.heartbeat("alive")
        time.sleep(0.01)
    return "finished"


@activity(heartbeat_timeout=0.1, retry_policy_max_attempts=1)
def beat_then_hold_gil() -> None:
    activity.heartbeat("first")
    time.sleep(0.01)
    activity.heartbeat("latest")  # held back by the coalescing window, flushed by the thread
    time.sleep(0.15)  # the flusher runs while we sleep
    ctypes.PyDLL(None).sleep(3600)


@activity(heartbeat_timeout=1.0, retry_policy_max_attempts=3, **FAST)
def resumable(total: int) -> dict:
    """Dies by SIGKILL half way on attempt 1; attempt 2 resumes from the heartbeat details."""
    info = activity.info()
    start = info.heartbeat_details["next"] if info.heartbeat_details else 0
    for i in range(start, total):
        activity.heartbeat({"next": i + 1})
        if info.attempt == 1 and i == total // 2:
            time.sleep(0.3)  # the flusher sends the trailing details within one 50 ms window
            os.kill(os.getpid(), signal.SIGKILL)
    return {"started_at": start, "attempt": info.attempt}


@activity(schedule_to_close_timeout=0.3, retry_policy_max_attempts=0, **FAST)
def schedule_limited() -> None:
    raise ValueError("keeps failing")


@activity(start_to_close_timeout=0.3, retry_policy_max_attempts=1)
def spawn_child_and_hang(pidfile: str, own_session: bool = False) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=own_session
    )
    Path(pidfile).write_text(str(child.pid))
    time.sleep(3600)


@activity(retry_policy_max_attempts=1)
def exit_with(code: int) -> None:
    sys.stdout.flush()
    os._exit(code)


@activity(retry_policy_max_attempts=1)
def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@activity(retry_policy_max_attempts=2, **FAST)
def kill_self_first_attempt() -> int:
    if activity.info().attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return activity.info().attempt


@activity(retry_policy_max_attempts=1)
def unpicklable_result():
    return threading.Lock()


class Unpicklable(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.lock = threading.Lock()


@activity(retry_policy_max_attempts=1)
def raise_unpicklable() -> None:
    raise Unpicklable("has a lock")


class BadInit(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(a)


@activity(retry_policy_max_attempts=1)
def raise_bad_init() -> None:
    raise BadInit("one", "two")


@activity
def chatty(n: int) -> int:
    print(f"stdout line from pid {os.getpid()}")
    print("stderr line", file=sys.stderr)
    logging.getLogger("user").warning("a log record")
    os.write(1, b"raw fd write\n")
    return n


@activity(sticky_to_worker=True)
def load_model(name: str) -> int:
    activity.session_state()["model"] = name
    activity.session_state()["calls"] = 0
    return os.getpid()


@activity(sticky_to_worker=True)
def predict(x: str) -> tuple:
    state = activity.session_state()
    state["calls"] = state.get("calls", 0) + 1
    return os.getpid(), state.get("model"), state["calls"], x


@activity(sticky_to_worker=True, retry_policy_max_attempts=3, **FAST)
def sticky_flaky() -> tuple:
    if activity.info().attempt == 1:
        raise ValueError("first attempt")
    return os.getpid(), activity.info().attempt


@activity(sticky_to_worker=True, retry_policy_max_attempts=3)
def sticky_crash() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@activity(sticky_to_worker=True, start_to_close_timeout=0.1, retry_policy_max_attempts=3)
def sticky_hang() -> None:
    time.sleep(3600)


@activity(sticky_to_worker=True)
def sticky_sleep(seconds: float, marker: str = "") -> int:
    if marker:
        Path(marker + ".started").touch()
    time.sleep(seconds)
    return os.getpid()


@activity(retry_policy_max_attempts=1)
async def async_wait_forever(marker: str) -> None:
    Path(marker + ".started").touch()
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        Path(marker).write_text("cancelled")
        raise


@activity(retry_policy_max_attempts=1)
def cooperative(marker: str) -> str:
    Path(marker + ".started").touch()
    while not activity.is_cancelled():
        time.sleep(0.005)
    Path(marker).write_text("saw cancel")
    return "stopped"


@activity(retry_policy_max_attempts=1)
def ignores_cancel(marker: str = "") -> None:
    if marker:
        Path(marker + ".started").touch()
    time.sleep(3600)


@activity
def outer(x: int) -> tuple:
    # a nested call: plain call in this process, same attempt
    return inner(x), os.getpid(), activity.info().attempt


@activity
def inner(x: int) -> tuple:
    return x + 1, os.getpid(), activity.info().activity_id


def make_resource():
    teardown_dir = os.environ.get("AP_TEST_TEARDOWN_DIR")
    resource = {"pid": os.getpid(), "made_at": time.monotonic()}
    yield resource
    if teardown_dir:
        Path(teardown_dir, f"teardown-{os.getpid()}").write_text("done")


@activity
def uses_resource(x: int, res=Depends(make_resource)) -> tuple:
    return x, res["pid"], id(res)


@activity
def info_fields() -> dict:
    info = activity.info()
    return {
        "attempt": info.attempt,
        "worker_id": info.worker_id,
        "pid": info.pid,
        "session_id": info.session_id,
        "deadline": info.deadline,
        "name": info.name,
        "heartbeat_timeout": info.heartbeat_timeout,
    }


@activity(retry_policy_max_attempts=1)
def big_payload(data: bytes) -> bytes:
    return data[::-1]


@activity(retry_policy_max_attempts=1)
def allocate_forever() -> None:
    chunks = []
    while True:
        chunks.append(bytearray(50 * 1024 * 1024))


@activity
def imported_modules() -> list:
    return sorted(sys.modules)


@activity(retry_policy_max_attempts=3, **FAST)
def attempt_of(x: int) -> tuple:
    return x, activity.info().attempt, os.getpid()


@activity
def memfd_segments() -> int:
    """Shared-memory segments this worker holds open or mapped (see tests: shared memory)."""
    return count_memfd_segments()


def count_memfd_segments() -> int:
    count = 0
    for n in os.listdir("/proc/self/fd"):
        try:
            count += "memfd:activitypool" in os.readlink(f"/proc/self/fd/{n}")
        except OSError:
            pass
    with open("/proc/self/maps") as maps:
        return count + sum("memfd:activitypool" in line for line in maps)


@activity(retry_policy_max_attempts=0, retry_policy_initial_interval=0.001)
def chaos_array(arr):
    """Chaos with payloads in shared memory: a copy, scaled, so that corruption shows."""
    return arr * 2


@activity(retry_policy_max_attempts=1)
def array_sum(arr) -> float:
    return float(arr.sum())


@activity
def env_var(name: str) -> str | None:
    return os.environ.get(name)


@activity(
    retry_policy_max_attempts=0, retry_policy_initial_interval=0.001, start_to_close_timeout=0.2
)
def chaos_echo(x: int) -> int:
    time.sleep(0.0005)
    return x


@activity(rate_limit=RateLimit(time_window_in_sec=0.2, max_execution=3))
def rate_limited_now(x: int) -> float:
    return time.monotonic()


@activity(retry_policy_max_attempts=1)
def echo_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError(f"item {x} is bad")
    return x


@activity
def write_at_exit(path: str) -> int:
    """Register an atexit handler in this worker that leaves ``path`` behind."""
    import atexit

    atexit.register(lambda: Path(path).write_text(str(os.getpid())))
    return os.getpid()


@activity(retry_policy_max_attempts=1)
def exit_if(code: int) -> int:
    """Returns at once, or exits the worker with ``code`` (also at once)."""
    if code:
        os._exit(code)
    return 0


@activity
def sleep_if(seconds: float) -> float:
    """Returns at once when ``seconds`` is 0 (unlike ``time.sleep(0)``, which yields the CPU)."""
    if seconds:
        time.sleep(seconds)
    return seconds


def _sticky_step(path: str, tag: str, fail_first: bool) -> list:
    """Note this attempt in ``path`` and in the session's state; fail the first attempt if
    asked. Returns the session's record of attempts so far."""
    attempt = activity.info().attempt
    with open(path, "a") as f:
        f.write(f"{tag}{attempt}\n")
    order = activity.session_state().setdefault("order", [])
    order.append(f"{tag}{attempt}")
    if fail_first and attempt == 1:
        raise ValueError("first attempt")
    return list(order)


@activity(sticky_to_worker=True, retry_policy_max_attempts=3, **FAST)
def sticky_step(path: str, tag: str, fail_first: bool = False) -> list:
    return _sticky_step(path, tag, fail_first)


@activity(sticky_to_worker=True, retry_policy_max_attempts=3, retry_policy_initial_interval=5.0)
def sticky_step_slow_retry(path: str, tag: str, fail_first: bool = False) -> list:
    return _sticky_step(path, tag, fail_first)


@activity
def noted_nap(job: tuple) -> tuple:
    """``job`` is (path, tag, seconds): note this execution in ``path`` (a line each), sleep,
    and return the pid and when it ended (CLOCK_MONOTONIC: one clock for every process)."""
    path, tag, seconds = job
    with open(path, "a") as f:
        f.write(tag + "\n")
    time.sleep(seconds)
    return os.getpid(), time.monotonic()
