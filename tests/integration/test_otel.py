"""OpenTelemetry (the ``otel`` extra): one span per attempt, named by the activity, a child of
the caller's span, with its attempt, worker and outcome; the activity's own spans are children
of its attempt's span. Nothing is traced, and a worker imports nothing, without a current span."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from pool import Pool
from sdk import ActivityError
from tests.integration import failure_output_activities as failing
from tests.integration import otel_activities as acts

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def provider() -> TracerProvider:
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # set by an earlier module: one per process
        return current
    made = TracerProvider()
    trace.set_tracer_provider(made)
    return made


@pytest.fixture
def spans(provider: TracerProvider):
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    exporter.clear()
    processor.shutdown()  # (this exporter stops taking spans)


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    found = [s for s in exporter.get_finished_spans() if s.name == name]
    return sorted(found, key=lambda s: s.attributes["activitypool.attempt"])


def test_one_span_per_attempt_child_of_the_callers_span(spans):
    tracer = trace.get_tracer("tests")
    with Pool([acts], workers=1) as pool:
        with tracer.start_as_current_span("caller") as caller:
            inside = pool.run(acts.traced_flaky)
        pid = pool.worker_pids()[0]
    parent = caller.get_span_context()
    first, second = named(spans, "traced_flaky")
    for span, attempt in ((first, 1), (second, 2)):
        assert span.parent is not None and span.parent.span_id == parent.span_id
        assert span.context.trace_id == parent.trace_id
        assert span.attributes["activitypool.attempt"] == attempt
        assert span.attributes["activitypool.worker.id"] == 1
        assert span.attributes["activitypool.worker.pid"] == pid
    assert first.attributes["activitypool.outcome"] == "error"
    assert first.attributes["error.type"] == "ValueError"
    assert first.status.status_code is trace.StatusCode.ERROR
    assert second.attributes["activitypool.outcome"] == "ok"
    assert "error.type" not in second.attributes
    # in the worker, the attempt's span is current: what the activity makes is its child
    assert inside["current_span"] == second.context.span_id
    assert inside["current_trace"] == inside["inner_trace"] == parent.trace_id


async def test_an_async_caller_and_activity(spans):
    tracer = trace.get_tracer("tests")
    async with Pool([acts], workers=1) as pool:
        with tracer.start_as_current_span("caller") as caller:
            inside = await pool.execute(acts.traced_async)
    (span,) = named(spans, "traced_async")
    assert span.parent is not None and span.parent.span_id == caller.get_span_context().span_id
    assert inside["current_span"] == span.context.span_id
    assert inside["inner_trace"] == span.context.trace_id


def test_a_crash_and_a_timeout_are_outcomes(spans):
    tracer = trace.get_tracer("tests")
    with Pool([failing], workers=1) as pool:
        with tracer.start_as_current_span("caller"):
            with pytest.raises(ActivityError):
                pool.run(failing.print_then_crash)
            with pytest.raises(ActivityError):
                pool.run(failing.print_then_hang)
    (crash,) = named(spans, "print_then_crash")
    assert crash.attributes["activitypool.outcome"] == "crash"
    assert crash.attributes["error.type"] == "WorkerCrashedError"
    (hang,) = named(spans, "print_then_hang")
    assert hang.attributes["activitypool.outcome"] == "timeout"
    assert hang.attributes["error.type"] == "START_TO_CLOSE"


def test_no_current_span_no_spans_and_no_import_in_the_worker(spans):
    with Pool([acts], workers=1) as pool:
        assert pool.run(acts.otel_loaded) is False
        assert named(spans, "otel_loaded") == []
        with trace.get_tracer("tests").start_as_current_span("caller"):
            assert pool.run(acts.otel_loaded) is True
    assert len(named(spans, "otel_loaded")) == 1
