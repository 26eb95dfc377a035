"""The progress counters, the latency histogram and the summary (pool._progress)."""

from __future__ import annotations

import io
import random
import statistics

import pytest

from pool._events import PoolEvent
from pool._progress import Display, Histogram, Progress


def test_histogram_percentiles_are_within_one_percent_over_any_number_of_samples() -> None:
    rng = random.Random(7)
    samples = [rng.lognormvariate(-6, 1.5) for _ in range(50_000)]
    h = Histogram()
    for s in samples:
        h.add(s)
    exact = statistics.quantiles(samples, n=100, method="inclusive")
    for q, want in ((0.5, exact[49]), (0.95, exact[94]), (0.99, exact[98])):
        got = h.quantile(q)
        assert got is not None and abs(got - want) / want < 0.015, (q, got, want)
    assert len(h.counts) < 1_000  # constant memory: buckets, not samples
    assert Histogram().quantile(0.5) is None


def _ev(kind: str, **kw: object) -> PoolEvent:
    return PoolEvent(kind=kind, time=0.0, **kw)  # type: ignore[arg-type]


def test_progress_counts_attempts_retries_and_workers_lost_by_reason() -> None:
    p = Progress(total=10)
    for ev in (
        _ev("attempt_started"),
        _ev("attempt_completed", duration=0.01, latency=0.02),
        _ev("attempt_failed"),
        _ev("retry_scheduled"),
        _ev("worker_killed", reason="deadline"),
        _ev("worker_exited", reason="crash"),
        _ev("worker_exited", reason="crash"),
        _ev("worker_recycled", reason="memory_recycle"),
    ):
        p.on_event(ev)
    p.item(False, 3)
    p.item(True)
    assert (p.attempts, p.retries, p.done, p.failed) == (2, 1, 4, 1)
    assert p.lost() == [("deadline", 1), ("crash", 2), ("memory_recycle", 1)]
    status = p.status()
    assert status.startswith("done 4/10 | failed 1 | retried 1 | ")
    assert "workers lost: deadline 1, crash 2" in status
    assert "recycled: memory_recycle 1" in status
    assert "ETA" in status
    rows = dict(p.summary_rows())
    assert rows["calls"] == "4 (1 failed)"
    assert rows["attempts"] == "2" and rows["retries"] == "1"
    assert rows["workers ended"] == "deadline 1, crash 2, memory_recycle 1"
    assert p.latency.quantile(0.5) == pytest.approx(0.02, rel=0.011)  # submit to result
    assert rows["latency p50"].endswith(" ms")
    assert rows["throughput"].endswith("calls/s")


def test_plain_display_prints_lines_and_the_summary_table() -> None:
    p = Progress(total=2)
    out = io.StringIO()
    display = Display(p, stream=out, interval=60)
    display.start()
    p.item(False, 2)
    display.stop()  # the final state, at once (no wait for the interval)
    display.summary()
    text = out.getvalue()
    assert text.splitlines()[0].startswith("done 2/2 | failed 0")
    for row in ("calls", "attempts", "retries", "workers ended", "latency p50", "latency p95"):
        assert row in text
    assert "wall time" in text and "throughput" in text


def test_quiet_display_prints_nothing() -> None:
    out = io.StringIO()
    display = Display(Progress(), stream=out, quiet=True)
    display.start()
    display.stop()
    display.summary()
    assert out.getvalue() == ""


def test_make_event_is_the_same_event_as_the_constructor_makes() -> None:
    from pool._events import make_event

    fields = {"worker_id": 2, "reason": "crash", "latency": 0.5}
    made = make_event("worker_exited", 1.0, dict(fields))
    assert made == PoolEvent(kind="worker_exited", time=1.0, **fields)  # type: ignore[arg-type]
    assert made.pid is None and made.tasks is None
