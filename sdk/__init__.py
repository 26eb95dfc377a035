"""activitypool's authoring API: define activities, and the context they run in.

Only re-exports live here; see the private modules for the code.
"""

from ._context import (
    ActivityInfo,
    StickyWorkerSession,
    activity_heartbeat,
    get_sticky_worker_session,
    run_sticky_worker_session,
)
from ._definition import (
    ActivityDefinition,
    RateLimit,
    activities_in_module,
    activity,
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
]
