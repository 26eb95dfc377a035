"""Cancellation, shutdown, and the supervisor dying."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import sdk
from pool import Pool
from tests.integration import activities as acts

pytestmark = pytest.mark.timeout(30)


def _started(marker) -> bool:
    return os.path.exists(str(marker) + ".started")


async def test_cancel_async_activity_gets_cancelled_error(tmp_path):
    marker = tmp_path / "m"
    async with Pool([acts], workers=1) as pool:
        task = asyncio.ensure_future(pool.execute(acts.async_wait_forever, str(marker)))
        while not _started(marker):  # cancel a running attempt, not a queued call
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 5
        while not marker.exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert marker.read_text() == "cancelled"
        assert await pool.execute(acts.add, 1, 1) == 2


def test_cancel_future_sync_activity_sees_is_cancelled(tmp_path):
    marker = tmp_path / "m"
    with Pool([acts], workers=1) as pool:
        pid = pool.worker_pids()[0]
        fut = pool.submit(acts.cooperative, str(marker))
        while not _started(marker):
            time.sleep(0.005)
        assert fut.cancel()
        deadline = time.monotonic() + 5
        while not marker.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert marker.read_text() == "saw cancel"
        assert pool.run(acts.pid_of) == pid  # it stopped in time: no kill


def test_cancel_kills_after_grace_when_ignored(tmp_path):
    marker = tmp_path / "m"
    with Pool([acts], workers=1, cancel_grace=0.1) as pool:
        pid = pool.worker_pids()[0]
        fut = pool.submit(acts.ignores_cancel, str(marker))
        while not _started(marker):
            time.sleep(0.005)
        fut.cancel()
        t0 = time.monotonic()
        assert pool.run(acts.pid_of) != pid
        assert time.monotonic() - t0 < 3


def test_cancel_queued_call_never_runs():
    with Pool([acts], workers=1, prefetch=0) as pool:
        busy = pool.submit(acts.sleep_for, 0.2)
        queued = pool.submit(acts.add, 1, 1)
        assert queued.cancel()
        assert busy.result(timeout=5)
        assert pool.stats().completed == 1


def test_close_drains_in_flight_work():
    pool = Pool([acts], workers=2)
    with pool:
        futs = [pool.submit(acts.sleep_for, 0.05) for _ in range(6)]
        pids = pool.worker_pids()
    assert all(f.done() and not f.exception() for f in futs)
    for pid in pids:
        assert not psutil.pid_exists(pid)


async def test_exit_with_error_cancels_outstanding_work():
    with pytest.raises(RuntimeError):
        async with Pool([acts], workers=1) as pool:
            task = asyncio.ensure_future(pool.execute(acts.ignores_cancel))
            await asyncio.sleep(0.1)
            pids = pool.worker_pids()
            raise RuntimeError("user code failed")
    with pytest.raises(Exception):  # noqa: B017 - PoolClosedError or cancellation
        await task
    for pid in pids:
        assert not psutil.pid_exists(pid)


def _alive(pid: int) -> bool:
    # an orphan's zombie waits for init to reap it; it is dead all the same
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


SUPERVISOR = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from pool import Pool
    from tests.integration import activities as acts
    with Pool([acts], workers=2, start_method={method!r}) as pool:
        pool.submit(acts.hang_in_c_holding_gil)  # one worker stuck in C, holding its GIL
        time.sleep(0.05)
        print(" ".join(map(str, pool._process_pids())), flush=True)  # workers, fork server
        time.sleep(3600)
    """
)


@pytest.mark.parametrize(("method", "processes"), [("forkserver", 3), ("spawn", 3)])
def test_workers_die_within_a_second_of_supervisor_sigkill(method, processes):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = SUPERVISOR.format(root=root, method=method)
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == processes
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        alive = pids
        while alive and time.monotonic() - t0 < 1.0:
            alive = [p for p in pids if _alive(p)]
            time.sleep(0.01)
        assert not alive, f"workers outlived the supervisor: {alive}"


def test_blocking_run_is_answered_when_the_pool_is_cancelled(tmp_path):
    import threading

    marker = tmp_path / "m"
    outcome: list[BaseException] = []
    pool = Pool([acts], workers=1)
    pool.__enter__()

    def blocked() -> None:
        try:
            pool.run(acts.ignores_cancel, str(marker))
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=blocked)
    t.start()
    while not _started(marker):
        time.sleep(0.005)
    pool.close(cancel=True)
    t.join(timeout=10)
    assert not t.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], sdk.PoolClosedError)


def test_workers_that_never_become_ready_break_the_pool_instead_of_looping():
    from tests.integration import worker_hangs_on_import

    t0 = time.monotonic()
    with pytest.raises(sdk.WorkerCrashedError, match="did not become ready"):
        with Pool([worker_hangs_on_import], workers=1, start_timeout=0.3):
            pass
    # three start timeouts, then it gives up (no endless respawning)
    assert time.monotonic() - t0 < 10
