"""activitypool's runtime: the supervised worker pool.

Only re-exports live here. They load lazily (PEP 562) so that a worker process, which imports
``pool._worker``, never pays for the supervisor, uvloop or psutil.
"""

from __future__ import annotations

from sdk._lazy import lazy_exports

TYPE_CHECKING = False  # not typing's: a worker imports this package (see sdk._lazy)
if TYPE_CHECKING:
    from pool._events import PoolEvent, PoolStats
    from pool._pool import Pool, PoolSession

__all__ = ["Pool", "PoolEvent", "PoolSession", "PoolStats"]

_WHERE = {
    "Pool": "pool._pool",
    "PoolSession": "pool._pool",
    "PoolEvent": "pool._events",
    "PoolStats": "pool._events",
}


__getattr__, __dir__ = lazy_exports("pool", _WHERE, globals(), __all__)
