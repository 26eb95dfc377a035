"""Wire protocol between the supervisor and one worker: framing and message kinds only.

Nothing here schedules, spawns or kills. Both ends import this module; it stays light.

A frame is a fixed header followed by a body::

    <I size> <I split> <B kind> <B nbuf> <H mark> <Q seq> | nbuf x <Q len> | pickle | pickle2 | bufs

``mark`` is the constant ``MARK``: a header read where none is (bytes that did not come from
``encode``, a stream that lost its framing) is refused at once rather than taken for a length.
``seq`` names the attempt a frame is about (0 when none), so a body that fails to unpickle
still fails exactly one call. ``split`` lets a frame carry two pickles: RUN sends the attempt's
metadata and the call's arguments, which the caller pickled once (retries reuse the bytes).

Bodies are pickle protocol 5. Objects that expose out-of-band buffers (numpy arrays,
``pickle.PickleBuffer``) are written after the pickle as raw buffers, without a copy into the
pickle stream; ``nbuf`` says how many follow, their lengths in the table before the pickles.

Large frames do not go through the pipe. When a body reaches ``SHM_MIN`` bytes the sender
copies it (table, pickles, buffers: the same layout) into a shared-memory segment of its own (a
``memfd``, see ``pool._segments``) and sends a frame whose kind has ``SHM_FLAG`` set and whose
body names the segment: its id, the sender's fd for it and the size used. The receiver opens
``/proc/<sender pid>/fd/<fd>``, maps it (once: the mapping is kept for the next frame), copies
the body out into memory of its own and sends ``RELEASE`` with the segment's id; the sender
then reuses the segment. Segments are never named in a file system: the kernel frees one when
the last process holding it exits, so a killed worker or supervisor cannot leak one.
"""

from __future__ import annotations

import os
import struct
from collections import namedtuple

# Not typing's TYPE_CHECKING, nor enum, dataclasses or typing.NamedTuple: every worker imports
# this module, and those cost ~14 ms (with the re, inspect, ast and dis they bring).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import pickle
    from typing import Any, ClassVar, NamedTuple, Protocol, SupportsIndex

    # What framing needs of shared memory (pool._segments has both; it depends on this
    # module, not the other way round).
    class SegmentWriter(Protocol):
        def put(self, chunks: list[bytes | memoryview], size: int) -> bytes:
            """Copy ``chunks`` into a segment; the frame body that names it."""

    class SegmentReader(Protocol):
        released: list[int]

        def frame(self, kind: Kind, seq: int, ref: bytes, split: int, nbuf: int) -> Frame:
            """The frame held in the segment ``ref`` names (``SegmentGone`` if its
            writer has exited)."""
else:
    try:
        # pickle.py only re-exports _pickle's dumps, loads and PickleBuffer (the Python
        # Pickler is its fallback), but importing it costs ~4 ms: it imports re, and re enum.
        import _pickle as pickle
    except ImportError:  # pragma: no cover - an interpreter without the C accelerator
        import pickle

HEADER = struct.Struct("<IIBBHQ")
# Every header carries it (see the module docstring); an arbitrary value, unlikely in text.
MARK = 0xA7F1
_BUFLEN = struct.Struct("<Q")
# Set in a buffer's length when the buffer is a ``bytes`` object's: the receiver may hand it to
# the unpickler as ``bytes`` (a shared-memory frame copies it out as one), never as a view.
BYTES_BUFFER = 1 << 63
PROTOCOL = 5
# Out-of-band buffers smaller than this are cheaper to keep inside the pickle stream.
OOB_MIN = 64 * 1024
# A frame larger than this is refused as malformed rather than allocated.
MAX_FRAME = 1 << 31
# Frames at least this large travel through shared memory: below it one write into the pipe
# (grown to 1 MiB) is cheaper than the RELEASE round; above it a copy into a segment that is
# already mapped on both sides beats the pipe's chunked copies and wake-ups.
SHM_MIN = 256 << 10
SHM_FLAG = 0x80
# body of a shared-memory frame: segment id, the sender's fd for it, bytes used, kept (0/1)
SEGREF = struct.Struct("<IIQB7x")


