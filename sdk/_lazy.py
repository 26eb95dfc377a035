"""Lazy re-exports (PEP 562), shared by the ``sdk`` and ``pool`` packages.

A package lists which of its private modules defines each public name; the name is imported on
first use and then kept in the package's namespace. So a worker process, which needs only a
few modules, never pays for the rest.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not typing's: a worker imports this module, and typing costs ~7 ms
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
