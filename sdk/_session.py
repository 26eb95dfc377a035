"""Sticky sessions: :class:`StickyWorkerSession` and the ambient session of the running code.

``run_sticky_worker_session()`` makes a session ambient; the pool and the local runner read it
(``get_sticky_worker_session()``) when they dispatch a call. Re-exported by ``sdk._context``.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

TYPE_CHECKING = False  # not typing's: a worker imports this module (see sdk._lazy)
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

__all__ = ["StickyWorkerSession", "get_sticky_worker_session", "run_sticky_worker_session"]


# What names a new session: None is a random uuid4. A workflow engine, whose code must be
# deterministic, installs its own for the workflows it runs (see pool.temporal).
_session_ids: ContextVar[Callable[[], str] | None] = ContextVar(
    "activitypool_session_ids", default=None
)


def set_session_id_factory(factory: Callable[[], str] | None) -> Token[Callable[[], str] | None]:
    """Name the sessions created in this context with ``factory()`` (None: uuid4)."""
    return _session_ids.set(factory)


class StickyWorkerSession:
    """A sticky session: its sticky activities all run on one worker process.

    The pool binds the session to a worker on its first sticky activity and registers a release
    callback with :meth:`on_close`. Closing is idempotent; callbacks run once, in registration
    order; a callback registered after close runs at once.
    """

    def __init__(self, session_id: str | None = None) -> None:
        if session_id is None:
            factory = _session_ids.get()
            if factory is not None:
                session_id = factory()
            else:
                import uuid  # lazily: workers never make sessions

                session_id = uuid.uuid4().hex
        self.session_id: str = session_id
        self.closed: bool = False
        self._callbacks: list[Callable[[StickyWorkerSession], None]] = []

    def on_close(self, cb: Callable[[StickyWorkerSession], None]) -> None:
        """Call ``cb(self)`` when the session closes (at once if it is already closed)."""
        if self.closed:
            self._run_callback(cb)
        else:
            self._callbacks.append(cb)

    def close(self) -> None:
        """Close the session and run its callbacks; later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            self._run_callback(cb)

    def _run_callback(self, cb: Callable[[StickyWorkerSession], None]) -> None:
        # One failing release callback must not keep the others (other pools) from running.
        try:
            cb(self)
        except Exception:
            import logging  # lazily: only a failing callback needs it

            logging.getLogger(__name__).exception(
                "sticky session %s: close callback %r failed", self.session_id, cb
            )

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<StickyWorkerSession {self.session_id} {state}>"


_current_session: ContextVar[StickyWorkerSession | None] = ContextVar(
    "activitypool_current_session", default=None
)


def get_sticky_worker_session() -> StickyWorkerSession | None:
    """The ambient sticky session (innermost ``run_sticky_worker_session``), or None."""
    return _current_session.get()


class run_sticky_worker_session:
    """Make a sticky session ambient for the body; ``async with`` or plain ``with``.

    Nestable: the inner session wins and the outer one is restored on exit. Yields the session.
    A session created here is closed on exit; a session passed in is left open (its owner
    closes it).
    """

    def __init__(self, session: StickyWorkerSession | None = None) -> None:
        self._owned = session is None
        self.session = session if session is not None else StickyWorkerSession()
        self._tokens: list[Token[StickyWorkerSession | None]] = []

    def __enter__(self) -> StickyWorkerSession:
        self._tokens.append(_current_session.set(self.session))
        return self.session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _current_session.reset(self._tokens.pop())
        if self._owned:
            self.session.close()

    async def __aenter__(self) -> StickyWorkerSession:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
