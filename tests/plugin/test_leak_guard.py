"""The leak guard names each process and pipe left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from pool import Pool
from pool._tree import POOL_MARKER
from pool.pytest_plugin import LeakGuard
from tests.integration import orphan_activities as oa

pytestmark = pytest.mark.timeout(10)


class FakePool:
    """Stands in for a pool whose close forgot a worker."""

    def __init__(self, pids: list[int], pool_id: str = "fake") -> None:
        self.pids = pids
        self.pool_id = pool_id

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


def _orphan(pool_id: str) -> int:
    """A ``sleep`` adopted by init (its shell exits at once), carrying ``pool_id`` as a pool's
    processes and what they start do."""
    env = {**os.environ, POOL_MARKER: pool_id}
    script = "sleep 60 >/dev/null 2>&1 & echo $!"
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, check=True)
    return int(out.stdout)


def _gone(pid: int, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


def test_a_leftover_adopted_by_init_is_found_by_its_pool_marker_and_killed():
    guard = LeakGuard()
    guard.watch(FakePool([], pool_id="leak-guard-test"))  # type: ignore[arg-type]
    orphan = _orphan("leak-guard-test")
    try:
        assert orphan not in {p.pid for p in psutil.Process().children(recursive=True)}
        problems = guard.check(settle=0.05)
        assert len(problems) == 1
        assert problems[0].startswith(
            f"process {orphan} started by pool leak-guard-test is still running, adopted by pid"
        )
        assert _gone(orphan)  # killed by the guard
    finally:
        with contextlib.suppress(OSError):
            os.kill(orphan, signal.SIGKILL)


def test_an_escaped_process_of_any_closed_pool_of_this_process_is_found():
    guard = LeakGuard()  # watching nothing: found as this process's pool, out of our tree
    orphan = _orphan(f"{os.getpid()}.999999")
    try:
        problems = guard.check(settle=0.05)
        assert len(problems) == 1 and problems[0].startswith(f"process {orphan} started by pool")
    finally:
        with contextlib.suppress(OSError):
            os.kill(orphan, signal.SIGKILL)


def test_a_marker_of_another_process_pools_is_not_ours():
    orphan = _orphan("1.1")  # (pid 1 is no pool of ours)
    try:
        assert LeakGuard().check(settle=0.0) == []
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_what_escapes_when_the_fork_server_itself_is_sigkilled_is_caught():
    # the one case the pool cannot cover (see docs/operations.md): its workers die with the
    # fork server, and what they had goes to init. The guard still finds all of it.
    guard = LeakGuard()
    with Pool([oa], workers=1) as pool:
        guard.watch(pool)
        pids = pool.run(oa.leave_descendants)
        (server,) = set(pool._process_pids()) - set(pool.worker_pids())
        os.kill(server, signal.SIGKILL)
    problems = guard.check(settle=0.1)
    for pid in pids:
        assert any(p.startswith(f"process {pid} started by pool {pool.pool_id}") for p in problems)
        assert _gone(pid)
