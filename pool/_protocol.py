"""Wire protocol between the supervisor and one worker: framing and message kinds only.

Nothing here schedules, spawns or kills. Both ends import this module; it stays light.

A frame is a fixed header followed by a body::

    <I size> <I split> <B kind> <B nbuf> <2x> <Q seq> | nbuf x <Q len> | pickle | pickle2 | bufs

``seq`` names the attempt a frame is about (0 when none), so a body that fails to unpickle
still fails exactly one call. ``split`` lets a frame carry two pickles: RUN sends the attempt's
metadata and the call's arguments, which the caller pickled once (retries reuse the bytes).

Bodies are pickle protocol 5. Objects that expose out-of-band buffers (numpy arrays,
``pickle.PickleBuffer``) are written after the pickle as raw buffers, without a copy into the
pickle stream; ``nbuf`` says how many follow, their lengths in the table before the pickles.

Large frames do not go through the pipe. When a body reaches ``SHM_MIN`` bytes the sender
writes it (table, pickles, buffers: the same layout) into a file in ``/dev/shm`` and sends a
frame whose kind has ``SHM_FLAG`` set and whose body is the file's name. The receiver maps the
file copy-on-write and unlinks it at once, so out-of-band buffers (numpy arrays) arrive without
a copy and the name is gone before anything can leak it. Names are
``activitypool-<supervisor pid>-<worker id>-<s|w><n>`` so that the supervisor can sweep what
a dead worker, or a frame that was never read, left behind (``sweep_segments``).
"""

from __future__ import annotations

import enum
import mmap
import os
import pickle
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple, SupportsIndex

HEADER = struct.Struct("<IIBB2xQ")
_BUFLEN = struct.Struct("<Q")
PROTOCOL = 5
# Out-of-band buffers smaller than this are cheaper to keep inside the pickle stream.
OOB_MIN = 64 * 1024
# A frame larger than this is refused as malformed rather than allocated.
MAX_FRAME = 1 << 31
# Frames at least this large travel through shared memory: below it the pipe (grown to 1 MiB)
# is cheaper than creating, mapping and unlinking a file; above it the pipe's chunked copies and
# wake-ups dominate, and out-of-band buffers (numpy) arrive without a copy.
SHM_MIN = 2 << 20
SHM_FLAG = 0x80
SHM_DIR = "/dev/shm"
SHM_PREFIX = "activitypool-"


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


class RunMeta(NamedTuple):
    """What a worker needs to run one attempt, besides the arguments.

    Sent as a plain tuple (``tuple(meta)``): a tuple of primitives pickles and loads several
    times faster than a class instance, and this is on every call's path.
    """

    module: str
    qualname: str
    name: str
    activity_id: str
    attempt: int
    session_id: str | None
    deadline: float | None  # time.time() based, informational for activity.info()
    heartbeat_timeout: float | None
    heartbeat_details: Any
    fault: tuple[str, Any] | None  # injected by Pool.inject_fault, for users' tests


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


class _BytesOutOfBand:
    """Pickles a large ``bytes`` through an out-of-band buffer; it unpickles as ``bytes``.

    Pickle always copies ``bytes`` into its stream (no hook reaches them), so a 10 MiB argument
    cost a copy into the pickle and another through the pipe. Wrapped, its buffer travels like
    a numpy array's: written once, straight from the object.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        if int(protocol) < 5:
            return (bytes, (self.data,))
        return (bytes, (pickle.PickleBuffer(self.data),))


def lift_bytes(value: Any) -> Any:
    """``value``, or a wrapper that sends it out of band if it is a large ``bytes``."""
    if type(value) is bytes and len(value) >= OOB_MIN:
        return _BytesOutOfBand(value)
    return value


def lift_call_bytes(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """:func:`lift_bytes` over a call's top-level arguments (cheap when there are none)."""
    if any(type(a) is bytes and len(a) >= OOB_MIN for a in args):
        args = tuple(lift_bytes(a) for a in args)
    if kwargs and any(type(v) is bytes and len(v) >= OOB_MIN for v in kwargs.values()):
        kwargs = {k: lift_bytes(v) for k, v in kwargs.items()}
    return args, kwargs


def encode(
    kind: Kind,
    seq: int = 0,
    body: bytes = b"",
    body2: bytes = b"",
    buffers: list[pickle.PickleBuffer] | None = None,
    shm_name: str | None = None,
) -> list[bytes | memoryview]:
    """A frame as a list of chunks for ``os.writev`` (buffers are not copied).

    With ``shm_name`` (and a body of at least ``SHM_MIN`` bytes) the body goes into that
    shared-memory file and the frame only names it.
    """
    raws = [b.raw() for b in buffers] if buffers else []
    if len(raws) > 255:
        raise ValueError("too many out-of-band buffers in one message")
    table = b"".join(_BUFLEN.pack(r.nbytes) for r in raws)
    size = len(table) + len(body) + len(body2) + sum(r.nbytes for r in raws)
    if size >= MAX_FRAME:
        raise ValueError(f"message of {size} bytes is too large for one frame")
    split = len(body) if body2 else 0
    chunks: list[bytes | memoryview] = [c for c in (table, body, body2) if c]
    chunks.extend(raws)
    if shm_name is not None and size >= SHM_MIN:
        _write_segment(shm_name, chunks, size)
        name = shm_name.encode()
        return [HEADER.pack(len(name), split, kind | SHM_FLAG, len(raws), seq), name]
    return [HEADER.pack(size, split, kind, len(raws), seq), *chunks]