class Kind(int):
    """A frame's kind: an ``int`` with a ``name``, one instance per kind (``Kind(2) is
    Kind.RUN``), so that ``frame.kind is Kind.RUN`` holds as for an ``enum.IntEnum``, without
    importing enum into every worker (~1.5 ms of its start)."""

    name: str
    # supervisor -> worker
    INIT: ClassVar[Kind]  # body: dict of worker settings
    RUN: ClassVar[Kind]  # body: RunMeta pickle, then the argument pickle (split marks the boundary)
    CANCEL: ClassVar[Kind]  # seq: the attempt to cancel
    CLOSE_SESSION: ClassVar[Kind]  # body: session id
    SHUTDOWN: ClassVar[Kind]
    WITHDRAW: ClassVar[Kind]  # seq: a queued RUN to give back unstarted (answered WITHDRAWN)
    # worker -> supervisor
    READY: ClassVar[Kind]  # body: dict (pid, python, ...)
    HEARTBEAT: ClassVar[Kind]  # seq, body: the details
    RESULT: ClassVar[Kind]  # seq, body: the value
    FAILURE: ClassVar[Kind]  # seq, body: FailureInfo
    LOG: ClassVar[Kind]  # seq 0, body: encode_log (a log record in plain fields, no pickle)
    WITHDRAWN: ClassVar[Kind]  # seq: that RUN was dropped unstarted; it answers the RUN
    # either way
    RELEASE: ClassVar[Kind]  # seq: id of a segment of the peer's whose frame was copied out

    def __new__(cls, value: int) -> Kind:
        kind = _KINDS.get(value)
        if kind is None:
            raise ValueError(f"{value!r} is not a valid Kind")
        return kind

    @property
    def value(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"<Kind.{self.name}: {int(self)}>"

    __str__ = int.__repr__  # as IntEnum's: str(Kind.RUN) == "2"

    def __reduce__(self) -> Any:
        return (Kind, (int(self),))


# int value -> its Kind, for the decoder
_KINDS: dict[int, Kind] = {}
for _name, _value in (
    ("INIT", 1),
    ("RUN", 2),
    ("CANCEL", 3),
    ("CLOSE_SESSION", 4),
    ("SHUTDOWN", 5),
    ("WITHDRAW", 6),
    ("READY", 16),
    ("HEARTBEAT", 17),
    ("RESULT", 18),
    ("FAILURE", 19),
    ("LOG", 20),
    ("WITHDRAWN", 21),
    ("RELEASE", 32),
):
    assert _value not in _KINDS, f"two kinds are {_value}"
    _kind = int.__new__(Kind, _value)
    _kind.name = _name
    setattr(Kind, _name, _kind)
    _KINDS[_value] = _kind
del _name, _value, _kind


class ProtocolError(Exception):
    """A frame that cannot be understood: the channel is no longer trustworthy.

    ``frames``: the whole frames a ``FrameReader`` decoded before the malformed one (sound:
    they are handled before the peer is ended)."""

    frames: list[Frame] | tuple[()] = ()  # set by the raiser; never mutated


if TYPE_CHECKING:

    class RunMeta(NamedTuple):
        module: str
        qualname: str
        name: str
        activity_id: str
        attempt: int
        session_id: str | None
        deadline: float | None  # time.time() based, informational for activity.info()
        heartbeat_timeout: float | None
        heartbeat_details: Any
        # injected by Pool.inject_fault (pool._faults); left off the frame when there is none
        fault: tuple[str, Any] | None = None
        # the attempt span's W3C trace-context headers (pool._otel); only for a call made
        # under an OpenTelemetry span
        trace: dict[str, str] | None = None
        # 0: one call; else a chunk of a map (pool._chunks.ITEMS, SPREAD): the arguments are
        # its items, and the attempt runs the activity over each
        chunk: int = 0

else:
    # the class typing.NamedTuple would make (it calls namedtuple), without importing typing
    RunMeta = namedtuple(
        "RunMeta",
        "module qualname name activity_id attempt session_id deadline heartbeat_timeout "
        "heartbeat_details fault trace chunk",
        defaults=(None, None, 0),
    )
    RunMeta.__doc__ = """What a worker needs to run one attempt, besides the arguments.

    Sent as a plain tuple (``tuple(meta)``): a tuple of primitives pickles and loads several
    times faster than a class instance, and this is on every call's path.
    """


class FailureInfo:
    """A failed attempt as the worker saw it.

    ``exc`` is the pickled exception, kept as bytes so that an exception class the supervisor
    cannot import still yields a clear error carrying ``type_name``, ``message`` and the text.
    """

    __slots__ = ("exc", "message", "non_retryable", "traceback", "type_name")

    def __init__(
        self,
        exc: bytes | None,
        type_name: str,
        message: str,
        traceback: str,
        non_retryable: bool = False,
    ) -> None:
        self.exc = exc
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.non_retryable = non_retryable

    def __repr__(self) -> str:
        return (
            f"FailureInfo(exc={self.exc!r}, type_name={self.type_name!r}, "
            f"message={self.message!r}, traceback={self.traceback!r}, "
            f"non_retryable={self.non_retryable!r})"
        )


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
        return (_as_bytes, (pickle.PickleBuffer(self.data),))


def _as_bytes(buffer: Any) -> bytes:
    """Unpickles a lifted ``bytes``: no copy when the receiver already made it ``bytes``."""
    return buffer if type(buffer) is bytes else bytes(buffer)


def _buffer_entry(raw: memoryview) -> int:
    return raw.nbytes | BYTES_BUFFER if type(raw.obj) is bytes else raw.nbytes


def lift_bytes(value: Any) -> Any:
    """``value``, or a wrapper that sends it out of band if it is a large ``bytes``."""
    if type(value) is bytes and len(value) >= OOB_MIN:
        return _BytesOutOfBand(value)
    return value


def lift_call_bytes(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """:func:`lift_bytes` over a call's top-level arguments (cheap when there are none)."""
    for a in args:  # a plain loop: this runs for every call
        if type(a) is bytes and len(a) >= OOB_MIN:
            args = tuple(lift_bytes(a) for a in args)
            break
    if kwargs and any(type(v) is bytes and len(v) >= OOB_MIN for v in kwargs.values()):
        kwargs = {k: lift_bytes(v) for k, v in kwargs.items()}
    return args, kwargs


def encode(
    kind: Kind,
    seq: int = 0,
    body: bytes = b"",
    body2: bytes = b"",
    buffers: list[pickle.PickleBuffer] | None = None,
    segments: SegmentWriter | None = None,
) -> list[bytes | memoryview]:
    """A frame as a list of chunks for ``os.writev`` (buffers are not copied).

    With ``segments`` (and a body of at least ``SHM_MIN`` bytes) the body is copied into one
    of those shared-memory segments and the frame only names it.
    """
    raws = [b.raw() for b in buffers] if buffers else []
    if len(raws) > 255:
        raise ValueError("too many out-of-band buffers in one message")
    table = b"".join(_BUFLEN.pack(_buffer_entry(r)) for r in raws)
    size = len(table) + len(body) + len(body2) + sum(r.nbytes for r in raws)
    if size >= MAX_FRAME:
        raise ValueError(f"message of {size} bytes is too large for one frame")
    split = len(body) if body2 else 0
    chunks: list[bytes | memoryview] = [c for c in (table, body, body2) if c]
    chunks.extend(raws)
    if segments is not None and size >= SHM_MIN:
        ref = segments.put(chunks, size)
        return [HEADER.pack(len(ref), split, kind | SHM_FLAG, len(raws), MARK, seq), ref]
    return [HEADER.pack(size, split, kind, len(raws), MARK, seq), *chunks]


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


class SegmentGone(ProtocolError):
    """A frame names a segment whose owner has exited (it died after writing the frame).

    ``FrameReader`` drops such a frame: the writer's exit, seen next, decides its attempt."""


def encode_small(kind: Kind, seq: int, body: bytes = b"", body2: bytes = b"") -> bytes:
    """A frame without out-of-band buffers as one bytes object: one ``write`` sends it."""
    split = len(body) if body2 else 0
    return HEADER.pack(len(body) + len(body2), split, kind, 0, MARK, seq) + body + body2


class Frame:
    __slots__ = ("body", "body2", "buffers", "kind", "mapped", "seq")

    def __init__(
        self,
        kind: Kind,
        seq: int,
        body: bytes | bytearray | memoryview,  # first pickle (or the only one)
        body2: bytes | bytearray | memoryview | None,  # second pickle, when split
        buffers: list[Any],
        mapped: bool = False,  # its buffers map a one-off segment (unmapped when freed)
    ) -> None:
        self.kind = kind
        self.seq = seq
        self.body = body
        self.body2 = body2
        self.buffers = buffers
        self.mapped = mapped

    def __repr__(self) -> str:
        return (
            f"Frame(kind={self.kind!r}, seq={self.seq!r}, body={self.body!r}, "
            f"body2={self.body2!r}, buffers={self.buffers!r}, mapped={self.mapped!r})"
        )

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
# The most a frame's buffer may run ahead of the bytes that came for it: a header claims its
# length before any body byte arrives, and a garbled one must not get gigabytes. A larger frame's
# buffer starts at this and doubles as its bytes arrive (a realloc; the pages are filled once).
BIG_AHEAD = 8 << 20


class FrameReader:
    """Incremental decoder of one channel: ``read(fd)`` or ``feed(bytes)`` give whole frames.

    A malformed frame (an unknown kind, a bad marker, a length out of bounds) raises
    ``ProtocolError``, whose ``frames`` are the whole frames that came before it; the channel is
    then useless (the stream has lost its framing) and its peer is ended.
    """

    __slots__ = ("_big", "_big_at", "_big_head", "_buf", "peer")

    def __init__(self, peer: SegmentReader | None = None) -> None:
        self.peer = peer  # where frames in shared memory come from (None: refused)
        self._buf = bytearray()
        self._big: bytearray | None = None  # body of a large frame being filled in place
        self._big_at = 0
        self._big_head: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)  # size kind split nbuf seq

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
            return self._big_full([])
        data = os.read(fd, READ_CHUNK)
        if not data:
            return None
        return self.feed(data)

    def _big_full(self, frames: list[Frame]) -> list[Frame]:
        """The large frame's buffer is full: grow it if more of the frame is to come, else
        append the frame to ``frames``."""
        big = self._big
        assert big is not None
        size, kind, split, nbuf, seq = self._big_head
        if len(big) < size:
            big += bytes(min(size, 2 * len(big)) - len(big))  # (calloc'd: nothing to zero)
            return frames
        self._big = None
        try:
            frames.append(split_frame(_KINDS[kind], seq, memoryview(big), split, nbuf))
        except ProtocolError as exc:
            exc.frames = frames
            raise
        return frames

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        while self._big is not None:  # (read() fills a large frame itself, without this copy)
            big, at = self._big, self._big_at
            take = min(len(big) - at, len(data))
            big[at : at + take] = data[:take]
            data = data[take:]
            self._big_at = at + take
            if self._big_at < len(big):
                return frames
            self._big_full(frames)
            if not data:
                return frames
        buf: bytes | bytearray
        if self._buf:
            buf = self._buf
            buf += data
        else:
            buf = data  # the common case: parse the read itself, no copy into the buffer
        pos = 0
        n = len(buf)
        hsize = HEADER.size
        unpack = HEADER.unpack_from
        try:
            while n - pos >= hsize:
                size, split, kind, nbuf, mark, seq = unpack(buf, pos)
                if mark != MARK:
                    raise ProtocolError(f"no frame header at this point of the stream: {mark:#x}")
                if not nbuf and kind in _KINDS and pos + hsize + size <= n:
                    # small and plain (no buffers, not in shared memory): slices of the read
                    start = pos + hsize
                    pos = start + size
                    if split:
                        if split > size:
                            raise ProtocolError("split beyond the frame")
                        cut = start + split
                        frames.append(Frame(_KINDS[kind], seq, buf[start:cut], buf[cut:pos], []))
                    else:
                        frames.append(Frame(_KINDS[kind], seq, buf[start:pos], None, []))
                    continue
                k = _checked_kind(size, split, kind, nbuf)
                start = pos + hsize
                end = start + size
                if end > n:
                    if size >= BIG_FRAME:
                        # fill the rest of this frame in place instead of growing the buffer
                        have = n - start
                        big = bytearray(min(size, max(BIG_AHEAD, 2 * have)))
                        big[:have] = buf[start:n]
                        self._big, self._big_at = big, have
                        self._big_head = (size, kind, split, nbuf, seq)
                        pos = n
                    break
                with memoryview(buf) as view:
                    raw = memoryview(view[start:end].tobytes())
                pos = end
                if kind & SHM_FLAG:
                    if self.peer is None:
                        raise ProtocolError("a shared-memory frame on a channel without segments")
                    try:
                        frames.append(self.peer.frame(k, seq, raw.tobytes(), split, nbuf))
                    except SegmentGone:
                        pass  # its writer died after sending it: that death decides the attempt
                    continue
                frames.append(split_frame(k, seq, raw, split, nbuf))
        except ProtocolError as exc:
            exc.frames = frames
            raise
        if buf is self._buf:
            if pos:
                del buf[:pos]
        elif pos < n:
            self._buf = bytearray(buf[pos:])
        return frames

    @property
    def pending(self) -> int:
        """Bytes received and not yet part of a whole frame."""
        return len(self._buf) + (self._big_at if self._big is not None else 0)


def _checked_kind(size: int, split: int, kind: int, nbuf: int) -> Kind:
    """The kind of a frame whose header is sound; else ``ProtocolError``. Checked before a
    byte is allocated for its body."""
    k = _KINDS.get(kind & ~SHM_FLAG)
    if k is None:
        raise ProtocolError(f"unknown frame kind {kind}")
    if size >= MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes")
    if kind & SHM_FLAG:
        if size != SEGREF.size:
            raise ProtocolError(f"shared-memory frame with a body of {size} bytes")
    elif split > size or 8 * nbuf > size:
        raise ProtocolError(f"frame of {size} bytes with split {split} and {nbuf} buffers")
    return k


def split_frame(
    kind: Kind, seq: int, raw: memoryview, split: int, nbuf: int, copy: bool = False
) -> Frame:
    """Cut a frame body into its pickles and buffers: views of ``raw``, or with ``copy``
    copies that own their memory (``bytes`` for ``BYTES_BUFFER`` ones, else ``bytearray``:
    arrays built on them are writable)."""
    buffers: list[Any] = []
    end = len(raw)
    if nbuf:
        table = 8 * nbuf
        if table > end:
            raise ProtocolError(f"{nbuf} buffers in a frame of {end} bytes")
        entries = [_BUFLEN.unpack_from(raw, 8 * i)[0] for i in range(nbuf)]
        lens = [e & ~BYTES_BUFFER for e in entries]
        end -= sum(lens)
        if end < table:
            raise ProtocolError(f"buffers of {sum(lens)} bytes in a frame of {len(raw)}")
        pos = end
        for n, entry in zip(lens, entries, strict=True):
            with raw[pos : pos + n] as piece:
                if entry & BYTES_BUFFER:  # unpickled as a copy anyway: make that copy now
                    buffers.append(bytes(piece))
                elif copy:
                    buffers.append(memoryview(bytearray(piece)))
                else:
                    buffers.append(raw[pos : pos + n])
            pos += n
        start = table
    else:
        start = 0
    if split and split > end - start:
        raise ProtocolError("split beyond the frame")
    cut = start + split if split else end
    with raw[start:cut] as one:
        body = memoryview(one.tobytes()) if copy else raw[start:cut]
    body2 = None
    if split:
        with raw[cut:end] as two:
            body2 = memoryview(two.tobytes()) if copy else raw[cut:end]
    return Frame(kind, seq, body, body2, buffers)
