"""Making a ``Call``: a caller's request validated and pickled, in the calling thread.

``CallMaker`` checks the arguments against the activity, pickles them once (retries reuse the
pickle), resolves the retry policy and the sticky session, and makes the ``Call`` with its
waiter (``pool._waiters``): one path for every kind of caller. Only the finished call crosses
to the loop thread. A mistake of the caller (bad arguments, a sticky activity without a
session, a closed session) raises here, and nothing is sent.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterable, Callable, Iterable
from functools import partial
from typing import Any, Protocol

from pool import _chunks, _map
from pool._calls_state import Call, CallState
from pool._loop import Inbox
from pool._otel import OTEL_MODULE
from pool._protocol import dumps, lift_call_bytes
from pool._timeouts import chunk_limits
from pool._waiters import Waiter
from sdk._definition import ActivityDefinition, get_definition
from sdk._errors import ActivityInputError, StickyWorkerSessionMissingError, safe_repr
from sdk._retry import RetryPolicy


class CallMaker:
    """Makes the calls of one pool. Any thread may use it: its caches are single dict and set
    operations, and a race only computes the same entry twice."""

    def __init__(
        self, default_policy: RetryPolicy, on_session_close: Callable[[Any], None]
    ) -> None:
        self._ids = itertools.count(1)  # call ids, unique within the pool
        self._default_policy = default_policy
        self._policies: dict[int, RetryPolicy] = {}
        self._on_session_close = on_session_close
        self._sessions_hooked: set[str] = set()

    def call(
        self, defn: ActivityDefinition, args: tuple, kwargs: dict, session: Any, waiter: Waiter
    ) -> Call:
        """One call of ``defn(*args, **kwargs)``, answered through ``waiter``."""
        sid = self.session_id(defn, session)
        args, kwargs = defn.validate_args(args, kwargs)
        try:
            payload = dumps(lift_call_bytes(args, kwargs))
        except Exception as exc:
            raise ActivityInputError(
                f"arguments of activity {defn.name!r} cannot be pickled: {safe_repr(exc)}"
            ) from exc
        return self._new(defn, self.policy(defn), payload, waiter, sid)

    def chunk_call(
        self, defn: ActivityDefinition, session: Any, items: list[Any], waiter: Waiter, kind: int
    ) -> Call:
        """One call running ``defn`` over ``items`` (validated) in one attempt, in one worker
        (see ``pool._chunks``; ``kind`` says how each item is passed): its time limits are the
        activity's times the number of items, its result the list of theirs."""
        sid = self.session_id(defn, session)
        try:
            payload = dumps((items, {}))
        except Exception as exc:
            raise ActivityInputError(
                f"arguments of activity {defn.name!r} cannot be pickled: {safe_repr(exc)}"
            ) from exc
        call = self._new(defn, self.policy(defn), payload, waiter, sid)
        call.start_to_close, call.schedule_to_close = chunk_limits(defn, len(items))
        call.chunk = kind
        return call

    def session_id(self, defn: ActivityDefinition, session: Any) -> str | None:
        """The sticky session a call of ``defn`` belongs to (None if it is not sticky)."""
        if not defn.sticky_to_worker:
            return None
        if session is None:
            raise StickyWorkerSessionMissingError(
                f"activity {defn.name!r} is sticky_to_worker: call it inside "
                "run_sticky_worker_session() or pool.sticky_session()"
            )
        sid: str = session.session_id
        if session.closed:
            raise ActivityInputError(f"sticky session {sid} is closed; start a new one")
        if sid not in self._sessions_hooked:
            self._sessions_hooked.add(sid)
            session.on_close(self._session_closed)
        return sid

    def _session_closed(self, session: Any) -> None:
        self._sessions_hooked.discard(session.session_id)
        self._on_session_close(session)

    def policy(self, defn: ActivityDefinition) -> RetryPolicy:
        policy = self._policies.get(id(defn))
        if policy is None:
            policy = defn.retry_policy(self._default_policy)
            # Only a registered definition lives as long as the process, so only its id is a
            # safe key: a per-call copy (with_options) is freed, and its id reused, soon.
            if _registered(defn):
                self._policies[id(defn)] = policy
        return policy

    def _new(
        self, defn: ActivityDefinition, policy: RetryPolicy, payload: Any, waiter: Waiter, sid: Any
    ) -> Call:
        call = Call(
            next(self._ids),
            defn,
            policy,
            payload,
            waiter,
            sid,
            defn.start_to_close_timeout,
            defn.schedule_to_close_timeout,
        )
        if OTEL_MODULE in sys.modules:  # the caller's current span (the calling thread's)
            from pool._otel import capture

            call.trace = capture()
        return call


