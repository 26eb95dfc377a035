"""What an activity starts dies with its worker: whatever ends the worker, under every start
method, within a second. The activity leaves a plain child, a child in a session of its own
(out of the worker's process group), a double-forked daemon and a shell's background job (both
orphaned while the worker still runs).

The default run covers every reason under the default start method and a few under the others;
``--slow`` runs the whole start method x reason matrix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import psutil
import pytest

import sdk
from pool import Pool
from pool._tree import marked
from tests.integration import orphan_activities as oa

pytestmark = pytest.mark.timeout(30)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRACE = 1.0  # what the contract allows between the worker's end and its descendants'


def _alive(pid: int) -> bool:
    # an orphan's zombie waits for init to reap it; it is dead all the same
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _still_alive_after(pids: list[int], grace: float = GRACE) -> list[int]:
    """The pids still running ``grace`` seconds from now (killed then, so none leaks)."""
    deadline = time.monotonic() + grace
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.005)
        alive = [pid for pid in pids if _alive(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return alive


def _marked_by(supervisor: int) -> list[int]:
    """Live processes carrying the marker of a pool of ``supervisor``."""
    return [pid for pid, pool_id in marked().items() if pool_id.startswith(f"{supervisor}.")]


def _read_pids(pidfile: str) -> list[int]:
    with open(pidfile) as f:
        return [int(p) for p in f.read().split()]


# -- the worker ends inside a running pool, or the pool closes --------------------------------


def with_exit(method: str, tmp: str) -> list[int]:
    with Pool([oa], workers=1, start_method=method) as pool:
        pids = pool.run(oa.leave_descendants)
        time.sleep(0.05)
        assert all(_alive(pid) for pid in pids)  # (they do run while their worker does)
    return pids


def close_cancel(method: str, tmp: str) -> list[int]:
    pool = Pool([oa], workers=2, start_method=method, cancel_grace=0.05)
    with pool:
        pids = pool.run(oa.leave_descendants)
        pool.close(cancel=True)
    return pids


def recycle(method: str, tmp: str) -> list[int]:
    with Pool([oa], workers=1, start_method=method, max_tasks_per_worker=1) as pool:
        pids = pool.run(oa.leave_descendants)
        # the pool stays open: the retired worker's descendants must go with it, not the pool
        assert not _still_alive_after(pids)
        assert pool.run(oa.leave_descendants)  # (and the replacement works)
    return pids


def _ending(how: str) -> Callable[[str, str], list[int]]:
    def end_worker(method: str, tmp: str) -> list[int]:
        pidfile = os.path.join(tmp, "pids")
        with Pool([oa], workers=1, start_method=method) as pool:
            with pytest.raises(sdk.ActivityError):
                pool.run(oa.leave_descendants_then, how, pidfile)
            pids = _read_pids(pidfile)
            # the pool stays open: the descendants go with the worker
            assert not _still_alive_after(pids)
        return pids

    return end_worker


# -- the supervisor dies ----------------------------------------------------------------------

SUPERVISOR = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from pool import Pool
    from tests.integration import orphan_activities as oa
    with Pool([oa], workers=2, start_method={method!r}) as pool:
        print(" ".join(map(str, pool.run(oa.leave_descendants))), flush=True)
        time.sleep(3600)
    """
)


def _supervisor_dies(signum: int) -> Callable[[str, str], list[int]]:
    def kill_supervisor(method: str, tmp: str) -> list[int]:
        script = SUPERVISOR.format(root=ROOT, method=method)
        with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            pids = [int(p) for p in proc.stdout.readline().split()]
            assert _marked_by(proc.pid)  # (what the activity started carries the pool marker)
            os.kill(proc.pid, signum)
            proc.wait()
        deadline = time.monotonic() + GRACE
        while _marked_by(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not _marked_by(proc.pid), "processes of the dead supervisor's pool outlived it"
        return pids

    return kill_supervisor


REASONS: dict[str, Callable[[str, str], list[int]]] = {
    "with-exit": with_exit,
    "close-cancel": close_cancel,
    "recycle": recycle,
    "deadline-kill": _ending("hang"),
    "crash-exit": _ending("exit"),
    "crash-sigkill": _ending("sigkill"),
    "supervisor-sigkill": _supervisor_dies(signal.SIGKILL),
    "supervisor-sigterm": _supervisor_dies(signal.SIGTERM),
}
METHODS = ["forkserver", "fork", "spawn"]
# the default run: every reason under the default method, the riskiest ones under the others
DEFAULT_RUN = {
    *(("forkserver", reason) for reason in REASONS),
    *(
        (method, reason)
        for method in ("fork", "spawn")
        for reason in ("with-exit", "crash-sigkill", "supervisor-sigkill")
    ),
}


def _cases() -> list[object]:
    return [
        pytest.param(
            method,
            reason,
            id=f"{method}-{reason}",
            marks=() if (method, reason) in DEFAULT_RUN else pytest.mark.slow,
        )
        for method in METHODS
        for reason in REASONS
    ]


@pytest.mark.parametrize(("method", "reason"), _cases())
def test_what_an_activity_started_dies_with_its_worker(method, reason, tmp_path):
    pids = REASONS[reason](method, str(tmp_path))
    assert len(pids) == 4 and all(pid > 0 for pid in pids)
    alive = _still_alive_after(pids)
    assert not alive, f"outlived their worker ({method}, {reason}): {alive} of {pids}"


@pytest.mark.parametrize("children_files", [True, False], ids=["proc-children", "stat-scan"])
def test_the_process_tree_is_read_with_or_without_proc_children_files(monkeypatch, children_files):
    from pool import _tree

    if not os.path.exists(f"/proc/self/task/{os.getpid()}/children"):
        pytest.skip("this kernel has no /proc/PID/task/TID/children")
    monkeypatch.setattr(_tree, "_CHILDREN_FILES", children_files)
    # a shell with a child of its own (which has the marker): a tree two levels deep
    env = {**os.environ, "ACTIVITYPOOL_POOL_ID": "tree-test"}
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], env=env)
    try:
        deadline = time.monotonic() + 5
        while not _tree.children(shell.pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        (sleeper,) = _tree.children(shell.pid)
        assert shell.pid in _tree.children(os.getpid())
        assert {shell.pid, sleeper} <= set(_tree.descendants(os.getpid()))
        assert _tree.marked().get(sleeper) == "tree-test"
        _tree.kill_tree(shell.pid)
        assert shell.wait(5) == -signal.SIGKILL
        assert not _still_alive_after([sleeper], 1.0)
    finally:
        shell.kill()
        shell.wait()
