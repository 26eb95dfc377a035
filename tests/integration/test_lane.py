"""The direct lane: pool.run() from a plain thread writes its RUN to an idle worker itself.

The loop still owns the call: its deadlines, a crash, cancellation and other callers' work
behave as on the ordinary path.
"""

from __future__ import annotations

import threading
import time

import pytest

import sdk
from pool import Pool
from tests.integration import activities as acts

pytestmark = pytest.mark.timeout(30)


def _lane_sent(pool: Pool) -> int:
    assert pool._sup is not None
    return pool._sup.lane.sent


@pytest.fixture
def pool():
    with Pool([acts], workers=2) as p:
        assert p.run(acts.add, 1, 1) == 2  # the first blocking call makes the loop lend
        yield p


def test_calls_one_after_another_take_the_lane(pool):
    before = _lane_sent(pool)
    assert [pool.run(acts.add, i, 1) for i in range(50)] == [i + 1 for i in range(50)]
    assert _lane_sent(pool) - before >= 45  # (a call may find the offer not yet renewed)


def test_a_hung_call_sent_through_the_lane_is_timed_out(pool):
    before = _lane_sent(pool)
    t0 = time.monotonic()
    with pytest.raises(sdk.ActivityError) as info:
        pool.run(acts.hang_sleep)  # start_to_close 0.1 s
    elapsed = time.monotonic() - t0
    assert _lane_sent(pool) == before + 1
    cause = info.value.__cause__
    assert isinstance(cause, sdk.ActivityTimeoutError)
    assert cause.type is sdk.TimeoutType.START_TO_CLOSE
    assert 0.1 <= elapsed < 2.0
    assert pool.run(acts.add, 2, 3) == 5


def test_a_worker_dying_under_a_lane_call_is_retried(pool):
    before = _lane_sent(pool)
    assert pool.run(acts.kill_self_first_attempt) == 2
    assert _lane_sent(pool) == before + 1


def test_other_threads_and_the_lane_share_the_workers(pool):
    results: list[int] = []

    def runner(base: int) -> None:
        for i in range(30):
            results.append(pool.run(acts.add, base, i))

    threads = [threading.Thread(target=runner, args=(1000 * k,)) for k in range(3)]
    futures = [pool.submit(acts.add, 0, i) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(f.result(timeout=10) for f in futures) == list(range(30))
    assert sorted(results) == sorted(1000 * k + i for k in range(3) for i in range(30))


def test_a_lane_call_whose_worker_dies_is_failed_not_run_again(monkeypatch):
    # the caller does not nudge the loop before the worker's death is seen: the death itself
    # must make the loop adopt the call (and fail it), not send it to the replacement
    monkeypatch.setattr("pool._pool.LANE_NUDGE", 2.0)
    events: list = []
    with Pool([acts], workers=1, on_event=events.append) as pool:
        assert pool.run(acts.add, 1, 1) == 2
        before = _lane_sent(pool)
        with pytest.raises(sdk.ActivityError) as info:
            pool.run(acts.kill_self)  # one attempt only
        assert _lane_sent(pool) == before + 1
        assert isinstance(info.value.__cause__, sdk.WorkerCrashedError)
        assert pool.run(acts.add, 2, 2) == 4
    deaths = [e for e in events if e.kind == "worker_exited"]
    assert len(deaths) == 1  # it ran once: the replacement never saw it


def test_a_fault_injected_just_before_a_call_applies_to_it(pool):
    for i in range(20):
        err = sdk.ApplicationError(f"injected {i}", non_retryable=True)
        pool.inject_fault(acts.add, "raise", exception=err)
        with pytest.raises(sdk.ActivityError, match=f"injected {i}"):
            pool.run(acts.add, 1, 2)  # (the lane would carry no fault)
