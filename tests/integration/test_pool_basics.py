"""Calling activities in real workers: every calling style, validation, payloads, output."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time

import psutil
import pytest

import sdk
from pool import Pool
from tests.integration import activities as acts

pytestmark = pytest.mark.timeout(30)


async def test_async_with_execute_and_seed_style():
    async with Pool([acts], workers=2) as pool:
        assert await pool.execute(acts.add, 1, 2) == 3
        # seed style: awaiting an async activity inside the pool dispatches it
        assert await acts.async_add(2, 3) == 5
        assert await pool.execute(acts.async_add, 4, 5) == 9
        assert await pool.execute("custom_activity_name", 4) == 40
        pids = set(pool.worker_pids())
        assert len(pids) == 2
        assert await pool.execute(acts.pid_of) in pids
        assert os.getpid() not in pids


def test_sync_with_run_submit_map():
    with Pool([acts.add, acts.echo], workers=2) as pool:
        assert pool.run(acts.add, 2, 2) == 4
        fut = pool.submit(acts.add, 3, 3)
        assert isinstance(fut, concurrent.futures.Future)
        assert fut.result(timeout=10) == 6
        assert list(pool.map(acts.echo, range(200))) == list(range(200))
        assert list(pool.map(acts.echo, [])) == []


def test_entry_returns_with_ready_workers_and_exit_leaves_none():
    with Pool([acts], workers=2) as pool:
        pids = pool.worker_pids()
        assert len(pids) == 2
        for pid in pids:
            assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_plain_def_activity_called_directly_is_a_plain_call():
    with Pool([acts], workers=1):
        assert acts.pid_of() == os.getpid()


async def test_async_activity_without_pool_runs_in_process():
    assert await acts.async_add(1, 1) == 2


def test_input_validation_happens_in_the_caller():
    with Pool([acts], workers=1) as pool:
        assert pool.run(acts.add, "3", 4) == 7  # lax mode coerces, the coerced value is sent
        with pytest.raises(sdk.ActivityInputError):
            pool.run(acts.add, "not a number", 4)
        with pytest.raises(sdk.ActivityInputError):
            pool.run(acts.add, 1)
        with pytest.raises(sdk.ActivityInputError):
            pool.run("no_such_activity")
        with pytest.raises(sdk.ActivityInputError):
            pool.run(acts.echo, lambda: None)  # cannot be pickled
        assert pool.stats().completed == 1  # nothing else was dispatched
        assert pool.run(acts.add, 1, 1) == 2


def test_bad_results_and_exceptions_are_errors_of_that_call_only():
    with Pool([acts], workers=1) as pool:
        with pytest.raises(sdk.ActivityError, match="cannot be pickled"):
            pool.run(acts.unpicklable_result)
        with pytest.raises(sdk.ActivityError) as info:
            pool.run(acts.raise_unpicklable)
        assert "Unpicklable" in str(info.value.__cause__)
        assert "has a lock" in str(info.value.__cause__)
        with pytest.raises(sdk.ActivityError) as info:
            pool.run(acts.raise_bad_init)
        assert "BadInit" in str(info.value.__cause__)
        assert "raise BadInit" in info.value.remote_traceback
        assert pool.run(acts.add, 1, 1) == 2


def test_worker_that_cannot_import_the_module():
    from tests.integration import worker_unimportable

    with Pool([acts.add], workers=1) as pool:
        with pytest.raises(sdk.ActivityError, match="refuses to load in a worker"):
            pool.run(worker_unimportable.cannot_load)
        assert pool.run(acts.add, 1, 1) == 2


def test_remote_exception_keeps_type_and_traceback():
    with Pool([acts], workers=1) as pool:
        with pytest.raises(sdk.ActivityError) as info:
            pool.run(acts.key_error)
        cause = info.value.__cause__
        assert isinstance(cause, KeyError)
        assert isinstance(cause.__cause__, sdk.RemoteTraceback)
        assert 'raise KeyError("missing")' in str(cause.__cause__)


def test_large_payload_round_trip():
    data = os.urandom(8 * 1024 * 1024)
    with Pool([acts], workers=2) as pool:
        assert pool.run(acts.big_payload, data) == data[::-1]
        np = pytest.importorskip("numpy")
        arr = np.arange(3_000_000, dtype=np.float64)
        back = pool.run(acts.echo, arr)
        assert isinstance(back, np.ndarray) and (back == arr).all()


def test_worker_output_reaches_supervisor_tagged(caplog):
    seen: list[tuple[int, str | None, str]] = []
    with Pool([acts], workers=1, on_output=lambda w, a, line: seen.append((w, a, line))) as pool:
        assert pool.run(acts.chatty, 7) == 7
        assert pool.run(acts.add, 1, 2) == 3  # the protocol is intact after prints
    lines = [line for _, _, line in seen]
    assert any(line.startswith("stdout line from pid") for line in lines)
    assert "stderr line" in lines
    assert "raw fd write" in lines
    assert all(wid == 1 for wid, _, _ in seen)
    assert "chatty" in {a for _, a, _ in seen}
    # a log record is no printed line: it reaches this process's logging as a record
    assert not any("a log record" in line for line in lines)
    records = [r for r in caplog.records if r.getMessage() == "a log record"]
    assert [(r.name, r.levelno, r.activity) for r in records] == [
        ("user", logging.WARNING, "chatty")
    ]


def test_info_fields_and_nested_calls():
    with Pool([acts], workers=1) as pool:
        info = pool.run(acts.info_fields)
        assert info["attempt"] == 1
        assert info["worker_id"] == 1
        assert info["pid"] == pool.worker_pids()[0]
        assert info["session_id"] is None
        assert info["deadline"] is not None
        assert info["name"] == "info_fields"
        (inner_value, inner_pid, _), outer_pid, attempt = pool.run(acts.outer, 1)
        assert inner_value == 2 and inner_pid == outer_pid and attempt == 1


def test_depends_made_once_per_worker_and_torn_down(tmp_path, monkeypatch):
    monkeypatch.setenv("AP_TEST_TEARDOWN_DIR", str(tmp_path))
    with Pool([acts], workers=1) as pool:
        first = pool.run(acts.uses_resource, 1)
        second = pool.run(acts.uses_resource, 2)
        assert first[1] == second[1] == pool.worker_pids()[0]
        assert first[2] == second[2]  # the same object both times
        pid = first[1]
    assert (tmp_path / f"teardown-{pid}").read_text() == "done"


async def test_pool_closed_errors():
    pool = Pool([acts], workers=1)
    async with pool:
        pass
    with pytest.raises(sdk.PoolClosedError):
        await pool.execute(acts.add, 1, 2)


def test_pool_options_are_validated():
    with pytest.raises(ValueError):
        Pool(workers=0)
    with pytest.raises(ValueError):
        Pool(max_tasks_per_worker=0)
    with pytest.raises(ValueError):
        Pool(prefetch=-1)
    with pytest.raises(ValueError, match="'forkserver', 'fork' or 'spawn'"):
        Pool(start_method="vfork")  # type: ignore[arg-type]


def test_max_tasks_per_worker_recycles():
    with Pool([acts], workers=1, max_tasks_per_worker=2) as pool:
        pids = [pool.run(acts.pid_of) for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


async def test_events_and_stats():
    events: list[str] = []
    async with Pool([acts], workers=1, on_event=lambda e: events.append(e.kind)) as pool:
        await pool.execute(acts.add, 1, 2)
        with pytest.raises(sdk.ActivityError):
            await pool.execute(acts.flaky, 9)
        stats = pool.stats()
    assert stats.completed == 1 and stats.failed == 1
    assert stats.latency_p50 is not None
    for kind in (
        "worker_started",
        "attempt_started",
        "attempt_completed",
        "attempt_failed",
        "retry_scheduled",
    ):
        assert kind in events


async def test_many_concurrent_calls_all_complete():
    async with Pool([acts], workers=2) as pool:
        results = await asyncio.gather(*(pool.execute(acts.add, i, i) for i in range(500)))
    assert results == [2 * i for i in range(500)]


async def test_ambient_false_does_not_capture_awaited_activities():
    async with Pool([acts], workers=1, ambient=False) as pool:
        # not dispatched: runs in this process as a plain coroutine
        assert await acts.async_add(1, 2) == 3
        assert pool.stats().completed == 0
        assert await pool.execute(acts.async_add, 1, 2) == 3


def test_close_is_idempotent_and_cancels():
    pool = Pool([acts], workers=1)
    pool.__enter__()
    fut = pool.submit(acts.ignores_cancel)
    pool.close(cancel=True)
    pool.close()
    with pytest.raises(sdk.PoolClosedError):
        fut.result(timeout=5)
    with pytest.raises(sdk.PoolClosedError):
        pool.run(acts.add, 1, 1)


def test_depends_parameter_given_by_the_caller_is_not_injected():
    with Pool([acts], workers=1) as pool:
        given = {"pid": -1}
        assert pool.run(acts.uses_resource, 1, given)[1] == -1  # positionally
        assert pool.run(acts.uses_resource, 2, res=given)[1] == -1  # by keyword


def test_failing_on_output_callback_does_not_break_the_pool(caplog):
    def explode(worker_id, activity, line):
        raise RuntimeError("callback bug")

    with caplog.at_level(logging.ERROR, logger="activitypool"):
        with Pool([acts], workers=1, on_output=explode) as pool:
            assert pool.run(acts.chatty, 3) == 3
            with pytest.raises(sdk.ActivityError):
                pool.run(acts.exit_with, 2)  # exit handling drains output through it too
            assert pool.run(acts.add, 1, 1) == 2
    assert any("on_output callback failed" in r.getMessage() for r in caplog.records)


def test_closed_session_is_refused():
    with Pool([acts], workers=1) as pool:
        with pool.sticky_session() as s:
            s.run(acts.load_model, "m")
        with pytest.raises(sdk.ActivityInputError, match="closed"):
            s.run(acts.predict, "x")


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_cpu_affinity_pins_each_worker_and_thread_limit_reaches_the_env():
    cpus = sorted(os.sched_getaffinity(0))
    with Pool([acts], workers=2, cpu_affinity=True, thread_limit=1) as pool:
        pids = pool.worker_pids()
        pinned = [os.sched_getaffinity(pid) for pid in pids]
        env = pool.run(acts.env_var, "OMP_NUM_THREADS")
    assert all(len(s) == 1 for s in pinned)
    if len(cpus) > 1:
        assert pinned[0] != pinned[1]
    assert env == "1"
    with pytest.raises(ValueError):
        Pool(cpu_affinity=[[]])


def test_rate_limit_spaces_starts_in_real_workers():
    events = []
    with Pool([acts], workers=2, on_event=events.append) as pool:
        assert len(list(pool.map(acts.rate_limited_now, range(9)))) == 9
    starts = sorted(
        e.time for e in events if e.kind == "attempt_started" and e.activity == "rate_limited_now"
    )
    # three windows of 0.2 s: no more than 3 starts in any 0.2 s span
    assert len(starts) == 9
    assert starts[-1] - starts[0] >= 0.4
    for i in range(len(starts) - 3):
        assert starts[i + 3] - starts[i] >= 0.195


def test_map_raises_at_the_failing_item_in_order():
    with Pool([acts], workers=2) as pool:
        it = pool.map(acts.sleep_for, [0.0] * 3)
        assert len(list(it)) == 3
        got = []
        with pytest.raises(sdk.ActivityError, match="item 3 is bad"):
            for value in pool.map(acts.echo_or_fail, range(6)):
                got.append(value)
        assert got == [0, 1, 2]


def test_map_closed_early_cancels_the_rest():
    with Pool([acts], workers=1, prefetch=0) as pool:
        it = pool.map(acts.sleep_for, [0.05] * 20)
        next(it)
        it.close()  # the caller lost interest: queued items never run
        deadline = time.monotonic() + 5
        while pool.stats().queued:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.1)
        assert pool.stats().completed < 10
        assert pool.run(acts.add, 1, 1) == 2


def test_max_memory_per_worker_recycles_a_worker_over_the_limit():
    events = []
    # any live interpreter is over one byte: every worker is recycled after its first result
    with Pool([acts], workers=1, max_memory_per_worker=1, on_event=events.append) as pool:
        pids = [pool.run(acts.pid_of) for _ in range(3)]
    assert len(set(pids)) == 3
    assert sum(e.kind == "worker_recycled" for e in events) >= 2


def test_many_threads_submitting_at_once_lose_nothing():
    import threading

    with Pool([acts], workers=2) as pool:
        results: dict[int, list] = {}

        def submitter(k: int) -> None:
            futs = [pool.submit(acts.add, k, i) for i in range(300)]
            results[k] = [f.result(timeout=30) for f in futs]

        threads = [threading.Thread(target=submitter, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {k: [k + i for i in range(300)] for k in range(6)}


def test_fault_injected_before_a_burst_applies_to_the_burst():
    with Pool([acts], workers=1) as pool:
        futs = [pool.submit(acts.echo, i) for i in range(50)]  # a drain may still be pending
        pool.inject_fault(acts.attempt_of, "raise", exception=sdk.ApplicationError("x"), times=1)
        first = pool.submit(acts.attempt_of, 1)
        assert [f.result(timeout=10) for f in futs] == list(range(50))
        assert first.result(timeout=10)[1] == 2  # attempt 1 got the injected error


def test_a_done_callback_may_submit_more_work():
    # done callbacks run on the pool's loop thread, while the scheduler answers a call
    with Pool([acts], workers=1) as pool:
        chained: list = []
        fut = pool.submit(acts.add, 1, 1)
        fut.add_done_callback(lambda f: chained.append(pool.submit(acts.add, f.result(), 10)))
        assert fut.result(timeout=10) == 2
        deadline = time.monotonic() + 10
        while not chained:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert chained[0].result(timeout=10) == 12
        cancelled = pool.submit(acts.sleep_for, 0.2)
        cancelled.add_done_callback(lambda f: chained.append(pool.submit(acts.add, 2, 2)))
        assert cancelled.cancel()
        while len(chained) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert chained[1].result(timeout=10) == 4
