"""Activities for tests/integration/test_otel.py. No opentelemetry import at the top: a worker
imports it only when a call brings a trace context."""

from __future__ import annotations

import sys

from sdk import activity


def _span_ids() -> dict[str, int]:
    from opentelemetry import trace

    current = trace.get_current_span().get_span_context()
    with trace.get_tracer("tests").start_as_current_span("inside") as inner:
        made = inner.get_span_context()
    return {
        "current_trace": current.trace_id,
        "current_span": current.span_id,
        "inner_trace": made.trace_id,
    }


@activity(retry_policy_max_attempts=2, retry_policy_initial_interval=0.01)
def traced_flaky() -> dict[str, int]:
    """Fails its first attempt; the second says which span was current in it."""
    if activity.info().attempt == 1:
        raise ValueError("first attempt fails")
    return _span_ids()


@activity
async def traced_async() -> dict[str, int]:
    return _span_ids()


@activity
def otel_loaded() -> bool:
    return "opentelemetry" in sys.modules
