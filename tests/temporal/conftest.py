"""A Temporal dev server (``temporal server start-dev``, in memory, on loopback) for the tests
of ``pool.temporal``, and worker hosts as OS processes. Skipped without temporalio."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Output:
    """Reads a process's output on a thread (a chatty process never blocks on a full pipe);
    :meth:`wait_for` waits for a line."""

    def __init__(self, proc: subprocess.Popen[str], pipe: Any, label: str) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.echo = False
        self.label = label
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: Any) -> None:
        with pipe:
            for line in pipe:
                if self.echo:
                    sys.stderr.write(f"[{self.label}] {line}")
                self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, marker: str) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                break
            self.seen.append(line)
            if marker in line:
                self.echo = True  # from now on, what it says goes to the test's stderr
                return line
        self.proc.kill()
        self.proc.wait()
        pytest.fail(f"{marker!r} never came ({self.proc.args}):\n{''.join(self.seen)}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def temporal_address() -> Iterator[str]:
    """host:port of a dev server started for this test session."""
    pytest.importorskip("temporalio", reason="the temporal extra is not installed")
    from pool.temporal import dev_server_path

    try:
        binary = dev_server_path()
    except FileNotFoundError as exc:
        pytest.skip(f"no Temporal dev server binary: {exc}")
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _Output(proc, proc.stdout, "temporal").wait_for("Temporal Server:")
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)


HostFactory = Callable[[str, str], subprocess.Popen[str]]


@pytest.fixture
def start_host() -> Iterator[HostFactory]:
    """``start_host(queue, name)``: a worker host process (tests/temporal/host.py), ready."""
    started: list[subprocess.Popen[str]] = []

    def start(address_queue: str, name: str) -> subprocess.Popen[str]:
        address, queue = address_queue.rsplit("/", 1)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.temporal.host", address, queue, name],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        _Output(proc, proc.stderr, f"host {name}").wait_for("activitypool worker ready")
        return proc

    yield start
    for proc in started:
        _stop(proc)
        with contextlib.suppress(ProcessLookupError):  # a host's pool dies with its group
            os.killpg(proc.pid, signal.SIGKILL)


# temporalio's native (Tokio) threads can crash the interpreter's teardown with "Fatal Python
# error: PyGILState_Release ... finalizing" (an open SDK bug, temporalio/sdk-python#300), which
# would turn a green run into SIGABRT. When these tests used temporalio, the session leaves with
# its own exit status once every other plugin has finished.
_exit_status: int | None = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _exit_status is None or "temporalio.bridge.temporal_sdk_bridge" not in sys.modules:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status)
