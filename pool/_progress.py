"""Progress of a map, and the summary of a run: counters, a latency histogram, and their display.

``Progress`` is fed from two threads: the consumer of the map (``item``: an outcome handed
over) and the pool's loop thread (``on_event``: attempts, retries, workers lost). Each counter
has one writer; the display only reads them, so a number may be one event stale, never wrong.

On a terminal the display is a live bar drawn with rich; elsewhere a plain line every few
seconds. rich is imported only here, only when something is shown: a worker never imports it
(tests/integration/test_worker_light.py).
"""

from __future__ import annotations

import collections
import math
import sys
import threading
import time
from typing import IO, Any

from pool._events import PoolEvent

# Order in which kill reasons are shown (others follow, by name).
REASONS = (
    "deadline",
    "heartbeat",
    "schedule_to_close",
    "cancel",
    "crash",
    "protocol_error",
    "start_timeout",
    "memory_recycle",
    "tasks_recycle",
    "shutdown",
)
# The events a Progress counts: a pool builds only these for it.
KINDS = frozenset(
    {
        "attempt_completed",
        "attempt_failed",
        "retry_scheduled",
        "worker_killed",
        "worker_exited",
        "worker_recycled",
    }
)
# Reasons that mean a worker was lost while working (recycling is planned, not lost).
_PLANNED = frozenset({"memory_recycle", "tasks_recycle", "shutdown"})


