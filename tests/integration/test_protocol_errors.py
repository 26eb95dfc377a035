"""A malformed frame, either way, ends that worker at once: never a silent skip or a hang.

From a worker: its attempt fails as a crash does (retried by its policy) and a replacement
starts. From the supervisor: the worker exits with ``PROTOCOL_ERROR_EXIT``."""

from __future__ import annotations

import logging
import os
import pickle
import select
import sys
import time
from pathlib import Path

import pytest

from pool import Pool
from pool._process import WorkerProcess, spawn_worker
from pool._protocol import FrameReader, Kind, encode_small
from pool._worker import PROTOCOL_ERROR_EXIT
from sdk import ActivityError, WorkerCrashedError
from tests.integration import stdio_activities as acts

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
# Well under the activities' start-to-close deadline (5 minutes): a call that waited for it
# would fail this bound; one failed at the malformed frame passes it even on a loaded machine.
PROMPT = 10.0


def _no_loop_errors(caplog: pytest.LogCaptureFixture) -> None:
    """The loop's exception handler saw nothing (an error escaping a reader callback)."""
    leaked = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert leaked == []
    assert not any("Exception in callback" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("garbage", [64, 7])
def test_garbage_in_a_reply_pipe_fails_the_call_at_once_and_replaces_the_worker(garbage, caplog):
    with caplog.at_level(logging.ERROR), Pool([acts], workers=1) as pool:
        first = pool.run(acts.this_pid)
        began = time.monotonic()
        with pytest.raises(ActivityError) as caught:
            pool.run(acts.garble_reply_once, garbage)
        assert time.monotonic() - began < PROMPT
        cause = caught.value.__cause__
        assert isinstance(cause, WorkerCrashedError) and "protocol error" in str(cause)
        assert cause.pid == first
        assert pool.run(acts.this_pid) != first  # a replacement serves the next call
    assert any("malformed frame" in r.getMessage() for r in caplog.records)
    _no_loop_errors(caplog)


@pytest.mark.parametrize("garbage", [64, 7])
def test_a_call_whose_worker_sent_garbage_is_retried_by_its_policy(garbage, caplog):
    with caplog.at_level(logging.ERROR), Pool([acts], workers=1) as pool:
        began = time.monotonic()
        assert pool.run(acts.garble_reply, garbage, 42) == 42  # attempt 2, on the replacement
        assert time.monotonic() - began < PROMPT
    _no_loop_errors(caplog)


# -- the other way: the supervisor's frames, as a worker reads them ------------------------------


def _start_worker() -> WorkerProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return spawn_worker(env)


def _exit_code(proc: WorkerProcess, timeout: float) -> int | None:
    """The worker's exit code once it has exited within ``timeout`` (None: it has not)."""
    if not proc.exited_by_pidfd(timeout):
        return None
    proc.wait()
    return proc.exitcode


def _output(proc: WorkerProcess) -> bytes:
    out = b""
    while select.select([proc.output], [], [], 0)[0]:
        data = os.read(proc.output, 65536)
        if not data:
            break
        out += data
    return out


def _ready(proc: WorkerProcess) -> None:
    init = {"worker_id": 1, "sys_path": [str(ROOT), *sys.path], "preload": [], "main_path": None}
    os.write(proc.to_worker, encode_small(Kind.INIT, 0, pickle.dumps(init)))
    reader = FrameReader()
    frames: list = []
    while not frames:
        assert select.select([proc.from_worker], [], [], 10)[0], "no READY"
        frames = reader.read(proc.from_worker) or []
    assert frames[0].kind is Kind.READY


def _stop(proc: WorkerProcess) -> None:
    proc.kill_tree()
    proc.wait()
    proc.close_fds()


@pytest.mark.parametrize("garbage", [b"\xff" * 64, b"\xff" * 7 + b"\0" * 17, b"\0" * 24])
def test_a_worker_sent_a_malformed_frame_exits_at_once(garbage):
    proc = _start_worker()
    try:
        _ready(proc)
        os.write(proc.to_worker, garbage)
        assert _exit_code(proc, PROMPT) == PROTOCOL_ERROR_EXIT
        assert b"malformed frame from the supervisor" in _output(proc)
    finally:
        _stop(proc)


def test_a_malformed_frame_read_while_an_activity_runs_ends_the_worker_not_the_activity():
    """Read by the SIGUSR1 handler, inside the activity: an exception there would be the
    activity's to catch (this one catches everything and would run on)."""
    proc = _start_worker()
    try:
        _ready(proc)
        meta = (acts.__name__, "swallow_everything", "swallow_everything", "1", 1, None,
                None, None, None, None)  # fmt: skip
        run = encode_small(Kind.RUN, 1, pickle.dumps(meta), pickle.dumps(((30.0,), {})))
        os.write(proc.to_worker, run)
        time.sleep(0.2)  # (running by now, or soon: the garbage is read by the handler either way)
        os.write(proc.to_worker, b"\xff" * 64)
        proc.signal_worker(10)  # SIGUSR1: read your pipe
        assert _exit_code(proc, PROMPT) == PROTOCOL_ERROR_EXIT
    finally:
        _stop(proc)
