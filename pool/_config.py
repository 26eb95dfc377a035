"""Every option of a pool, documented and validated once (``PoolConfig``).

``Pool(...)`` takes the options a user writes (``workers=None``, ``thread_limit="auto"``,
``cpu_affinity=True``) and makes a ``PoolConfig`` of them with :meth:`PoolConfig.from_options`;
the supervisor, the scheduler and the spawner read it and never change it.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pool._process import new_pool_id
from sdk._definition import activities_in_module, get_definition

START_METHODS = ("forkserver", "fork", "spawn")
# The longest reply spin allowed: a spin burns a core, worth it only for calls shorter than
# the loop's wake-up (tens of microseconds); ten milliseconds is far past that.
MAX_REPLY_SPIN = 0.01


@dataclass(frozen=True)
class PoolConfig:
    """The options of one pool, in the form the runtime uses; checked at construction."""

    workers: int
    """Worker processes the pool keeps (>= 1)."""
    prefetch: int = 32
    """Calls sent ahead into a busy worker's pipe, at most (>= 0; see the scheduler)."""
    cancel_grace: float = 1.0
    """Seconds a cancelled activity has to finish before its worker is killed (>= 0)."""
    start_timeout: float = 60.0
    """Seconds a new worker has to report ready (> 0)."""
    shutdown_timeout: float = 5.0
    """Seconds a worker told to stop has before it is killed; also the pool's wait for its
    workers when it closes with ``cancel`` (> 0)."""
    max_tasks_per_worker: int | None = None
    """A worker is replaced after this many attempts (None: never)."""
    max_memory_per_worker: int | None = None
    """A worker whose resident memory exceeds this many bytes after a call is replaced (None:
    no limit)."""
    thread_limit: int | None = None
    """Threads per worker given to BLAS/OpenMP libraries through their variables (None: their
    own default)."""
    cpu_affinity: tuple[frozenset[int], ...] | None = None
    """CPU sets: worker n runs on set ``(n - 1) % len`` (None: unpinned)."""
    preload: tuple[str, ...] = ()
    """Modules every worker imports before it reports ready (the activities' modules)."""
    spares: int = 0
    """Ready workers held back to replace one that dies (>= 0)."""
    start_method: Literal["forkserver", "fork", "spawn"] = "forkserver"
    """``"forkserver"``: a fresh fork server forks the workers; ``"fork"``: a fork server forked
    from the caller (while it has one thread, else a fresh one); ``"spawn"``: a fresh
    interpreter per worker."""
    reply_spin: float = 0.0
    """After sending the pool's only call, of an activity that takes less than this on average:
    wait for its reply on the CPU (up to this long) instead of sleeping in the loop (0: never;
    at most ``MAX_REPLY_SPIN``)."""
    direct_run: float = 0.0
    """``pool.run`` from a thread, while the pool has nothing else to do: the thread writes the
    call to a worker lent to it and reads the reply itself (see ``pool._lane``), and hands the
    call to the loop if it has not answered within this many seconds, or half of
    ``shutdown_timeout`` if that is less (0: never lend)."""
    pool_id: str = field(default_factory=new_pool_id)
    """In the environment of every process the pool starts (``pool._tree.POOL_MARKER``)."""

    def __post_init__(self) -> None:
        if not _is_int(self.workers) or self.workers < 1:
            raise ValueError(f"workers must be a positive int, got {self.workers!r}")
        if self.max_tasks_per_worker is not None and self.max_tasks_per_worker < 1:
            raise ValueError("max_tasks_per_worker must be >= 1 or None")
        if self.max_memory_per_worker is not None and self.max_memory_per_worker < 1:
            raise ValueError("max_memory_per_worker must be a positive byte count or None")
        if self.start_method not in START_METHODS:
            raise ValueError(
                f"unsupported start_method {self.start_method!r}: 'forkserver', 'fork' or 'spawn'"
            )
        if self.prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        if not isinstance(self.spares, int) or self.spares < 0:
            raise ValueError("spares must be an int >= 0")
        spin = self.reply_spin
        if (
            isinstance(spin, bool)
            or not isinstance(spin, int | float)
            or not 0 <= spin <= MAX_REPLY_SPIN
        ):
            raise ValueError(f"reply_spin must be seconds in [0, 0.01], got {spin!r}")
        lane = self.direct_run
        if isinstance(lane, bool) or not isinstance(lane, int | float) or not 0 <= lane <= 1:
            raise ValueError(f"direct_run must be seconds in [0, 1], got {lane!r}")
        if self.cancel_grace < 0 or self.start_timeout <= 0 or self.shutdown_timeout <= 0:
            raise ValueError("cancel_grace must be >= 0; start and shutdown timeouts > 0")
        limit = self.thread_limit
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ValueError(
                f"thread_limit must be an int >= 1 (threads per worker), 'auto' or None "
                f"(no limit), got {limit!r}"
            )
        if self.cpu_affinity is not None and (not self.cpu_affinity or not all(self.cpu_affinity)):
            raise ValueError("cpu_affinity: give True, or a non-empty list of CPU sets")

    @classmethod
    def from_options(
        cls,
        activities: Iterable[Callable[..., Any] | types.ModuleType | str] = (),
        *,
        workers: int | None = None,
        thread_limit: int | Literal["auto"] | None = "auto",
        cpu_affinity: bool | Iterable[Iterable[int]] = False,
        reply_spin: float = 0.0,
        **options: Any,
    ) -> PoolConfig:
        """The config of ``Pool(activities, **options)``: ``workers=None`` is one per CPU,
        ``thread_limit="auto"`` shares the CPUs among the workers, ``cpu_affinity=True`` pins
        worker n to the n-th allowed CPU, and ``activities`` names the modules to preload."""
        if workers is None:
            workers = os.cpu_count() or 1
        if thread_limit == "auto":
            # (a bad ``workers`` is refused by the constructor, with its own message)
            ok = _is_int(workers) and workers >= 1
            thread_limit = max(1, (os.cpu_count() or 1) // workers) if ok else None
        affinity: tuple[frozenset[int], ...] | None = None
        if cpu_affinity is True:
            allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
            affinity = tuple(frozenset({cpu}) for cpu in allowed) or None
        elif cpu_affinity is not False:
            affinity = tuple(frozenset(int(c) for c in cpus) for cpus in cpu_affinity)
            if not affinity:
                raise ValueError("cpu_affinity: give True, or a non-empty list of CPU sets")
        if _is_number(reply_spin):
            reply_spin = float(reply_spin)
        return cls(
            workers=workers,
            thread_limit=thread_limit,
            cpu_affinity=affinity,
            reply_spin=reply_spin,
            preload=preload_modules(activities),
            **options,
        )


def preload_modules(
    activities: Iterable[Callable[..., Any] | types.ModuleType | str],
) -> tuple[str, ...]:
    """The modules workers import for these activities: an activity's module, or a module (or
    dotted name) given whole."""
    preload: list[str] = []
    for item in activities:
        if isinstance(item, types.ModuleType | str):
            defs = activities_in_module(item)
            name = item if isinstance(item, str) else item.__name__
            if defs or name not in preload:
                preload.append(name)
        else:
            defn = get_definition(item)
            if defn.module not in preload:
                preload.append(defn.module)
    return tuple(preload)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
