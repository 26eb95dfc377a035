"""A thread that SIGKILLs a pool's workers at random moments (for the chaos tests)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from collections.abc import Iterator
from typing import Any

from pool import Pool


class RandomKiller:
    """Pass ``on_event`` to the pool, then run the work inside ``killing(pool)``.

    Only workers that are up are killed: a pool gives up on workers that keep dying before they
    are ready (a loaded machine starts them slowly), which is another test.
    """

    def __init__(self, seed: int, kills: int, gap: tuple[float, float], delay: float = 0.0):
        self.rng = random.Random(seed)
        self.kills, self.gap, self.delay = kills, gap, delay
        self.events: list[Any] = []
        self.ready: set[int] = set()
        self._stop = threading.Event()

    def on_event(self, event: Any) -> None:
        self.events.append(event)
        if event.kind == "worker_started" and event.pid is not None:
            self.ready.add(event.pid)

    def count(self, kind: str) -> int:
        return sum(e.kind == kind for e in self.events)

    @contextlib.contextmanager
    def killing(self, pool: Pool) -> Iterator[None]:
        thread = threading.Thread(target=self._run, args=(pool,))
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    def _run(self, pool: Pool) -> None:
        if self.delay and self._stop.wait(self.delay):
            return
        for _ in range(self.kills):
            if self._stop.wait(self.rng.uniform(*self.gap)):
                return
            pids = sorted(self.ready.intersection(pool.worker_pids()))
            if pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
