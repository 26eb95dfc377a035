"""A worker's ``logging``: its records go to the supervisor as LOG frames, and come out of the
caller's ``logging`` as records (``Supervisor._on_log``).

This module does not import ``logging``: a worker whose activities never log never pays for it
(tests/integration/test_worker_light.py). :func:`watch` installs the forwarding handler the
moment something imports ``logging`` (an import hook on ``sys.meta_path``), so that it is on the
root logger before the module that imported logging goes on: a ``logging.basicConfig()`` at
the top of an activity module then leaves it in place, as the caller's configuration decides
what shows.

A record is formatted here, defensively: a message whose ``msg % args`` raises, or an argument
whose ``repr`` raises, still gives a LOG frame with a message saying so. The frame is plain
fields, never a pickle, written whole under the worker's write lock: a record cannot corrupt
the channel.
"""

from __future__ import annotations

import os
import sys
import time

from pool._protocol import encode_log
from sdk._context import current_activity

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# A text of a record (a repr, a message that failed to format) is cut to this many characters.
REPR_MAX = 1000


def watch(send: Callable[[bytes], None], levels: dict[str, int]) -> None:
    """Forward this process's ``logging`` records through ``send`` (a LOG frame, as bytes),
    now if ``logging`` is imported already, else as soon as it is. ``levels``: logger name
    ("" for the root) -> level, the caller's, applied here too so that a record the caller
    would drop is not sent."""
    if "logging" in sys.modules:  # forked from a process that had it (start_method="fork")
        install(send, levels)
    else:
        sys.meta_path.insert(0, _LoggingImportHook(send, levels))


def install(send: Callable[[bytes], None], levels: dict[str, int]) -> None:
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        # here only when this worker was forked from a process with logging configured: those
        # handlers are that process's, which gets the records through the LOG frames
        root.removeHandler(handler)
    root.addHandler(_handler_class(logging)(send))
    for name, level in levels.items():
        (logging.getLogger(name) if name else root).setLevel(level)


class _LoggingImportHook:
    """On ``sys.meta_path`` until ``logging`` is imported: runs :func:`install` right after the
    ``logging`` package has executed, before the import statement returns."""

    def __init__(self, send: Callable[[bytes], None], levels: dict[str, int]) -> None:
        self.send = send
        self.levels = levels

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

    def loaded(self) -> None:
        install(self.send, self.levels)


class _InstallAfter:
    """The ``logging`` package's own loader, which then calls the hook back."""

    def __init__(self, loader: Any, hook: _LoggingImportHook) -> None:
        self._loader = loader
        self._hook = hook

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._hook.loaded()

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, resource readers...
        return getattr(self._loader, name)


_handler_cls: Any = None


def _handler_class(logging: Any) -> Any:
    """The handler class, made once ``logging`` is imported (it subclasses logging.Handler)."""
    global _handler_cls
    if _handler_cls is None:

        class ForwardingHandler(logging.Handler):
            """Sends each record to the supervisor as a LOG frame."""

            def __init__(self, send: Callable[[bytes], None]) -> None:
                super().__init__()
                self._send = send
                self._pid = os.getpid()

            def emit(self, record: Any) -> None:
                try:
                    if os.getpid() != self._pid:
                        # a process an activity forked: the channel is its parent's, and two
                        # writers would interleave frames; its stderr still reaches the caller
                        sys.stderr.write(f"{record.levelname}:{record.name}:{message(record)}\n")
                        return
                    self._send(log_frame(record))
                except RecursionError:
                    raise
                except Exception:
                    self.handleError(record)

        _handler_cls = ForwardingHandler
    return _handler_cls


def log_frame(record: Any) -> bytes:
    """A LOG frame for ``record``; never raises for anything a record holds."""
    activity = activity_id = None
    attempt = 0
    ctx = current_activity()  # the attempt running on this thread (None on other threads)
    if ctx is not None:
        try:
            info = ctx.info
            activity, activity_id, attempt = info.name, info.activity_id, info.attempt
        except Exception:
            pass
    return encode_log(
        0,
        _int(getattr(record, "levelno", 0)),
        _int(getattr(record, "lineno", 0)),
        attempt,
        _int(getattr(record, "thread", 0) or 0),
        _float(getattr(record, "created", None)),
        (
            _text(getattr(record, "name", None)),
            _text(getattr(record, "levelname", None)),
            message(record),
            _text(getattr(record, "pathname", None)),
            _text(getattr(record, "funcName", None)),
            _text(getattr(record, "threadName", None)),
            _exc_text(record),
            _text(getattr(record, "stack_info", None)),
            activity,
            activity_id,
        ),
    )


def message(record: Any) -> str:
    """``record.getMessage()``, or a message saying why it could not be made."""
    try:
        msg = record.getMessage()
        return msg if type(msg) is str else _safe_repr(msg)
    except Exception as exc:
        msg, args = getattr(record, "msg", None), getattr(record, "args", None)
        return (
            f"<log message could not be formatted ({type(exc).__name__}): "
            f"msg={_safe_repr(msg)}, args={_safe_repr(args)}>"
        )


def _exc_text(record: Any) -> str | None:
    exc_info = getattr(record, "exc_info", None)
    if exc_info and isinstance(exc_info, tuple) and len(exc_info) == 3:
        try:
            import traceback  # lazily: only a record with an exception needs it

            return "".join(traceback.format_exception(*exc_info)).rstrip("\n")
        except Exception as exc:
            return f"<traceback could not be formatted ({type(exc).__name__})>"
    return _text(getattr(record, "exc_text", None))


def _text(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    try:
        return str(value)[:REPR_MAX]
    except Exception:
        return _safe_repr(value)


def _safe_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        return f"<{type(value).__name__} object: its repr() raised {type(exc).__name__}>"
    return text if len(text) <= REPR_MAX else text[:REPR_MAX] + "..."


def _int(value: Any) -> int:
    try:
        return int(value)
    except Exception:
        return 0


def _float(value: Any) -> float:
    try:
        return float(value)
    except Exception:
        return time.time()
