"""The contenders behind one small interface, and the clean-up that leaves no process behind.

Every contender is a context manager. Leaving it closes the pool (a peer's close is bounded in
time) and then sweeps this process's descendants: anything still alive after a grace period is
SIGKILLed and reported in ``leaked``, so a row can say that a pool let a process outlive it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import multiprocessing.pool
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from benchmarks import _activities

# Longest single wait on any pool. A peer that takes longer is reported n/a, never waited on.
WAIT = 120.0
# How long a pool's processes may take to exit after close before they count as leaked.
GRACE = 3.0
# How long a peer's close may take before it counts as hung (the sweep then kills its processes).
CLOSE_LIMIT = 5.0
# Helper processes that libraries keep for the life of the interpreter, not per pool.
HELPER_MARKERS = ("resource_tracker", "semaphore_tracker", "forkserver")

# Problems seen while cleaning up (a pool's close failed, a process outlived its pool).
problems: list[str] = []


class Broken(Exception):
    """The pool refuses work after a failure (e.g. ``BrokenProcessPool``)."""


# -- processes ---------------------------------------------------------------------------------


def _is_helper(proc: psutil.Process) -> bool:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(marker in cmd for marker in HELPER_MARKERS)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def descendants(helpers: bool = False) -> list[psutil.Process]:
    """Live descendants of this process; library helper processes only if ``helpers``."""
    try:
        procs = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    return [p for p in procs if _alive(p) and (helpers or not _is_helper(p))]


def sweep(grace: float = GRACE, helpers: bool = False) -> list[str]:
    """Wait up to ``grace`` s for descendants to exit, then SIGKILL the rest; describe those."""
    deadline = time.monotonic() + grace
    procs = descendants(helpers)
    while procs and time.monotonic() < deadline:
        time.sleep(0.02)
        procs = [p for p in procs if _alive(p)]
    killed = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            killed.append(f"pid {proc.pid} ({' '.join(proc.cmdline())[:60]})")
            proc.kill()
    if procs:
        psutil.wait_procs(procs, timeout=2.0)
    _reap_zombies()
    return killed


def _reap_zombies() -> None:
    """Collect exit statuses nobody else will (a killed stray); never blocks."""
    for proc in psutil.Process().children():
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if proc.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(proc.pid, os.WNOHANG)


def child_pids() -> list[int]:
    """Worker pids of a peer: this process's direct children, library helpers excepted."""
    try:
        procs = psutil.Process().children()
    except psutil.Error:
        return []
    return sorted(p.pid for p in procs if _alive(p) and not _is_helper(p))


