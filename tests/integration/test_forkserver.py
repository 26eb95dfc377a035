"""Workers come from the pool's fork server by default, or are spawned; a dead fork server is
replaced by spawning, and nothing it forked outlives the pool."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

import psutil
import pytest

import sdk
from pool import Pool
from pool._forkserver import _wait_status
from tests.integration import activities as acts
from tests.integration import warm_activities

pytestmark = pytest.mark.timeout(60)


def _fork_server_pid(pool: Pool) -> int | None:
    others = set(pool._process_pids()) - set(pool.worker_pids())
    return others.pop() if others else None


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_workers_by_either_method_run_and_report_their_exit(method):
    with Pool([acts], workers=2, start_method=method) as pool:
        server = _fork_server_pid(pool)
        parents = {psutil.Process(pid).ppid() for pid in pool.worker_pids()}
        # under spawn too: the server spawns the workers (and reaps what they leave behind)
        assert server is not None and parents == {server}
        assert psutil.Process(server).ppid() == os.getpid()
        fresh = {
            "pool._worker" in " ".join(psutil.Process(p).cmdline()) for p in pool.worker_pids()
        }
        assert fresh == {method == "spawn"}  # a spawned worker is a fresh interpreter
        assert pool.run(acts.add, 2, 3) == 5
        with pytest.raises(sdk.ActivityError) as info:
            pool.run(acts.exit_with, 7)
        crash = info.value.__cause__
        assert isinstance(crash, sdk.WorkerCrashedError)
        assert crash.exitcode == 7 and crash.signal is None
        with pytest.raises(sdk.ActivityError) as info:
            pool.run(acts.kill_self)
        crash = info.value.__cause__
        assert isinstance(crash, sdk.WorkerCrashedError)
        assert crash.signal == signal.SIGKILL and crash.exitcode is None
        assert list(pool.map(acts.echo, [1, 2, 3])) == [1, 2, 3]
        deadline = time.monotonic() + 10  # the second replacement may still be starting
        while len(pool.worker_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(pool.worker_pids()) == 2
    if server is not None:
        assert not psutil.pid_exists(server) or psutil.Process(server).status() == "zombie"


def test_a_killed_fork_server_is_replaced_by_spawning():
    events = []
    with Pool([acts], workers=2, on_event=events.append) as pool:
        assert pool.run(acts.add, 1, 1) == 2
        server = _fork_server_pid(pool)
        assert server is not None
        forked = set(pool.worker_pids())
        os.kill(server, signal.SIGKILL)  # its workers die with it (PR_SET_PDEATHSIG)
        deadline = time.monotonic() + 10
        while forked & set(pool.worker_pids()) or len(pool.worker_pids()) < 2:
            assert time.monotonic() < deadline, "the pool did not replace its workers"
            time.sleep(0.01)
        assert _fork_server_pid(pool) is None
        assert {psutil.Process(p).ppid() for p in pool.worker_pids()} == {os.getpid()}
        assert list(pool.map(acts.echo, range(20))) == list(range(20))
    assert sum(e.kind == "worker_exited" for e in events) >= 2
    for pid in forked:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def _exited_child(code: str) -> int:
    return os.posix_spawn(sys.executable, [sys.executable, "-c", code], dict(os.environ))


def test_wait_status_matches_waitpid():
    for code, check in [
        ("import os; os._exit(5)", lambda st: os.waitstatus_to_exitcode(st) == 5),
        (
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
            lambda st: os.WTERMSIG(st) == 9,
        ),
    ]:
        pid = _exited_child(code)
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # as the fork server does
        assert info is not None
        status = _wait_status(info)
        assert os.waitpid(pid, 0)[1] == status and check(status)


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("how", ["spawned", "forked from the caller"])
def test_a_fork_server_that_cannot_start_leaves_the_pool_spawning(monkeypatch, workers, how):
    from pool import _forkserver, _process, _spawner

    if how == "spawned":
        method = "forkserver"
        monkeypatch.setattr(_process, "FORKSERVER_BOOT", "import sys; sys.exit(3)")
    else:  # (the child exits at once: safe even if this process has threads)
        method = "fork"
        monkeypatch.setattr(_spawner, "caller_can_fork", lambda: True)
        monkeypatch.setattr(_forkserver, "main_forked", lambda *args: 3)
    with Pool([acts], workers=workers, start_method=method) as pool:
        assert _fork_server_pid(pool) is None
        assert {psutil.Process(p).ppid() for p in pool.worker_pids()} == {os.getpid()}
        assert list(pool.map(acts.echo, range(10))) == list(range(10))
        assert len(pool.worker_pids()) == workers


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_atexit_handlers_of_activity_modules_run_when_a_worker_stops(method, tmp_path):
    marker = tmp_path / "bye"
    with Pool([acts], workers=1, start_method=method) as pool:
        pid = pool.run(acts.write_at_exit, str(marker))
    assert marker.read_text() == str(pid)  # the worker ran it on its way out


def test_a_spawned_fork_server_imports_the_stdlib_modules_workers_need():
    # a fresh fork server has neither module. `decimal`, which the activity module imports
    # itself, it imports before the first fork; `fractions`, imported by a module the activity
    # module imports, the first worker reports at READY, and a replacement has it
    with Pool([warm_activities], workers=1) as pool:
        assert pool._sup is not None and pool._sup.spawner.forkserver_pid() is not None
        assert not pool._sup.spawner.forked_caller()
        first, preloaded = pool.run(warm_activities.preloaded)
        assert preloaded == {"decimal": True, "fractions": False}
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid, preloaded = pool.run(warm_activities.preloaded)
            if pid != first:
                break
        assert pid != first and preloaded == {"decimal": True, "fractions": True}


def test_stdlib_imported_by_names_modules_and_the_modules_of_imported_names():
    from pool._spawner import stdlib_imported_by

    found = stdlib_imported_by([warm_activities.__name__, "no.such.module"])
    assert {"decimal", "os", "sys"} <= set(found)
    assert "fractions" not in found  # only through warm_helper, which is not stdlib
    assert "tests" not in found and "sdk" not in found


def test_requests_a_failing_fork_server_never_answered_are_spawned(monkeypatch):
    # the first request is taken and never answered (the server died after reading it); the
    # second one fails to send: the pool drops the server and must spawn both, not just the
    # second (it used to wait for the first forever)
    from pool import _process
    from pool._process import ForkServer

    asked: list[object] = []

    def request(self: ForkServer, key: object) -> None:
        asked.append(key)
        if len(asked) == 1:
            child_fds, ours = _process._worker_pipes()
            for fd in child_fds:
                os.close(fd)
            self._pending[10**6] = (key, ours)
            return
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(ForkServer, "request", request)
    with Pool([acts], workers=3) as pool:
        assert len(asked) == 2
        assert {psutil.Process(p).ppid() for p in pool.worker_pids()} == {os.getpid()}
        assert len(pool.worker_pids()) == 3
        assert list(pool.map(acts.echo, range(6))) == list(range(6))


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_the_fork_servers_ready_report_is_handled_not_dropped(method, caplog):
    caplog.set_level("DEBUG", logger="activitypool")
    with Pool([acts], workers=1, start_method=method) as pool:
        assert pool.run(acts.echo, 1) == 1
        server = _fork_server_pid(pool)
    assert server is not None
    ready = [r for r in caplog.records if "is ready after" in r.getMessage()]
    assert [r.getMessage().split(" is ready")[0] for r in ready] == [
        f"the fork server (pid {server})"
    ]


def test_closing_a_fork_server_closes_our_ends_of_requests_it_never_answered():
    # a pool closed while a replacement worker is asked for: the pipes made for that worker
    # must not outlive the server (seen as three pipes left open after a session pool closed)
    from pool._config import PoolConfig
    from pool._process import ForkServer
    from pool._spawner import worker_environment

    def pipes() -> set[str]:
        found = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith("pipe:"):
                    found.add(target)
        return found

    before = pipes()
    server = ForkServer(worker_environment(PoolConfig(workers=1)))
    server.request(1)  # (not read: the answer never comes in)
    assert len(pipes() - before) == 3
    server.close()
    assert pipes() - before == set()
