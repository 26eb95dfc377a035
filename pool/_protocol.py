"""Wire protocol between the supervisor and one worker: framing and message kinds only.

Nothing here schedules, spawns or kills. Both ends import this module; it stays light.

A frame is a fixed header followed by a body::

    <I size> <I split> <B kind> <B nbuf> <2x> <Q seq> | nbuf x <Q len> | pickle | pickle2 | bufs

``seq`` names the attempt a frame is about (0 when none), so a body that fails to unpickle
still fails exactly one call. ``split`` lets a frame carry two pickles: RUN sends the attempt's
metadata and the call's arguments, which the caller pickled once (retries reuse the bytes).

Bodies are pickle protocol 5. Objects that expose out-of-band buffers (numpy arrays,
``pickle.PickleBuffer``) are written after the pickle as raw buffers, without a copy into the
pickle stream; ``nbuf`` (high bits of ``kind``) says how many follow, each prefixed by its length.
"""

from __future__ import annotations

import enum
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

HEADER = struct.Struct("<IIBB2xQ")
_BUFLEN = struct.Struct("<Q")
PROTOCOL = 5
# Out-of-band buffers smaller than this are cheaper to keep inside the pickle stream.
OOB_MIN = 64 * 1024
# A frame larger than this is refused as malformed rather than allocated.
MAX_FRAME = 1 << 31


class Kind(enum.IntEnum):
    # supervisor -> worker
    INIT = 1  # body: dict of worker settings
    RUN = 2  # body: RunMeta pickle, then the argument pickle (split marks the boundary)
    CANCEL = 3  # seq: the attempt to cancel
    CLOSE_SESSION = 4  # body: session id
    SHUTDOWN = 5
    # worker -> supervisor
    READY = 16  # body: dict (pid, python, ...)
    HEARTBEAT = 17  # seq, body: the details
    RESULT = 18  # seq, body: the value
    FAILURE = 19  # seq, body: FailureInfo


class ProtocolError(Exception):
    """A frame that cannot be understood: the channel is no longer trustworthy."""


@dataclass(slots=True)
class RunMeta:
    """What a worker needs to run one attempt, besides the arguments."""

    module: str
    qualname: str
    name: str
    activity_id: str
    attempt: int
    session_id: str | None
    deadline: float | None  # time.time() based, informational for activity.info()
    heartbeat_timeout: float | None
    heartbeat_details: Any
    fault: tuple[str, Any] | None = None  # injected by Pool.inject_fault, for users' tests


@dataclass(slots=True)
class FailureInfo:
    """A failed attempt as the worker saw it.

    ``exc`` is the pickled exception, kept as bytes so that an exception class the supervisor
    cannot import still yields a clear error carrying ``type_name``, ``message`` and the text.
    """

    exc: bytes | None
    type_name: str
    message: str
    traceback: str
    non_retryable: bool = False


def dumps(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``obj``; large buffers come back separately, to be sent without a copy."""
    buffers: list[pickle.PickleBuffer] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < OOB_MIN:
            return True  # serialise in-band
        buffers.append(buf)
        return False

    return pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=keep), buffers


def encode(
    kind: Kind,
    seq: int = 0,
    body: bytes = b"",
    body2: bytes = b"",
    buffers: list[pickle.PickleBuffer] | None = None,
) -> list[bytes | memoryview]:
    """A frame as a list of chunks for ``os.writev`` (buffers are not copied)."""
    raws = [b.raw() for b in buffers] if buffers else []
    if len(raws) > 255:
        raise ValueError("too many out-of-band buffers in one message")
    table = b"".join(_BUFLEN.pack(r.nbytes) for r in raws)
    size = len(table) + len(body) + len(body2) + sum(r.nbytes for r in raws)
    if size >= MAX_FRAME:
        raise ValueError(f"message of {size} bytes is too large for one frame")
    split = len(body) if body2 else 0
    parts: list[bytes | memoryview] = [HEADER.pack(size, split, kind, len(raws), seq)]
    if table:
        parts.append(table)
    if body:
        parts.append(body)
    if body2:
        parts.append(body2)
    parts.extend(raws)
    return parts


@dataclass(slots=True)
class Frame:
    kind: Kind
    seq: int
    body: memoryview  # first pickle (or the only one)
    body2: memoryview | None  # second pickle, when split
    buffers: list[memoryview]

    def load(self) -> Any:
        return pickle.loads(self.body, buffers=self.buffers)

    def load2(self) -> Any:
        assert self.body2 is not None
        return pickle.loads(self.body2, buffers=self.buffers)


class FrameReader:
    """Incremental decoder: feed bytes, iterate complete frames."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        hsize = HEADER.size
        frames: list[Frame] = []
        while n - pos >= hsize:
            size, split, kind, nbuf, seq = HEADER.unpack_from(buf, pos)
            if size >= MAX_FRAME:
                raise ProtocolError(f"frame of {size} bytes")
            end = pos + hsize + size
            if end > n:
                break
            try:
                k = Kind(kind)
            except ValueError:
                raise ProtocolError(f"unknown frame kind {kind}") from None
            # bytes() detaches the frame from the growing buffer; large frames are rare
            raw = memoryview(bytes(buf[pos + hsize : end]))
            frames.append(_split(k, seq, raw, split, nbuf))
            pos = end
        if pos:
            del buf[:pos]
        return iter(frames)

    @property
    def pending(self) -> int:
        return len(self._buf)


def _split(kind: Kind, seq: int, raw: memoryview, split: int, nbuf: int) -> Frame:
    buffers: list[memoryview] = []
    end = len(raw)
    if nbuf:
        table = 8 * nbuf
        lens = [_BUFLEN.unpack_from(raw, 8 * i)[0] for i in range(nbuf)]
        end -= sum(lens)
        if end < table:
            raise ProtocolError("buffer table larger than the frame")
        pos = end
        for n in lens:
            buffers.append(raw[pos : pos + n])
            pos += n
        raw = raw[table:end]
    else:
        raw = raw[:end]
    if split:
        if split > len(raw):
            raise ProtocolError("split beyond the frame")
        return Frame(kind, seq, raw[:split], raw[split:], buffers)
    return Frame(kind, seq, raw, None, buffers)
