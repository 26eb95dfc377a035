"""OpenTelemetry spans for attempts (the optional extra ``otel``; see docs/operations.md).

A call made while an OpenTelemetry span is current in the caller carries the caller's context
(``capture``). The supervisor then makes one span per attempt of it, a child of the caller's
span, named by the activity's registered name: started when the attempt's RUN is sent, ended
by the attempt's outcome (``AttemptSpans``). The RUN carries the attempt span's context to the
worker as W3C trace-context headers, so spans the activity makes are its children.

Nothing here is imported unless the caller has imported opentelemetry and a span is current:
the supervisor checks ``sys.modules`` first, and a worker imports opentelemetry only when a
RUN brings a context.
"""

from __future__ import annotations

import sys
from typing import Any

from sdk._errors import ActivityTimeoutError, WorkerCrashedError, safe_str

# Imported by the caller's program whenever it uses OpenTelemetry spans at all.
OTEL_MODULE = "opentelemetry.trace"

# Span attribute names.
ATTEMPT = "activitypool.attempt"
WORKER_ID = "activitypool.worker.id"
WORKER_PID = "activitypool.worker.pid"
CALL_ID = "activitypool.call_id"
SESSION_ID = "activitypool.session_id"
OUTCOME = "activitypool.outcome"
ERROR_TYPE = "error.type"


def capture() -> Any:
    """The caller's OpenTelemetry context when a valid span is current in it, else None.
    Call only when ``OTEL_MODULE`` is in ``sys.modules``."""
    from opentelemetry import context, trace

    if not trace.get_current_span().get_span_context().is_valid:
        return None
    return context.get_current()


def outcome(exc: BaseException | None) -> tuple[str, str | None]:
    """(outcome, error type) of an attempt that ended with ``exc`` (None: it returned)."""
    if exc is None:
        return "ok", None
    if isinstance(exc, ActivityTimeoutError):
        return "timeout", exc.type.name
    if isinstance(exc, WorkerCrashedError):
        return "crash", type(exc).__name__
    import asyncio
    import concurrent.futures

    if isinstance(exc, asyncio.CancelledError | concurrent.futures.CancelledError):
        return "cancelled", type(exc).__name__
    return "error", type(exc).__name__


class AttemptSpans:
    """The open attempt spans, one per traced call at most (a call runs one attempt at a
    time). Owned by the supervisor; loop thread only."""

    def __init__(self) -> None:
        from opentelemetry import propagate, trace

        self._trace = trace
        self._propagate = propagate
        self._tracer = trace.get_tracer("activitypool")
        self._open: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._open)

    def begin(
        self,
        call_id: int,
        name: str,
        parent: Any,
        attempt: int,
        worker_id: int,
        pid: int | None,
        session_id: str | None,
    ) -> dict[str, str]:
        """Start the span of attempt ``attempt`` of call ``call_id``, a child of ``parent``
        (the caller's context); return its context as headers for the worker."""
        self.end(call_id, None, "withdrawn")  # (only if a RUN of it never started)
        attributes: dict[str, Any] = {ATTEMPT: attempt, WORKER_ID: worker_id, CALL_ID: call_id}
        if pid is not None:
            attributes[WORKER_PID] = pid
        if session_id is not None:
            attributes[SESSION_ID] = session_id
        span = self._tracer.start_span(name, context=parent, attributes=attributes)
        self._open[call_id] = span
        headers: dict[str, str] = {}
        self._propagate.inject(headers, context=self._trace.set_span_in_context(span))
        return headers

    def end(self, call_id: int, exc: BaseException | None, how: str | None = None) -> None:
        """End call ``call_id``'s open span, if any: its attempt ended with ``exc`` (None: it
        returned), or ``how`` says what became of it."""
        span = self._open.pop(call_id, None)
        if span is None:
            return
        kind, error_type = outcome(exc)
        span.set_attribute(OUTCOME, how or kind)
        if error_type is not None:
            span.set_attribute(ERROR_TYPE, error_type)
        if exc is not None:
            status = self._trace.Status(self._trace.StatusCode.ERROR, safe_str(exc))
            span.set_status(status)
        span.end()


def attach(headers: dict[str, str]) -> Any:
    """In a worker: make the attempt span that ``headers`` name the current span while the
    activity runs; a token for ``detach``, or None if opentelemetry is not importable."""
    try:
        from opentelemetry import context, propagate
    except ImportError:
        return None
    return context.attach(propagate.extract(headers))


def detach(token: Any) -> None:
    context = sys.modules["opentelemetry.context"]
    context.detach(token)
