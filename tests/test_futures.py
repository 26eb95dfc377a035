"""``PoolFuture``: a ``concurrent.futures.Future`` whose Condition is made only when needed.

Unit tests of the class on its own (every public behaviour of a Future, the module functions
``wait``/``as_completed``, ``asyncio.wrap_future``, and threads racing the lazy Condition),
then the same through a real pool.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import concurrent.futures._base
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    CancelledError,
    InvalidStateError,
)
from typing import Any

import pytest

import sdk
from pool import Pool, _futures
from pool._futures import PoolFuture
from tests.integration import activities as acts

pytestmark = pytest.mark.timeout(30)

# generous: only a lost wake-up (a hang) ever gets near it
HANG = 8.0


class Owner:
    """Stands in for the pool: records the calls whose futures were cancelled."""

    def __init__(self) -> None:
        self.cancelled: list[Any] = []

    def cancel_call(self, call: Any) -> None:
        self.cancelled.append(call)


def later(fn: Any, *args: Any) -> threading.Thread:
    """Run ``fn(*args)`` on another thread (soon, not at a chosen time); join it to be sure."""
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads every microsecond instead of every 5 ms: races show up in a short run."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


# -- one future, one thread -------------------------------------------------------------------


def test_is_a_concurrent_future_and_starts_pending():
    fut = PoolFuture()
    assert isinstance(fut, concurrent.futures.Future)
    assert not fut.done() and not fut.cancelled() and not fut.running()
    assert "pending" in repr(fut)
    assert fut._cond is None  # nothing has waited: no Condition was made


def test_result_and_exception_once_set():
    fut = PoolFuture()
    fut.set_result(42)
    assert fut.done() and not fut.cancelled()
    assert fut.result() == 42
    assert fut.result(timeout=0) == 42
    assert fut.exception() is None
    assert fut.exception(timeout=0) is None
    assert "finished returned int" in repr(fut)
    assert fut._cond is None  # answered before anyone waited: never made


def test_result_reraises_the_exception():
    fut = PoolFuture()
    err = ValueError("boom")
    fut.set_exception(err)
    assert fut.done()
    with pytest.raises(ValueError, match="boom") as info:
        fut.result()
    assert info.value is err
    with pytest.raises(ValueError):
        fut.result(timeout=1)
    assert fut.exception() is err
    assert fut.exception(timeout=0) is err
    assert "raised ValueError" in repr(fut)


def test_result_and_exception_time_out_while_pending():
    fut = PoolFuture()
    with pytest.raises(TimeoutError):
        fut.result(timeout=0)
    with pytest.raises(TimeoutError):
        fut.exception(timeout=0.01)
    fut.set_result("late")  # a Condition exists now: the locked path
    assert fut.result(timeout=0) == "late"


def test_setting_twice_is_an_invalid_state():
    fut = PoolFuture()
    fut.set_result(1)
    with pytest.raises(InvalidStateError):
        fut.set_result(2)
    with pytest.raises(InvalidStateError):
        fut.set_exception(ValueError())
    assert fut.result() == 1
    waited = PoolFuture()
    with pytest.raises(TimeoutError):
        waited.result(timeout=0)  # makes the Condition
    waited.set_exception(KeyError("k"))
    with pytest.raises(InvalidStateError):
        waited.set_result(3)


def test_set_running_or_notify_cancel():
    fut = PoolFuture()
    assert fut.set_running_or_notify_cancel()
    assert fut.running() and not fut.done()
    assert not fut.cancel()  # running: too late
    fut.set_result(5)
    assert fut.result() == 5
    with pytest.raises(RuntimeError):
        fut.set_running_or_notify_cancel()


def test_a_fork_while_the_shared_lock_is_held_leaves_the_child_working():
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    with _futures._LAZY, warnings.catch_warnings():  # as if the loop thread held it now
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
        if pid == 0:  # the child: the lock must be free again
            code = 1
            try:
                signal.alarm(5)  # a child stuck on the lock dies instead of hanging the test
                fut = PoolFuture()
                with contextlib.suppress(TimeoutError):
                    fut.result(timeout=0)  # makes a Condition: takes the shared lock
                fut.set_result(1)
                code = 0 if fut.result() == 1 else 1
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# -- callbacks ---------------------------------------------------------------------------------


def test_callbacks_added_before_completion_run_once_in_order():
    fut = PoolFuture()
    seen: list[tuple[str, Any]] = []
    fut.add_done_callback(lambda f: seen.append(("a", f.result())))
    fut.add_done_callback(lambda f: seen.append(("b", f.result())))
    assert seen == []
    fut.set_result(7)
    assert seen == [("a", 7), ("b", 7)]


def test_callback_added_after_completion_runs_at_once():
    fut = PoolFuture()
    fut.set_exception(KeyError("x"))
    seen: list[BaseException | None] = []
    fut.add_done_callback(lambda f: seen.append(f.exception()))
    assert len(seen) == 1 and isinstance(seen[0], KeyError)


def test_a_failing_callback_is_logged_and_the_others_still_run(caplog):
    fut = PoolFuture()
    seen: list[int] = []

    def bad(f: Any) -> None:
        raise RuntimeError("callback bug")

    fut.add_done_callback(bad)
    fut.add_done_callback(lambda f: seen.append(f.result()))
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        fut.set_result(3)
        fut.add_done_callback(bad)  # after completion: logged too, not raised
    assert seen == [3]
    assert sum("exception calling callback" in r.getMessage() for r in caplog.records) == 2


def test_callbacks_with_a_condition_present():
    fut = PoolFuture()
    with pytest.raises(TimeoutError):
        fut.result(timeout=0)
    seen: list[int] = []
    fut.add_done_callback(lambda f: seen.append(f.result()))
    fut.set_result(9)
    assert seen == [9]


# -- cancel ------------------------------------------------------------------------------------


def test_cancel_a_pending_future_forwards_once_then_callbacks():
    owner = Owner()
    fut = PoolFuture(owner, "call-1")
    order: list[str] = []
    fut.add_done_callback(lambda f: order.append(f"callback saw {owner.cancelled}"))
    assert fut.cancel()
    assert owner.cancelled == ["call-1"]
    assert order == ["callback saw ['call-1']"]  # the pool hears first
    assert fut.cancelled() and fut.done()
    assert "cancelled" in repr(fut)
    assert fut.cancel()  # again: still True, not forwarded again, callbacks not run again
    assert owner.cancelled == ["call-1"] and len(order) == 1
    with pytest.raises(CancelledError):
        fut.result()
    with pytest.raises(CancelledError):
        fut.result(timeout=0)
    with pytest.raises(CancelledError):
        fut.exception()
    # the pool answers the cancelled call later, as the supervisor does
    with pytest.raises(InvalidStateError):
        fut.set_result(1)
    with pytest.raises(InvalidStateError):
        fut.set_exception(ValueError())
    assert not fut.set_running_or_notify_cancel()  # notifies wait()/as_completed()
    assert fut.cancelled()


def test_cancel_after_completion_is_refused_and_not_forwarded():
    owner = Owner()
    fut = PoolFuture(owner, "call-2")
    fut.set_result(1)
    assert not fut.cancel()
    assert owner.cancelled == []
    assert fut.result() == 1


def test_a_forwarding_error_is_logged_and_the_cancel_still_holds(caplog):
    class Broken:
        def cancel_call(self, call: Any) -> None:
            raise RuntimeError("pool gone")

    fut = PoolFuture(Broken(), "c")
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        assert fut.cancel()
    assert fut.cancelled()
    assert any("cancellation" in r.getMessage() for r in caplog.records)


def test_cancel_wakes_a_thread_blocked_in_result():
    fut = PoolFuture()
    got: list[BaseException] = []

    def wait() -> None:
        try:
            fut.result(timeout=HANG)
        except BaseException as exc:
            got.append(exc)

    thread = later(wait)
    while fut._cond is None:  # the waiter made the Condition: it is about to sleep on it
        thread.join(0.001)
    assert fut.cancel()
    thread.join(HANG)
    assert len(got) == 1 and isinstance(got[0], CancelledError)


def test_result_blocks_until_another_thread_sets_it():
    fut = PoolFuture()
    thread = later(fut.set_result, "hello")
    assert fut.result(timeout=HANG) == "hello"
    thread.join()
    err = PoolFuture()
    thread = later(err.set_exception, OSError("e"))
    assert isinstance(err.exception(timeout=HANG), OSError)
    thread.join()


def test_an_owner_with_wake_later_wakes_a_waiting_thread_when_it_says():
    class Owner:
        def __init__(self) -> None:
            self.queued: list[Callable[[], None]] = []
            self.wake_later = self.queued.append

        def cancel_call(self, call: Any) -> None:
            raise AssertionError("not cancelled")

    owner = Owner()
    fut = PoolFuture(owner, call=object())
    got: list = []
    thread = threading.Thread(target=lambda: got.append(fut.result(timeout=HANG)))
    thread.start()
    while fut._cond is None:  # the waiter made the Condition and sleeps on it
        time.sleep(0.001)
    fut.set_result("late")
    assert fut.done() and len(owner.queued) == 1
    thread.join(0.05)
    assert thread.is_alive()  # the outcome is set, the wake-up is the owner's to run
    owner.queued.pop()()
    thread.join(HANG)
    assert got == ["late"]


# -- wait() and as_completed() -----------------------------------------------------------------


def test_wait_first_completed():
    futs = [PoolFuture() for _ in range(3)]
    done, not_done = concurrent.futures.wait(futs, timeout=0, return_when=FIRST_COMPLETED)
    assert not done and len(not_done) == 3
    thread = later(futs[1].set_result, "b")
    done, not_done = concurrent.futures.wait(futs, timeout=HANG, return_when=FIRST_COMPLETED)
    thread.join()
    assert done == {futs[1]} and not_done == {futs[0], futs[2]}
    # already done: returns without waiting
    done, _ = concurrent.futures.wait(futs, return_when=FIRST_COMPLETED)
    assert futs[1] in done


def test_wait_all_completed_and_first_exception():
    futs = [PoolFuture() for _ in range(4)]
    futs[0].set_result(0)  # done before wait(): counted as done, not waited for
    mixed = [*futs, concurrent.futures.Future()]  # with a plain Future too

    def finish() -> None:
        for i, f in enumerate(mixed[1:], 1):
            f.set_result(i)

    thread = later(finish)
    done, not_done = concurrent.futures.wait(mixed, timeout=HANG, return_when=ALL_COMPLETED)
    thread.join()
    assert done == set(mixed) and not not_done
    assert [f.result() for f in mixed] == [0, 1, 2, 3, 4]

    futs = [PoolFuture() for _ in range(3)]
    thread = later(futs[2].set_exception, ValueError("x"))
    done, not_done = concurrent.futures.wait(futs, timeout=HANG, return_when=FIRST_EXCEPTION)
    thread.join()
    assert done == {futs[2]} and not_done == {futs[0], futs[1]}


def test_wait_counts_a_cancelled_future_once_notified():
    owner = Owner()
    futs = [PoolFuture(owner, i) for i in range(2)]
    futs[0].set_result("ok")
    assert futs[1].cancel()

    def notify() -> None:  # what the supervisor does when the cancelled call ends
        futs[1].set_running_or_notify_cancel()

    thread = later(notify)
    done, not_done = concurrent.futures.wait(futs, timeout=HANG)
    thread.join()
    assert done == set(futs) and not not_done


def test_as_completed_yields_in_completion_order():
    futs = [PoolFuture() for _ in range(4)]
    futs[2].set_result(2)  # already done: yielded first
    order = [3, 0, 1]

    def finish() -> None:
        for i in order:
            futs[i].set_result(i)

    it = concurrent.futures.as_completed(futs, timeout=HANG)
    assert next(it) is futs[2]
    thread = later(finish)
    rest = [f.result() for f in it]
    thread.join()
    assert sorted(rest) == [0, 1, 3]
    with pytest.raises(TimeoutError):
        list(concurrent.futures.as_completed([PoolFuture()], timeout=0.01))


# -- asyncio -----------------------------------------------------------------------------------


async def test_asyncio_wrap_future_result_exception_and_cancel():
    fut = PoolFuture()
    wrapped = asyncio.wrap_future(fut)
    thread = later(fut.set_result, 11)
    assert await wrapped == 11
    thread.join()

    fut = PoolFuture()
    wrapped = asyncio.wrap_future(fut)
    fut.set_exception(ZeroDivisionError())
    with pytest.raises(ZeroDivisionError):
        await wrapped

    owner = Owner()
    fut = PoolFuture(owner, "async-call")
    wrapped = asyncio.wrap_future(fut)
    wrapped.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wrapped
    await asyncio.sleep(0)  # asyncio passes the cancellation on in a callback of its loop
    assert fut.cancelled()  # cancelling the asyncio side cancels the pool's future...
    assert owner.cancelled == ["async-call"]  # ...and through it the call


# -- threads racing the lazy Condition ---------------------------------------------------------
#
# A race between two threads is driven, not hoped for: round k stops one thread at its k-th
# bytecode inside the future's code (this module's class and concurrent.futures' own), or where
# it is about to block, and lets the other thread run its whole operation right there. Sweeping
# k puts the other thread's operation at every point of this one's. A lost wake-up shows as a
# result() or wait() that never returns (HANG); a lost or doubled update as a wrong count.

TRACED = (_futures.__file__, concurrent.futures._base.__file__)
PAUSE = 0.001  # how long the stopped thread lets the other one run (it only has to block)


class StopAt:
    """A trace function: at the k-th bytecode in TRACED code (or on entering a blocking wait),
    set ``go`` and give the other thread time to run."""

    def __init__(self, k: int, go: threading.Event) -> None:
        self.k = k
        self.go = go
        self.count = 0
        self.fired = False

    def __call__(self, frame: Any, event: str, arg: Any) -> Any:
        code = frame.f_code
        if code.co_filename in TRACED:
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
            return self.opcode
        if code.co_name == "wait" and code.co_filename == threading.__file__:
            self.fire(sleep=False)  # about to sleep: the other thread goes now
        return None

    def opcode(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            self.count += 1
            if self.count == self.k:
                self.fire(sleep=True)
        return self.opcode

    def fire(self, sleep: bool) -> None:
        if not self.fired:
            self.fired = True
            self.go.set()
            if sleep:
                time.sleep(PAUSE)


def race(rounds: int, stopped: Callable[[int], object], other: Callable[[int], object]) -> None:
    """Round k: ``stopped(k)`` runs here and is stopped at its k-th bytecode while ``other(k)``
    runs on another thread. Re-raises the first failure of either side."""
    go, finished = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def racer() -> None:
        for k in range(rounds):
            if not go.wait(HANG):
                failures.append(AssertionError(f"round {k}: never told to go"))
                return
            go.clear()
            try:
                other(k)
            except BaseException as exc:
                failures.append(exc)
                return
            finally:
                finished.set()

    thread = later(racer)
    previous = sys.gettrace()
    with frequent_thread_switches():
        for k in range(rounds):
            stop = StopAt(k + 1, go)
            sys.settrace(stop)
            try:
                stopped(k)
            except BaseException as exc:
                failures.append(exc)
            finally:
                sys.settrace(previous)
            if not stop.fired:  # k is past this operation's end: the other one runs after it
                go.set()
            if not finished.wait(HANG / 2):  # its own waits give up only after HANG
                failures.append(AssertionError(f"round {k}: the other thread never woke up"))
            if failures:
                break
            finished.clear()
        thread.join(HANG * 2)
    if failures:
        raise failures[0]
    assert not thread.is_alive()


@pytest.mark.timeout(20)
def test_result_racing_completion_never_loses_a_wakeup():
    """A waiter makes the Condition while the loop thread answers: it always wakes up.

    A setter that looked for a Condition and then stored the outcome without the lock would let
    the waiter make the Condition in between, find the future pending and sleep for good.
    """
    n = 160
    answered = [PoolFuture() for _ in range(n)]  # setter stopped, waiter runs in between
    race(n, lambda k: answered[k].set_result(k), lambda k: check(answered[k].result(HANG), k))
    waited = [PoolFuture() for _ in range(n)]  # waiter stopped, setter runs in between
    race(n, lambda k: check(waited[k].result(HANG), k), lambda k: waited[k].set_result(k))
    failed = [PoolFuture() for _ in range(n)]
    race(
        n,
        lambda k: failed[k].set_exception(KeyError(k)),
        lambda k: check(failed[k].exception(HANG).args, (k,)),
    )


def check(got: Any, expected: Any) -> None:
    if got != expected:
        raise AssertionError(f"got {got!r}, expected {expected!r}")


@pytest.mark.timeout(20)
def test_callbacks_and_wait_racing_completion_count_each_future_once():
    """add_done_callback and wait(ALL_COMPLETED) against the setter: each callback runs exactly
    once, and wait() never returns while one of its futures is still pending."""
    n, width = 300, 3
    ran: collections.Counter[tuple[int, int]] = collections.Counter()

    def watch(batches: list[list[PoolFuture]]) -> Callable[[int], None]:
        def op(k: int) -> None:
            for j, fut in enumerate(batches[k]):
                fut.add_done_callback(lambda f, key=(k, j): ran.update([key]))
            done, not_done = concurrent.futures.wait(batches[k], timeout=HANG)
            check((len(done), len(not_done)), (width, 0))

        return op

    def answer(batches: list[list[PoolFuture]]) -> Callable[[int], None]:
        def op(k: int) -> None:
            for j, fut in enumerate(batches[k]):
                fut.set_result(j)

        return op

    for stopped_side in ("watcher", "setter"):
        ran.clear()
        batches = [[PoolFuture() for _ in range(width)] for _ in range(n)]
        if stopped_side == "watcher":
            race(n, watch(batches), answer(batches))
        else:
            race(n, answer(batches), watch(batches))
        assert set(ran.values()) == {1} and len(ran) == n * width, stopped_side


@pytest.mark.timeout(20)
def test_cancel_racing_completion_has_one_winner():
    """Exactly one of cancel() and set_result() wins; the pool hears of every cancel that won."""
    n = 160
    for stopped_side in ("canceller", "setter"):
        owner = Owner()
        futs = [PoolFuture(owner, k) for k in range(n)]
        won = [False] * n

        def cancel(k: int, futs: list[PoolFuture] = futs, won: list[bool] = won) -> None:
            won[k] = futs[k].cancel()

        def answer(k: int, futs: list[PoolFuture] = futs) -> None:
            with contextlib.suppress(InvalidStateError):
                futs[k].set_result(k)

        if stopped_side == "canceller":
            race(n, cancel, answer)
        else:
            race(n, answer, cancel)
        for k, fut in enumerate(futs):
            assert won[k] == fut.cancelled()
            if not won[k]:
                assert fut.result() == k
        assert owner.cancelled == [k for k in range(n) if won[k]]


# -- through a real pool -----------------------------------------------------------------------


def test_pool_submit_returns_pool_futures_that_answer():
    with Pool([acts], workers=2) as pool:
        futs = [pool.submit(acts.add, i, 1) for i in range(500)]
        assert all(isinstance(f, concurrent.futures.Future) for f in futs)
        assert [f.result(timeout=HANG) for f in futs] == [i + 1 for i in range(500)]
        assert all(f.done() and f._call is None for f in futs)  # no cycle back to the call
        bad = pool.submit(acts.always_fails)
        assert isinstance(bad.exception(timeout=HANG), sdk.ActivityError)
        with pytest.raises(sdk.ActivityError):
            bad.result()


def test_pool_futures_with_wait_and_as_completed():
    with Pool([acts], workers=2, cancel_grace=0.05) as pool:
        futs = [pool.submit(acts.echo, i) for i in range(100)]
        done, not_done = concurrent.futures.wait(futs, timeout=HANG)
        assert not not_done and {f.result() for f in done} == set(range(100))
        futs = [pool.submit(acts.echo_or_fail, i) for i in range(6)]
        got, errors = set(), 0
        for fut in concurrent.futures.as_completed(futs, timeout=HANG):
            if fut.exception() is None:
                got.add(fut.result())
            else:
                errors += 1
        assert got == {0, 1, 2, 4, 5} and errors == 1
        first = pool.submit(acts.sleep_for, 0.0)
        slow = pool.submit(acts.sleep_for, 5)
        done, _ = concurrent.futures.wait([first, slow], timeout=HANG, return_when=FIRST_COMPLETED)
        assert first in done
        assert slow.cancel()  # running: the pool cancels the attempt
        done, not_done = concurrent.futures.wait([slow], timeout=HANG)
        assert done == {slow} and not not_done  # the pool notified the cancellation


def test_pool_future_cancel_reaches_the_pool():
    with Pool([acts], workers=1, prefetch=0) as pool:
        busy = pool.submit(acts.sleep_for, 0.2)
        queued = [pool.submit(acts.add, i, 0) for i in range(5)]
        seen: list[bool] = []
        queued[0].add_done_callback(lambda f: seen.append(f.cancelled()))
        assert all(f.cancel() for f in queued)
        assert seen == [True]
        assert busy.result(timeout=HANG) is not None
        done, not_done = concurrent.futures.wait(queued, timeout=HANG)
        assert done == set(queued) and not not_done
        assert pool.stats().completed == 1  # none of the cancelled calls ran
        assert pool.run(acts.add, 2, 2) == 4


def test_pool_futures_under_asyncio():
    with Pool([acts], workers=2, cancel_grace=0.05) as pool:

        async def main() -> list[int]:
            return list(
                await asyncio.gather(
                    *(asyncio.wrap_future(pool.submit(acts.add, i, i)) for i in range(50))
                )
            )

        assert asyncio.run(main()) == [2 * i for i in range(50)]

        async def cancel_one() -> bool:
            fut = pool.submit(acts.sleep_for, 5)
            wrapped = asyncio.wrap_future(fut)
            await asyncio.sleep(0)
            wrapped.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await wrapped
            await asyncio.sleep(0)  # asyncio cancels the source future in a loop callback
            return fut.cancelled()

        assert asyncio.run(cancel_one())
        assert pool.run(acts.add, 1, 1) == 2  # the worker is free again


async def test_pool_amap_and_async_with_submit():
    async with Pool([acts], workers=2) as pool:
        assert [x async for x in pool.amap(acts.echo, range(30))] == list(range(30))
        fut = pool.submit(acts.add, 20, 22)  # submitted from the pool's own loop thread
        assert await asyncio.wrap_future(fut) == 42
