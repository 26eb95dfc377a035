"""The body of a LOG frame: a worker's ``logging`` record in plain fields.

The worker encodes (``pool._worker_log``), the supervisor's channel decodes; both ends import
this module, so it stays light (no typing, no enum, no dataclasses: see ``pool._protocol``).
"""

from __future__ import annotations

import struct
from collections import namedtuple

from pool._protocol import Kind, ProtocolError, encode_small

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

# A LOG body: a worker's ``logging`` record, already formatted, in plain fields (no pickle: a
# record's args may be anything, and the supervisor should not unpickle them to print a line).
# levelno, lineno, attempt (0: outside an attempt), thread id, created (time.time()), then one
# <I length> + UTF-8 for each text of LOG_TEXTS (length NO_TEXT: None).
_LOG_HEAD = struct.Struct("<iiIQd")
_TEXT_LEN = struct.Struct("<I")
NO_TEXT = 0xFFFFFFFF
LOG_TEXTS = (
    "name",
    "levelname",
    "msg",
    "pathname",
    "funcName",
    "threadName",
    "exc_text",
    "stack_info",
    "activity",
    "activity_id",
)
# Each text is cut to this many characters: a log line is not a way to move data, and a LOG
# frame stays small enough for the pipe.
LOG_TEXT_MAX = 64 * 1024
if TYPE_CHECKING:

    class LogEntry(NamedTuple):
        levelno: int
        lineno: int
        attempt: int  # 0: the record came from outside an attempt
        thread: int
        created: float
        name: str | None
        levelname: str | None
        msg: str | None
        pathname: str | None
        funcName: str | None
        threadName: str | None
        exc_text: str | None
        stack_info: str | None
        activity: str | None
        activity_id: str | None

else:
    LogEntry = namedtuple(
        "LogEntry",
        "levelno lineno attempt thread created name levelname msg pathname funcName threadName "
        "exc_text stack_info activity activity_id",
    )
    LogEntry.__doc__ = "A decoded LOG body: a worker's log record, its message formatted."


def encode_log(
    seq: int,
    levelno: int,
    lineno: int,
    attempt: int,
    thread: int,
    created: float,
    texts: tuple[str | None, ...],
) -> bytes:
    """A whole LOG frame (one ``bytes``): ``texts`` in the order of ``LOG_TEXTS``."""
    if len(texts) != len(LOG_TEXTS):
        raise ValueError(f"a LOG frame has {len(LOG_TEXTS)} texts, got {len(texts)}")
    parts = [
        _LOG_HEAD.pack(
            max(-(2**31), min(levelno, 2**31 - 1)),
            max(-(2**31), min(lineno, 2**31 - 1)),
            max(0, min(attempt, 2**32 - 1)),
            thread & 0xFFFFFFFFFFFFFFFF,
            created,
        )
    ]
    for text in texts:
        if text is None:
            parts.append(_TEXT_LEN.pack(NO_TEXT))
            continue
        if len(text) > LOG_TEXT_MAX:
            text = text[:LOG_TEXT_MAX] + f" [cut at {LOG_TEXT_MAX} characters]"
        raw = text.encode("utf-8", "backslashreplace")
        parts.append(_TEXT_LEN.pack(len(raw)))
        parts.append(raw)
    return encode_small(Kind.LOG, seq, b"".join(parts))


def decode_log(body: bytes | bytearray | memoryview) -> LogEntry:
    """The :class:`LogEntry` in a LOG body; ``ProtocolError`` if it is not one."""
    body = bytes(body)
    n = len(body)
    if n < _LOG_HEAD.size:
        raise ProtocolError(f"LOG body of {n} bytes")
    head = _LOG_HEAD.unpack_from(body, 0)
    pos = _LOG_HEAD.size
    texts: list[str | None] = []
    for _ in LOG_TEXTS:
        if n - pos < _TEXT_LEN.size:
            raise ProtocolError("LOG body ends inside its texts")
        (size,) = _TEXT_LEN.unpack_from(body, pos)
        pos += _TEXT_LEN.size
        if size == NO_TEXT:
            texts.append(None)
            continue
        if size > n - pos:
            raise ProtocolError(f"LOG text of {size} bytes, {n - pos} left")
        texts.append(body[pos : pos + size].decode("utf-8", "replace"))
        pos += size
    if pos != n:
        raise ProtocolError(f"{n - pos} bytes after a LOG body")
    return LogEntry(*head, *texts)
