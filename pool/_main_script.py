"""How a worker imports the modules its activities live in, the caller's main script among them.

``ModuleLoader`` (one per worker, owned by ``pool._worker.Worker``) imports a module by name;
``"__main__"`` is the caller's main script, run here once as ``__mp_main__`` (its
``if __name__ == "__main__"`` block stays off) and aliased, so pickles that name ``__main__``
resolve here too. While it runs, :func:`refuse_pool_while_importing_main` stops a script
without that guard from starting a pool in every worker. Light, as the worker is
(tests/integration/test_worker_light.py): ``importlib.util`` is imported only for the script.
"""

from __future__ import annotations

import importlib
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class ModuleLoader:
    """Imports activity modules; keeps the caller's main script once it has run (or why not)."""

    def __init__(self) -> None:
        self.main_path: str | None = None  # the caller's main script, from INIT
        self.module: Any = None  # that script, once loaded
        self.error: tuple[BaseException, Any] | None = None  # why it could not be

    def import_module(self, name: str) -> Any:
        if name != "__main__":
            return importlib.import_module(name)
        # Our own reference, not sys.modules["__mp_main__"]: importing multiprocessing (which
        # concurrent.futures, joblib and torch do) points that key at whatever __main__ is then.
        if self.module is None:
            if self.error is not None:
                # run the script once: its top-level code may have done things before failing
                exc, tb = self.error
                raise exc.with_traceback(tb)
            try:
                self.module = self._load()
            except BaseException as exc:
                self.error = (exc, exc.__traceback__)
                raise
        sys.modules["__main__"] = sys.modules["__mp_main__"] = self.module
        return self.module

    def _load(self) -> Any:
        main = sys.modules.get("__main__")
        if not self.main_path:
            raise ImportError(
                "an activity defined in __main__ can be loaded by workers only from a script "
                "file; define it in a module"
            )
        main_file = getattr(main, "__file__", None)
        if main is not None and main_file and os.path.abspath(main_file) == self.main_path:
            # forked from the caller (its fork server was): the script has run here already,
            # and its activities are registered; running it again would register them twice
            return main
        from importlib.util import module_from_spec, spec_from_file_location  # lazily: rare

        # Run the supervisor's main script as a module (its `if __name__ == "__main__"` block
        # stays off) and alias it, so pickles that name __main__ resolve here too.
        spec = spec_from_file_location("__mp_main__", self.main_path)
        assert spec is not None and spec.loader is not None
        mod = module_from_spec(spec)
        saved = {k: sys.modules.get(k) for k in ("__main__", "__mp_main__")}
        sys.modules["__main__"] = sys.modules["__mp_main__"] = mod
        global _importing_main
        _importing_main = self.main_path
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            for k, v in saved.items():
                if v is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = v
            raise
        finally:
            _importing_main = None
        return mod


# The path of the caller's main script while a worker runs it to find its activities.
_importing_main: str | None = None


def refuse_pool_while_importing_main() -> None:
    """Raise if a pool is being started by the main script a worker is importing: the script
    has no ``__main__`` guard, and each worker would start a pool of its own."""
    if _importing_main is not None:
        raise RuntimeError(
            f"the script {_importing_main} starts a Pool at import time. Workers import the "
            "script to find the activities it defines, which runs its top-level code again, "
            "so each worker would start a pool of its own. Start the pool under "
            '`if __name__ == "__main__":`, which is true only in the process you ran.'
        )
