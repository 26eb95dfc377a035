"""A worker's ``logging``: its records go to the supervisor as LOG frames, and come out of the
caller's ``logging`` as records (``pool._output.WorkerOutput.log``).

A worker imports this module only once something has imported ``logging`` (the import hook in
``pool._log_hook``), so a worker whose activities never log pays for neither
(tests/integration/test_worker_light.py). :func:`install` then runs before the module that
imported logging goes on: a ``logging.basicConfig()`` at the top of an activity module finds
the forwarding handler on the root logger and leaves it in place, and the caller's
configuration decides what shows.

A record is formatted here, defensively: a message whose ``msg % args`` raises, or an argument
whose ``repr`` raises, still gives a LOG frame with a message saying so. The frame is plain
fields, never a pickle, written whole under the worker's write lock: a record cannot corrupt
the channel.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from pool._logrecord import encode_log
from sdk._context import current_activity

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# A text of a record (a repr, a message that failed to format) is cut to this many characters.
REPR_MAX = 1000


def install(send: Callable[[bytes], None], levels: dict[str, int], pid: int) -> None:
    """In the worker ``pid``: forward its records through ``send`` (a LOG frame, as bytes).
    ``levels``: logger name ("" for the root) -> level, the caller's, applied here too so that
    a record the caller would drop is not sent. In any other process (one an activity forked,
    which inherited the import hook) nothing: the channel is not its own."""
    if os.getpid() != pid:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        # here only when this worker was forked from a process with logging configured: those
        # handlers are that process's, which gets the records through the LOG frames
        root.removeHandler(handler)
    root.addHandler(ForwardingHandler(send, pid))
    for name, level in levels.items():
        (logging.getLogger(name) if name else root).setLevel(level)


class ForwardingHandler(logging.Handler):
    """Sends each record to the supervisor as a LOG frame."""

    def __init__(self, send: Callable[[bytes], None], pid: int) -> None:
        super().__init__()
        self._send = send
        self._pid = pid  # the worker's

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if os.getpid() != self._pid:
                # a process an activity forked: the channel is its parent's, and two writers
                # would interleave frames; its stderr still reaches the caller
                sys.stderr.write(f"{record.levelname}:{record.name}:{message(record)}\n")
                return
            self._send(log_frame(record))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


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