def write_all(fd: int, parts: list[bytes | memoryview], offset: int | None = None) -> None:
    """Write every byte of ``parts`` to a blocking fd (at ``offset`` with pwritev, if given)."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        batch = views[:1024]  # IOV_MAX
        if offset is None:
            n = os.writev(fd, batch)
        else:
            n = os.pwritev(fd, batch, offset)
            offset += n
        while n:
            head = views[0]
            if n >= head.nbytes:
                n -= head.nbytes
                views.pop(0)
            else:
                views[0] = head[n:]
                n = 0


def _write_segment(name: str, chunks: list[bytes | memoryview], size: int) -> None:
    fd = os.open(os.path.join(SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
        write_all(fd, chunks, offset=0)
    except BaseException:
        _unlink(name)
        raise
    finally:
        os.close(fd)


def _open_segment(name: str) -> memoryview:
    """Map a segment copy-on-write (arrays built on it stay writable) and unlink it."""
    if "/" in name or not name.startswith(SHM_PREFIX):
        raise ProtocolError(f"bad shared-memory segment name {name!r}")
    path = os.path.join(SHM_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ProtocolError(f"shared-memory segment {name!r} is missing: {exc}") from None
    try:
        os.unlink(path)
        size = os.fstat(fd).st_size
        if size == 0:
            return memoryview(b"")
        mapped = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    return memoryview(mapped)


def _unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except OSError:
        pass


def shm_available() -> bool:
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


def sweep_segments(prefix: str) -> list[str]:
    """Unlink every segment whose name starts with ``prefix``; returns what was removed."""
    removed: list[str] = []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return removed
    for name in names:
        if name.startswith(prefix):
            _unlink(name)
            removed.append(name)
    return removed


def encode_small(kind: Kind, seq: int, body: bytes = b"", body2: bytes = b"") -> bytes:
    """A frame without out-of-band buffers as one bytes object: one ``write`` sends it."""
    split = len(body) if body2 else 0
    return HEADER.pack(len(body) + len(body2), split, kind, 0, seq) + body + body2


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


# Small reads stay below glibc's mmap threshold (128 KiB): a 1 MiB os.read() would mmap and
# munmap a fresh buffer on every call, which costs more than the round trip it serves.
READ_CHUNK = 64 * 1024
# A frame at least this large is read straight into its own buffer (one copy, no regrowth).
BIG_FRAME = 256 * 1024
_KINDS = {int(k): k for k in Kind}


class FrameReader:
    """Incremental decoder of one channel: ``read(fd)`` or ``feed(bytes)`` give whole frames."""

    __slots__ = ("_big", "_big_at", "_big_head", "_buf")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._big: bytearray | None = None  # body of a large frame being filled in place
        self._big_at = 0
        self._big_head: tuple[int, int, int, int] = (0, 0, 0, 0)

    def read(self, fd: int) -> list[Frame] | None:
        """One read from ``fd``: the frames it completed, or None on EOF.

        ``BlockingIOError`` passes through for a non-blocking fd with nothing to read.
        """
        big = self._big
        if big is not None:
            with memoryview(big) as view:
                n = os.readv(fd, [view[self._big_at :]])
            if n == 0:
                return None
            self._big_at += n
            if self._big_at < len(big):
                return []
            self._big = None
            kind, split, nbuf, seq = self._big_head
            return [_split(_KINDS[kind], seq, memoryview(big), split, nbuf)]
        data = os.read(fd, READ_CHUNK)
        if not data:
            return None
        return self.feed(data)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        hsize = HEADER.size
        frames: list[Frame] = []
        while n - pos >= hsize:
            size, split, kind, nbuf, seq = HEADER.unpack_from(buf, pos)
            k = _KINDS.get(kind & ~SHM_FLAG)
            if k is None:
                raise ProtocolError(f"unknown frame kind {kind}")
            if size >= MAX_FRAME:
                raise ProtocolError(f"frame of {size} bytes")
            start = pos + hsize
            end = start + size
            if end > n:
                if size >= BIG_FRAME:
                    # fill the rest of this frame in place instead of growing the buffer
                    big = bytearray(size)
                    have = n - start
                    big[:have] = buf[start:n]
                    self._big, self._big_at = big, have
                    self._big_head = (kind, split, nbuf, seq)
                    pos = n
                break
            with memoryview(buf) as view:
                raw = memoryview(view[start:end].tobytes())
            if kind & SHM_FLAG:
                raw = _open_segment(raw.tobytes().decode())
            frames.append(_split(k, seq, raw, split, nbuf))
            pos = end
        if pos:
            del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf) + (len(self._big) - self._big_at if self._big is not None else 0)


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
