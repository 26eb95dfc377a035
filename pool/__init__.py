"""activitypool's runtime: the supervised worker pool.

Only re-exports live here. They load lazily (PEP 562) so that a worker process, which imports
``pool._worker``, never pays for the supervisor, uvloop or psutil.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
