"""A worker's ``logging`` records reach the supervisor from the moment ``logging`` is imported.

:func:`watch_logging` (called by ``pool._worker`` at setup) installs ``pool._worker_log``'s
forwarding handler now if ``logging`` is loaded, else puts an import hook on ``sys.meta_path``
that installs it right after the ``logging`` package has run. Neither this module nor the hook
imports ``logging``: a worker whose activities never log never loads it
(tests/integration/test_worker_light.py).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def watch_logging(send: Any, levels: dict[str, int]) -> None:
    """Forward ``logging`` records to the supervisor (``pool._worker_log``) from the moment
    ``logging`` is imported: now if it is (a worker forked from its caller), else on import."""
    if "logging" in sys.modules:
        from pool._worker_log import install

        install(send, levels, os.getpid())
    else:
        sys.meta_path.insert(0, _LoggingImportHook(send, levels))


class _LoggingImportHook:
    """On ``sys.meta_path`` until ``logging`` is imported; then has the ``logging`` package's
    loader call :func:`pool._worker_log.install` right after the package has run, before the
    import statement returns."""

    def __init__(self, send: Any, levels: dict[str, int]) -> None:
        self.send = send
        self.levels = levels
        # the worker's: a process an activity forks has this hook too, not the channel
        self.pid = os.getpid()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "logging":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _InstallAfter(spec.loader, self)
        return spec


class _InstallAfter:
    """The ``logging`` package's own loader, and then the forwarding handler's install."""

    def __init__(self, loader: Any, hook: _LoggingImportHook) -> None:
        self._loader = loader
        self._hook = hook

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        from pool._worker_log import install

        hook = self._hook
        install(hook.send, hook.levels, hook.pid)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, resource readers...
        return getattr(self._loader, name)