def _registered(defn: ActivityDefinition) -> bool:
    """Whether ``defn`` is the definition registered under its name (not a per-call copy)."""
    try:
        return get_definition(defn.name) is defn
    except ActivityInputError:
        return False


def check_chunksize(chunksize: Any) -> int:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an int >= 1, got {chunksize!r}")
    if chunksize < 1:
        raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
    return chunksize


def map_source(iterable: Iterable[Any] | AsyncIterable[Any]) -> tuple[Any, bool]:
    """An iterator over a map's input, and whether it is an async one."""
    if isinstance(iterable, AsyncIterable):
        return aiter(iterable), True
    return iter(iterable), False


class LoopSide(Protocol):
    """What a map needs of the supervisor: its inbox, and the actions it hands over."""

    @property
    def inbox(self) -> Inbox: ...
    def submit_many(self, calls: list[Call], /) -> None: ...
    def cancel_many(self, calls: list[Call], /) -> None: ...
    def wake_later(self, wake: Callable[[], None], /) -> None: ...


def map_run(
    defn: ActivityDefinition,
    session: Any,
    *,
    make: Callable[[ActivityDefinition, tuple, dict, Any, Waiter], Call],
    chunk_call: Callable[..., Call],
    check_open: Callable[[], object],
    sup: LoopSide,
    loop: asyncio.AbstractEventLoop | None,
    window: int,
    chunksize: int,
    ordered: bool,
    threaded: bool,
    spread: bool,
) -> _map.MapRun:
    """The ``MapRun`` of one map of ``defn`` (checked by the pool): how it makes the call of
    an item (``make``) or of a chunk (``chunk_call``), and hands calls and cancellations to
    the loop. ``spread``: each item is an ``(args, kwargs)`` pair."""
    inbox = sup.inbox

    def one(item: Any, waiter: Waiter) -> Call:
        return make(defn, (item,), {}, session, waiter)

    def one_spread(item: Any, waiter: Waiter) -> Call:
        return make(defn, item[0], item[1], session, waiter)

    def check_spread(item: Any) -> Any:
        return defn.validate_args(item[0], item[1])

    kind = _chunks.SPREAD if spread else _chunks.ITEMS

    def chunk(items: list[Any], waiter: Waiter) -> Call:
        check_open()
        return chunk_call(defn, session, items, waiter, kind)

    def session_closed() -> bool:
        return defn.sticky_to_worker and session.closed

    def cancel_many(calls: list[Call]) -> None:
        inbox.put(partial(sup.cancel_many, calls))

    def cancel_waiting(calls: list[Call]) -> None:
        """A sticky map that its consumer left: cancel its calls except one that runs (that
        would kill the session's worker and lose the session); it finishes, nothing follows."""

        def cancel() -> None:  # on the loop, where the calls' state is current
            sup.cancel_many([call for call in calls if call.state is not CallState.RUNNING])

        inbox.put(cancel)

    return _map.MapRun(
        window=window,
        chunksize=chunksize,
        ordered=ordered,
        one=one_spread if spread else one,
        check=check_spread if spread else defn.item_check(),
        chunk=chunk,
        stopped=session_closed,
        submit=lambda calls: inbox.put(partial(sup.submit_many, calls)),
        cancel=cancel_waiting if defn.sticky_to_worker else cancel_many,
        wake_later=sup.wake_later,
        loop=loop,
        threaded=threaded,
    )
