"""The worker's import budget, in one place: why the sdk bends ordinary Python, and where.

Every worker process imports ``pool._worker`` and, through the user's activity modules, ``sdk``
(``_context``, ``_definition``, ``_decorator``, ``_depends``, ``_errors``, ``_attempt``,
``_record``, this module). On that path, and only there, the sdk avoids ``typing``,
``dataclasses``, ``inspect``, ``enum`` and ``re``: together they cost ~14 ms of a fresh
interpreter's start (``python -X importtime``, median of 9, against ~9 ms for the whole worker
path). Under the fork server that is paid once per pool (the server imports the worker path,
then forks); under ``spawn``, once per worker start and every replacement. Both are worth it;
code off that path (the local runner, ``RetryPolicy``, the pool runtime, ``pool.testing``) is
ordinary Python. tests/integration/test_worker_light.py pins the budget.

The three workarounds, so that a reader of the rest meets them only as a reference here:

1. ``TYPE_CHECKING = False`` instead of ``typing.TYPE_CHECKING``: annotations stay strings
   (``from __future__ import annotations``) and their imports sit under ``if TYPE_CHECKING``.
2. ``sdk._record.record``: what ``@dataclass(frozen=...)`` adds to a class that writes its own
   ``__init__``.
3. :func:`lazy_exports` (PEP 562): a package or module names where each of its lazily loaded
   names lives (``sdk``, ``pool``; ``TimeoutType`` an enum and ``Dispatcher`` a Protocol, each in
   a small module of its own); the name is imported on first use and then kept.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # see the module docstring
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def lazy_exports(
    package: str, where: dict[str, str], namespace: dict[str, Any], exported: list[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package that re-exports ``where``'s names."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exported})

    return __getattr__, __dir__
