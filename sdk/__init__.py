"""activitypool's authoring API: define activities, and the context they run in.

Only re-exports live here; see the private modules for the code. They load lazily (PEP 562), so
that a worker process, which imports ``sdk._context`` and ``sdk._definition``, never pays for
the local runner or the retry policy.
"""

from __future__ import annotations

from sdk._lazy import lazy_exports

TYPE_CHECKING = False  # not typing's: a worker imports this package (see sdk._lazy)
if TYPE_CHECKING:
    from ._context import ActivityInfo, activity_heartbeat
    from ._decorator import activity, with_options
    from ._definition import (
        ActivityDefinition,
        RateLimit,
        activities_in_module,
        get_definition,
    )
    from ._depends import Depends
    from ._errors import (
        ActivityDefinitionError,
        ActivityError,
        ActivityInputError,
        ActivityPoolError,
        ActivityTimeoutError,
        ApplicationError,
        PoolClosedError,
        RemoteTraceback,
        StickySessionLostError,
        StickyWorkerSessionMissingError,
        TimeoutType,
        WorkerCrashedError,
    )
    from ._local import LocalRunner, run_activities_locally
    from ._retry import RetryPolicy, backoff_delay
    from ._session import (
        StickyWorkerSession,
        get_sticky_worker_session,
        run_sticky_worker_session,
    )

__all__ = [
    "ActivityDefinition",
    "ActivityDefinitionError",
    "ActivityError",
    "ActivityInfo",
    "ActivityInputError",
    "ActivityPoolError",
    "ActivityTimeoutError",
    "ApplicationError",
    "Depends",
    "LocalRunner",
    "PoolClosedError",
    "RateLimit",
    "RemoteTraceback",
    "RetryPolicy",
    "StickySessionLostError",
    "StickyWorkerSession",
    "StickyWorkerSessionMissingError",
    "TimeoutType",
    "WorkerCrashedError",
    "activities_in_module",
    "activity",
    "activity_heartbeat",
    "backoff_delay",
    "get_definition",
    "get_sticky_worker_session",
    "run_activities_locally",
    "run_sticky_worker_session",
    "with_options",
]

_WHERE = {
    "ActivityInfo": "sdk._context",
    "StickyWorkerSession": "sdk._session",
    "activity_heartbeat": "sdk._context",
    "get_sticky_worker_session": "sdk._session",
    "run_sticky_worker_session": "sdk._session",
    "ActivityDefinition": "sdk._definition",
    "RateLimit": "sdk._definition",
    "activities_in_module": "sdk._definition",
    "activity": "sdk._decorator",
    "get_definition": "sdk._definition",
    "with_options": "sdk._decorator",
    "Depends": "sdk._depends",
    "ActivityDefinitionError": "sdk._errors",
    "ActivityError": "sdk._errors",
    "ActivityInputError": "sdk._errors",
    "ActivityPoolError": "sdk._errors",
    "ActivityTimeoutError": "sdk._errors",
    "ApplicationError": "sdk._errors",
    "PoolClosedError": "sdk._errors",
    "RemoteTraceback": "sdk._errors",
    "StickySessionLostError": "sdk._errors",
    "StickyWorkerSessionMissingError": "sdk._errors",
    "TimeoutType": "sdk._errors",
    "WorkerCrashedError": "sdk._errors",
    "LocalRunner": "sdk._local",
    "run_activities_locally": "sdk._local",
    "RetryPolicy": "sdk._retry",
    "backoff_delay": "sdk._retry",
}


__getattr__, __dir__ = lazy_exports("sdk", _WHERE, globals(), __all__)
