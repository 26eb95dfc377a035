"""The leak guard names each process and pipe left behind."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from pool.pytest_plugin import LeakGuard

pytestmark = pytest.mark.timeout(10)


class FakePool:
    """Stands in for a pool whose close forgot a worker."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def worker_pids(self) -> list[int]:
        return self.pids


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_nothing_left_means_no_problem():
    assert LeakGuard().check(settle=0.0) == []


def test_a_worker_left_running_is_named_and_killed():
    guard = LeakGuard()
    proc = _sleeper()
    guard.watch(FakePool([proc.pid]))  # type: ignore[arg-type]
    problems = guard.check(settle=0.05)
    assert len(problems) == 1
    assert f"worker process {proc.pid} of the pool is still running" in problems[0]
    proc.wait(2)
    assert not psutil.pid_exists(proc.pid)  # killed (and reaped) by the guard


def test_an_unreaped_worker_is_named():
    guard = LeakGuard()
    proc = _sleeper()
    guard.watch(FakePool([proc.pid]))  # type: ignore[arg-type]
    proc.kill()
    try:
        problems = guard.check(settle=0.05)
        assert problems == [f"worker process {proc.pid} of the pool exited but was never reaped"]
    finally:
        proc.wait()


def test_any_new_process_is_named():
    guard = LeakGuard()
    proc = _sleeper()
    problems = guard.check(settle=0.05)
    assert len(problems) == 1 and f"process {proc.pid} started during the test" in problems[0]
    proc.wait(2)


def test_a_pipe_fd_left_open_is_named():
    guard = LeakGuard()
    r, w = os.pipe()
    try:
        problems = guard.check(settle=0.05)
        assert problems == [
            f"pipe fd {r} ({os.readlink(f'/proc/self/fd/{r}')}) is still open",
            f"pipe fd {w} ({os.readlink(f'/proc/self/fd/{w}')}) is still open",
        ]
    finally:
        os.close(r)
        os.close(w)
    assert guard.check(settle=0.0) == []


def test_a_leak_that_clears_within_the_settle_time_is_no_leak():
    guard = LeakGuard()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert guard.check(settle=5.0) == []
    finally:
        proc.wait()