class Histogram:
    """Durations in buckets 2% wide (from 1 us): percentiles over any number of samples, in
    constant memory, within 1% of the exact value."""

    _BASE = 1e-6
    _GROWTH = 1.02

    def __init__(self) -> None:
        self._log = math.log(self._GROWTH)
        self.counts: collections.Counter[int] = collections.Counter()
        self.n = 0

    def add(self, seconds: float) -> None:
        i = 0 if seconds <= self._BASE else int(math.log(seconds / self._BASE) / self._log) + 1
        self.counts[i] += 1
        self.n += 1

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1): the middle of its bucket."""
        if not self.n:
            return None
        rank = max(1, math.ceil(q * self.n))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return self._BASE if i == 0 else self._BASE * self._GROWTH ** (i - 0.5)
        raise AssertionError("unreachable")  # pragma: no cover


class Progress:
    """What a run has done so far. ``total`` is the number of items, when known."""

    def __init__(self, total: int | None = None) -> None:
        self.total = total
        self.started = time.monotonic()
        self.ended: float | None = None
        # the consumer's
        self.done = 0
        self.failed = 0
        # the loop thread's
        self.attempts = 0
        self.retries = 0
        self.kills: collections.Counter[str] = collections.Counter()
        self.latency = Histogram()

    # -- feeding ---------------------------------------------------------------------------
    def item(self, failed: bool, count: int = 1) -> None:
        self.done += count
        if failed:
            self.failed += count

    def on_event(self, ev: PoolEvent) -> None:
        kind = ev.kind
        if kind == "attempt_completed":
            self.attempts += 1
            if ev.latency is not None:
                self.latency.add(ev.latency)
        elif kind == "attempt_failed":
            self.attempts += 1
        elif kind == "retry_scheduled":
            self.retries += 1
        elif kind in ("worker_killed", "worker_exited", "worker_recycled"):
            self.kills[ev.reason or "unknown"] += 1

    def finish(self) -> None:
        if self.ended is None:
            self.ended = time.monotonic()

    # -- reading ---------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def rate(self) -> float:
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        if self.total is None or rate <= 0 or self.done >= self.total:
            return None
        return max(0.0, (self.total - self.done) / rate)

    def lost(self) -> list[tuple[str, int]]:
        """Workers ended, by reason, in display order (planned recycles included)."""
        kills = dict(self.kills)
        order = [r for r in REASONS if r in kills] + sorted(set(kills) - set(REASONS))
        return [(r, kills[r]) for r in order]

    def status(self) -> str:
        """One line: what the bar shows, in words (the plain display, and tests)."""
        done = f"{self.done:,}" + (f"/{self.total:,}" if self.total is not None else "")
        parts = [f"done {done}", f"failed {self.failed:,}", f"retried {self.retries:,}"]
        lost = [f"{r} {n}" for r, n in self.lost() if r not in _PLANNED]
        recycled = [f"{r} {n}" for r, n in self.lost() if r in _PLANNED]
        if lost:
            parts.append("workers lost: " + ", ".join(lost))
        if recycled:
            parts.append("recycled: " + ", ".join(recycled))
        parts.append(f"{self.rate():,.0f}/s")
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {_clock(eta)}")
        return " | ".join(parts)

    def summary_rows(self) -> list[tuple[str, str]]:
        """The end-of-run summary, as (what, value) rows."""
        wall = self.elapsed
        rows = [
            ("calls", f"{self.done:,}" + (f" ({self.failed:,} failed)" if self.failed else "")),
            ("attempts", f"{self.attempts:,}"),
            ("retries", f"{self.retries:,}"),
        ]
        lost = self.lost()
        rows.append(("workers ended", ", ".join(f"{r} {n}" for r, n in lost) if lost else "none"))
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            v = self.latency.quantile(q)
            rows.append((f"latency {name}", "-" if v is None else _duration(v)))
        rows.append(("wall time", _duration(wall)))
        rows.append(("throughput", f"{self.done / wall:,.1f} calls/s" if wall > 0 else "-"))
        return rows


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


class Display:
    """Shows a ``Progress`` while it runs: a live bar on a terminal, plain periodic lines
    otherwise, nothing when ``quiet``. ``start()``/``stop()``; ``summary()`` prints the table.
    """

    def __init__(
        self,
        progress: Progress,
        *,
        stream: IO[str] | None = None,
        quiet: bool = False,
        interval: float = 5.0,
        label: str = "",
        live: bool = True,
    ) -> None:
        self.progress = progress
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.interval = interval  # between plain lines
        self.label = label
        self.tty = isatty(self.stream)
        self.live = live and self.tty  # the bar; else plain lines
        self._live: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.quiet:
            return
        if self.live:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream)
            self._live = Live(
                _Renderable(self.progress, self.label),
                console=console,
                refresh_per_second=8,
                transient=False,
                # what else is written to this terminal meanwhile (the workers' output goes to
                # sys.stderr, looked up at each write) is printed above the bar, not through it
                redirect_stdout=self.stream is sys.stderr and isatty(sys.stdout),
                redirect_stderr=self.stream is sys.stderr,
            )
            self._live.start()
        else:
            # a display ticker, not the pool's logic: it wakes at once when stopped
            self._thread = threading.Thread(
                target=self._plain, name="activitypool-progress", daemon=True
            )
            self._thread.start()

    def _plain(self) -> None:
        while not self._stop.wait(self.interval):
            self._line()

    def _line(self) -> None:
        prefix = f"{self.label}: " if self.label else ""
        try:
            print(prefix + self.progress.status(), file=self.stream, flush=True)
        except (OSError, ValueError):  # the stream went away (a closed pipe)
            pass

    def stop(self) -> None:
        self.progress.finish()
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._line()  # the final state

    def summary(self, title: str = "summary") -> None:
        if self.quiet:
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column(justify="right")
        for what, value in self.progress.summary_rows():
            table.add_row(what, value)
        Console(file=self.stream, width=None if self.tty else 100).print(table)


class _Renderable:
    """What rich's Live redraws: built from the counters at each refresh."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress = progress
        self.label = label

    def __rich__(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        p = self.progress
        grid = Table.grid(padding=(0, 1))
        row: list[Any] = []
        if self.label:
            grid.add_column()
            row.append(Text(self.label, style="bold"))
        grid.add_column(width=30)
        grid.add_column()
        total = p.total
        row.append(ProgressBar(total=float(total) if total else None, completed=p.done, width=30))
        text = Text()
        text.append(f"{p.done:,}" + (f"/{total:,}" if total is not None else ""), style="bold")
        text.append("  failed ")
        text.append(f"{p.failed:,}", style="red" if p.failed else "")
        text.append(f"  retried {p.retries:,}")
        lost = [f"{r} {n}" for r, n in p.lost() if r not in _PLANNED]
        if lost:
            text.append("  lost: " + ", ".join(lost), style="yellow")
        text.append(f"  {p.rate():,.0f}/s")
        eta = p.eta()
        if eta is not None:
            text.append(f"  ETA {_clock(eta)}")
        row.append(text)
        grid.add_row(*row)
        return grid


def isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
