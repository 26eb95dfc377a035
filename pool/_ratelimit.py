"""Rate limits (``@activity(rate_limit=RateLimit(...))``): attempt starts per sliding window.

Owned by the scheduler's dispatcher (``pool._dispatch``), pure like it. A call is counted when
it is about to start on an idle worker (rate-limited calls are never prefetched, so dispatch is
the start, give or take a pipe's latency). A call over its limit is parked in its bucket; when
the window has room again (the scheduler's ``RATE`` deadline, at ``Bucket.reopens``) the parked
calls go back to the head of their queues, in order, and are counted (or parked again) when a
worker takes them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sdk._definition import RateLimit


@dataclass(eq=False, slots=True)
class Bucket:
    """Attempt starts admitted within the last ``window`` seconds, and the calls waiting."""

    window: float
    limit: int
    starts: deque[float] = field(default_factory=deque)
    waiting: deque[Any] = field(default_factory=deque)

    def expire(self, now: float) -> None:
        starts = self.starts
        while starts and starts[0] <= now - self.window:
            starts.popleft()

    @property
    def reopens(self) -> float:
        """When the oldest start counted leaves the window (there is one while calls wait)."""
        return self.starts[0] + self.window

    def release(self) -> deque[Any]:
        """The window moved on: hand back every parked call, in the order they were parked."""
        waiting, self.waiting = self.waiting, deque()
        return waiting


class RateLimits:
    """The buckets, one per key (``RateLimit.key``, or the activity's name)."""

    def __init__(self) -> None:
        self._buckets: dict[str, Bucket] = {}

    def admit(self, call: Any, name: str, limit: RateLimit, now: float) -> Bucket | None:
        """Count an attempt of ``call`` (activity ``name``) if ``limit`` lets it start now
        (None), else park it and return its bucket; the caller arms the bucket's ``RATE``
        deadline when the bucket has just begun to park calls (``len(waiting) == 1``)."""
        key = limit.key or f"activity:{name}"
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(limit.time_window_in_sec, limit.max_execution)
        bucket.expire(now)
        if not bucket.waiting and len(bucket.starts) < bucket.limit:
            bucket.starts.append(now)
            return None
        bucket.waiting.append(call)
        return bucket
