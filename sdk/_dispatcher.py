"""``Dispatcher``, a ``typing.Protocol``, in a module of its own so that ``typing`` loads only
when it is used: ``sdk._context``, which every worker imports, re-exports it lazily. It is still
``sdk._context.Dispatcher`` (its ``__module__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._definition import ActivityDefinition
    from ._session import StickyWorkerSession


class Dispatcher(Protocol):
    """Something that runs an activity call elsewhere (a pool, the local runner)."""

    async def dispatch(
        self,
        defn: ActivityDefinition,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        session: StickyWorkerSession | None,
    ) -> Any: ...


Dispatcher.__module__ = "sdk._context"