def bounded(fn: Callable[[], Any], timeout: float, what: str) -> None:
    """Run ``fn`` in a daemon thread; give up (the sweep follows) after ``timeout`` s."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"bench-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{what}() hung (gave up after {timeout:g} s)")
    if errors:
        raise errors[0]


# -- the contenders ----------------------------------------------------------------------------


class Contender:
    """A 2-worker pool behind submit/call/map; subclasses fill in the pool-specific parts."""

    name = ""
    workers = 2
    activitypool = False
    has_task_timeout = False

    def __init__(self) -> None:
        self.leaked: list[str] = []
        self.close_error: str | None = None

    # lifecycle
    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Contender:
        try:
            self.start()
        except BaseException:
            self._finish()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish()

    def _finish(self) -> None:
        try:
            self.close()
        except BaseException as exc:
            self.close_error = f"{type(exc).__name__}: {exc}"
            problems.append(f"{self.name}: close failed: {self.close_error}")
        finally:
            self.leaked = sweep()
            if self.leaked:
                problems.append(f"{self.name}: {len(self.leaked)} process(es) outlived close")

    # work
    def fn(self, key: str) -> Callable[..., Any]:
        """The function called ``key`` in ``benchmarks._activities``, in this pool's flavour."""
        return getattr(_activities, f"ap_{key}" if self.activitypool else key)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Start one task; returns an object with ``result(timeout)``."""
        raise NotImplementedError

    def submit_with_timeout(self, fn: Callable[..., Any], timeout: float) -> Any:
        raise NotImplementedError(f"{self.name} has no per-task timeout")

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.submit(fn, *args).result(WAIT)

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        raise NotImplementedError

    def submit_all(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        futures = [self.submit(fn, item) for item in items]
        return [f.result(WAIT) for f in futures]

    def worker_pids(self) -> list[int]:
        return child_pids()

    def rebuild(self) -> str:
        """Make the pool usable after it broke; returns what was done (for the notes)."""
        raise Broken(f"{self.name} cannot be rebuilt")


class ActivityPool(Contender):
    activitypool = True

    def __init__(
        self,
        thread_limit: int | str | None = "auto",
        name: str = "activitypool",
        spares: int = 0,
        events: bool = False,
        start_method: str = "forkserver",
    ):
        super().__init__()
        self.name = name
        self.thread_limit = thread_limit
        self.spares = spares
        self.start_method = start_method
        # on_event only where a row reads events: a callback per call costs the loop thread
        # (~20% of its time on no-ops), which no peer pays
        self.events_on = events
        self.pool: Any = None
        self.events: list[tuple[str, float, int | None]] = []
        self.changed = threading.Condition()

    def _on_event(self, event: Any) -> None:
        with self.changed:
            self.events.append((event.kind, time.perf_counter(), event.pid))
            self.changed.notify_all()

    def wait_event(self, kind: str, after: float, timeout: float) -> float:
        """perf_counter time of the first ``kind`` event later than ``after``."""
        if not self.events_on:
            raise RuntimeError("this contender was made without events=True")
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for k, t, _ in self.events:
                    if k == kind and t > after:
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {kind} event within {timeout} s")
                self.changed.wait(left)

    def start(self) -> None:
        from pool import Pool

        self.pool = Pool(
            [_activities],
            workers=self.workers,
            thread_limit=self.thread_limit,
            on_event=self._on_event if self.events_on else None,
            spares=self.spares,
            start_method=self.start_method,
        )
        self.pool.__enter__()

    def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.__exit__(None, None, None)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.submit(fn, *args)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.run(fn, *args)  # the blocking call, as a user writes it

    def submit_with_timeout(self, fn: Callable[..., Any], timeout: float) -> Any:
        # the deadline is the activity's own start_to_close_timeout
        return self.pool.submit(fn)

    def map(
        self, fn: Callable[..., Any], items: Iterable[Any], chunksize: int | None = None
    ) -> list[Any]:
        """``chunksize``: items per call (None: the pool's default, one)."""
        if chunksize is None:
            return list(self.pool.map(fn, items))
        return list(self.pool.map(fn, items, chunksize=chunksize))

    def worker_pids(self) -> list[int]:
        return sorted(self.pool.worker_pids())


class _Executor(Contender):
    """A ``concurrent.futures.Executor`` peer (ProcessPoolExecutor, loky)."""

    ex: Any

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return self.ex.submit(fn, *args)
        except concurrent.futures.BrokenExecutor as exc:
            raise Broken(type(exc).__name__) from exc

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        return list(self.ex.map(fn, items, timeout=WAIT))


class ProcessPoolExecutor(_Executor):
    name = "ProcessPoolExecutor"

    def start(self) -> None:
        self.ex = concurrent.futures.ProcessPoolExecutor(max_workers=self.workers)

    def close(self) -> None:
        ex = self.ex
        bounded(lambda: ex.shutdown(wait=True, cancel_futures=True), CLOSE_LIMIT, "shutdown")

    def rebuild(self) -> str:
        with contextlib.suppress(Exception):
            self.ex.shutdown(wait=False, cancel_futures=True)
        self.start()
        return "broken pool: new executor"


class _MpFuture:
    def __init__(self, result: multiprocessing.pool.AsyncResult) -> None:
        self._result = result

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._result.get(timeout)
        except multiprocessing.TimeoutError:
            raise TimeoutError("multiprocessing.Pool result not ready") from None


class MultiprocessingPool(Contender):
    name = "multiprocessing.Pool"

    def start(self) -> None:
        self.pool = multiprocessing.Pool(self.workers)

    def close(self) -> None:
        pool = self.pool

        def stop() -> None:
            pool.terminate()
            pool.join()

        bounded(stop, CLOSE_LIMIT, "terminate")

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return _MpFuture(self.pool.apply_async(fn, args))

    def map(
        self, fn: Callable[..., Any], items: Iterable[Any], chunksize: int | None = None
    ) -> list[Any]:
        """``chunksize``: items per task (None: multiprocessing's default, len/(4*workers))."""
        return _MpFuture(self.pool.map_async(fn, list(items), chunksize)).result(WAIT)


class Loky(_Executor):
    name = "loky"

    def start(self) -> None:
        import loky

        # idle workers stay up for the whole row (loky's default is to reap them after 10 s)
        self.ex = loky.get_reusable_executor(max_workers=self.workers, timeout=600)

    def close(self) -> None:
        ex = self.ex
        bounded(lambda: ex.shutdown(wait=True, kill_workers=True), CLOSE_LIMIT, "shutdown")

    def rebuild(self) -> str:
        self.start()  # get_reusable_executor replaces a broken executor
        return "broken executor: get_reusable_executor() again"


class Pebble(Contender):
    name = "pebble"
    has_task_timeout = True

    def start(self) -> None:
        import pebble

        self.pool = pebble.ProcessPool(max_workers=self.workers)

    def close(self) -> None:
        pool = self.pool

        def stop() -> None:
            pool.stop()
            pool.join()

        bounded(stop, CLOSE_LIMIT, "stop")

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.schedule(fn, args=args)

    def submit_with_timeout(self, fn: Callable[..., Any], timeout: float) -> Any:
        return self.pool.schedule(fn, timeout=timeout)

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        return list(self.pool.map(fn, items).result())


PEERS: tuple[type[Contender], ...] = (ProcessPoolExecutor, MultiprocessingPool, Loky, Pebble)


# -- the raw limit -----------------------------------------------------------------------------


class RawPipe:
    """A forked child echoing over a pair of os.pipe()s: the floor under any process pool.

    A message is an 8-byte length header and that many bytes; a ping is a bare header (8 bytes
    each way).
    """

    name = "raw pipe (fork)"

    def __init__(self) -> None:
        self.pid: int | None = None
        self.leaked: list[str] = []
        self.close_error: str | None = None

    def __enter__(self) -> RawPipe:
        down_r, self.down_w = os.pipe()
        self.up_r, up_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: echo until EOF, never return into the benchmark
            code = 0
            try:
                os.close(self.down_w)
                os.close(self.up_r)
                _echo_loop(down_r, up_w)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        self.pid = pid
        os.close(down_r)
        os.close(up_w)
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in (self.down_w, self.up_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.pid is not None:
            try:
                deadline = time.monotonic() + GRACE
                while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                    if time.monotonic() > deadline:
                        os.kill(self.pid, signal.SIGKILL)
                        os.waitpid(self.pid, 0)
                        self.leaked.append(f"pid {self.pid} (raw pipe child)")
                        problems.append(f"{self.name}: child did not exit, killed")
                        break
                    time.sleep(0.005)
            except ChildProcessError:
                pass
            self.pid = None

    def ping(self, _: Any = None) -> None:
        os.write(self.down_w, b"\0" * 8)
        if len(os.read(self.up_r, 8)) != 8:
            raise EOFError("raw pipe child went away")

    def echo(self, payload: Any) -> int:
        view = memoryview(payload).cast("B")
        _write_all(self.down_w, view.nbytes.to_bytes(8, "little"))
        _write_all(self.down_w, view)
        n = int.from_bytes(_read_exact(self.up_r, 8), "little")
        return len(_read_exact(self.up_r, n))


def _echo_loop(rfd: int, wfd: int) -> None:
    while True:
        header = _read_exact(rfd, 8, eof_ok=True)
        if not header:
            return
        n = int.from_bytes(header, "little")
        body = _read_exact(rfd, n)
        _write_all(wfd, header)
        _write_all(wfd, body)


def _read_exact(fd: int, n: int, eof_ok: bool = False) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            if eof_ok and got == 0:
                return bytearray()
            raise EOFError(f"pipe closed after {got} of {n} bytes")
        got += k
    return buf


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[os.write(fd, view) :]
