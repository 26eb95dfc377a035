"""The pool's one deadline structure: a heap on the monotonic clock, owned by the scheduler.

Every timeout, backoff and grace period of the pool is an entry here; the supervisor arms one
loop timer for ``next()``. Entries are never removed in place. Each records the generation
(``gen``) of the call or worker slot it guards, and every change of that object's state bumps
its generation: an entry whose object moved on is stale, and is dropped when it reaches the
top (``next``) or when it falls due (``due``). Whether an entry is still valid is the owner's
question (``valid``), since only the owner knows its objects' states.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Any

# The heap is rebuilt without its stale entries once it holds more than this many entries and
# more than COMPACT_RATIO per live object (a hot loop of short calls leaves 3 stale entries per
# call; popping them one by one at the top would let the heap grow with the call count).
COMPACT_MIN = 4096
COMPACT_RATIO = 4


class Deadline(enum.IntEnum):
    """What falls due. The scheduler decides what each means (``Scheduler.advance``, and
    ``pool._watchdog`` for those that stop attempts and workers)."""

    START_TO_CLOSE = 1  # an attempt ran too long
    HEARTBEAT = 2  # a running attempt sent no heartbeat in time
    SCHEDULE_TO_CLOSE = 3  # a call, across its attempts and waits, took too long
    RETRY = 4  # a call's backoff is over
    CANCEL_GRACE = 5  # a cancelled attempt did not stop in time: its worker goes
    WORKER_START = 6  # a worker did not finish its handshake in time
    RATE = 7  # a rate limit's window has room again
    WITHDRAW = 8  # a worker is idle while calls wait behind this running attempt


Entry = tuple[float, int, Deadline, Any, int]


class Deadlines:
    """``(when, order, kind, obj, gen)`` entries; ``order`` keeps equal times in push order.

    ``valid(kind, obj, gen)`` says whether an entry still guards something; ``live()`` is how
    many objects can hold valid entries (for compaction).
    """

    def __init__(
        self, valid: Callable[[Deadline, Any, int], bool], live: Callable[[], int]
    ) -> None:
        self._heap: list[Entry] = []
        self._order = itertools.count()
        self._valid = valid
        self._live = live

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, when: float, kind: Deadline, obj: Any, gen: int) -> None:
        heap = self._heap
        heapq.heappush(heap, (when, next(self._order), kind, obj, gen))
        if len(heap) > COMPACT_MIN and len(heap) > COMPACT_RATIO * self._live():
            self._compact()

    def _compact(self) -> None:
        valid = self._valid
        self._heap = [e for e in self._heap if valid(e[2], e[3], e[4])]
        heapq.heapify(self._heap)

    def next(self) -> float | None:
        """When the earliest valid entry falls due (stale entries on top are dropped)."""
        heap, valid = self._heap, self._valid
        while heap and not valid(heap[0][2], heap[0][3], heap[0][4]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def due(self, now: float) -> Iterator[tuple[Deadline, Any, int]]:
        """Pop every entry due by ``now`` and yield the valid ones, earliest first. Validity is
        checked as each is reached, so handling one may make a later one stale."""
        heap, valid = self._heap, self._valid
        while heap and heap[0][0] <= now:
            _, _, kind, obj, gen = heapq.heappop(heap)
            if valid(kind, obj, gen):
                yield kind, obj, gen
