"""Shared-memory segments: where a channel's large frames travel (see ``pool._protocol``).

A sender copies a frame of at least ``SHM_MIN`` bytes into a ``memfd`` of its own
(:class:`Segments`) and sends a frame that names it; the receiver (:class:`PeerSegments`) opens
it through ``/proc/<sender pid>/fd/<fd>``, copies the frame out and sends ``RELEASE``. Both ends
import this module (the worker too): it stays light.
"""

from __future__ import annotations

import mmap
import os
import stat

from pool._fds import StdioReserved
from pool._protocol import (
    MAX_FRAME,
    SEGREF,
    Frame,
    Kind,
    ProtocolError,
    SegmentGone,
    split_frame,
    write_all,
)

# Segments a sender keeps for reuse (free or lent), per direction of one channel: at most this
# many, of at most this much in all. A frame that does not fit gets a segment of its own, closed
# once the receiver has released it.
KEEP_SEGMENTS = 2
KEEP_BYTES = 64 << 20
# Segment capacities are rounded up to this, so that a size that varies a little reuses one.
SEGMENT_ROUND = 1 << 20


class _Segment:
    """One memfd. A kept one stays mapped here (reuse is a ``memcpy`` into pages already
    faulted in); a one-off one is written with ``pwritev``, cheaper for pages used once."""

    __slots__ = ("capacity", "fd", "id", "keep", "map")

    def __init__(self, seg_id: int, capacity: int, keep: bool) -> None:
        self.id = seg_id
        self.keep = keep
        self.map: mmap.mmap | None = None
        with StdioReserved():  # the memfd, and the duplicate of it the mmap keeps
            self.fd = os.memfd_create(f"activitypool-{seg_id}", os.MFD_CLOEXEC)
            try:
                os.ftruncate(self.fd, capacity)
                if keep:
                    self.map = mmap.mmap(self.fd, capacity, flags=mmap.MAP_SHARED)
            except BaseException:
                os.close(self.fd)
                raise
        self.capacity = capacity

    def write(self, chunks: list[bytes | memoryview]) -> None:
        mem = self.map
        if mem is None:
            write_all(self.fd, chunks, offset=0)
            return
        pos = 0
        for chunk in chunks:
            n = chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)
            mem[pos : pos + n] = chunk
            pos += n

    def grow(self, capacity: int) -> None:
        assert self.map is not None
        self.map.resize(capacity)  # the file too
        self.capacity = capacity

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
        os.close(self.fd)


class Segments:
    """The shared memory one end copies its large frames into. Owned by one thread.

    A segment is *lent* from the frame that names it until the peer sends ``RELEASE`` (it has
    copied the frame out), then free for the next frame. Segments stay mapped here, and the peer
    keeps its own mapping of a kept segment, so after the first use a frame costs a ``memcpy``
    on each side: no file to create, no page to fault in or zero. Up to ``KEEP_SEGMENTS``
    segments of ``KEEP_BYTES`` in all are kept; a larger frame gets a segment of its own that
    is closed on release. ``close()`` frees everything; the kernel frees whatever a dead process
    still held.
    """

    __slots__ = ("_free", "_kept", "_lent", "_next_id")

    def __init__(self) -> None:
        self._free: list[_Segment] = []
        self._lent: dict[int, _Segment] = {}
        self._next_id = 1
        self._kept: list[_Segment] = []  # free or lent

    def put(self, chunks: list[bytes | memoryview], size: int) -> bytes:
        """Copy ``chunks`` (``size`` bytes in all) into a segment; the frame body naming it."""
        seg = self._acquire(size)
        seg.write(chunks)
        self._lent[seg.id] = seg
        return SEGREF.pack(seg.id, seg.fd, size, seg.keep)

    def _acquire(self, size: int) -> _Segment:
        free = self._free
        fits = [s for s in free if s.capacity >= size]
        if fits:
            seg = min(fits, key=_capacity)
            free.remove(seg)
            return seg
        capacity = -(-size // SEGMENT_ROUND) * SEGMENT_ROUND
        kept = sum(s.capacity for s in self._kept)
        if free:  # grow the largest free one in place, if the budget allows
            seg = max(free, key=_capacity)
            if kept - seg.capacity + capacity <= KEEP_BYTES:
                free.remove(seg)
                seg.grow(capacity)
                return seg
        keep = len(self._kept) < KEEP_SEGMENTS and kept + capacity <= KEEP_BYTES
        seg = _Segment(self._next_id, capacity if keep else size, keep)
        self._next_id += 1
        if keep:
            self._kept.append(seg)
        return seg

    def release(self, seg_id: int) -> None:
        seg = self._lent.pop(seg_id, None)
        if seg is None:
            raise ProtocolError(f"release of segment {seg_id}, which is not lent")
        if seg.keep:
            self._free.append(seg)
        else:
            seg.close()

    @property
    def lent(self) -> int:
        return len(self._lent)

    @property
    def held(self) -> int:
        """Segments open on this side (kept ones, and one-off segments not yet released)."""
        return len(self._kept) + sum(1 for s in self._lent.values() if not s.keep)

    def close(self) -> None:
        for seg in {id(s): s for s in (*self._kept, *self._lent.values())}.values():
            seg.close()
        self._free.clear()
        self._lent.clear()
        self._kept.clear()


def _capacity(seg: _Segment) -> int:
    return seg.capacity


class PeerSegments:
    """The receiving side: maps the peer's segments, copies frames out, notes what to release.

    ``released`` collects the ids to send back in ``RELEASE`` frames; the owner drains it.
    """

    __slots__ = ("_maps", "pid", "released")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._maps: dict[int, mmap.mmap] = {}  # kept segments of the peer, mapped here
        self.released: list[int] = []

    def frame(self, kind: Kind, seq: int, ref: bytes, split: int, nbuf: int) -> Frame:
        """The frame a segment holds; the segment is noted in ``released`` (nothing here
        points into a kept segment afterwards; a one-off one may stay mapped, privately, under
        the arrays built on it, since its writer never reuses it)."""
        if len(ref) != SEGREF.size:
            raise ProtocolError(f"bad shared-memory reference of {len(ref)} bytes")
        seg_id, fd, size, keep = SEGREF.unpack(ref)
        if not 0 < size < MAX_FRAME or keep > 1:
            raise ProtocolError(f"bad shared-memory reference: {size} bytes, keep={keep}")
        if keep:
            mem = self._maps.get(seg_id)
            if mem is None or len(mem) < size:
                old = self._maps.pop(seg_id, None)
                if old is not None:
                    old.close()
                mem = self._maps[seg_id] = self._map(fd, size, private=False)
            with memoryview(mem) as view, view[:size] as body:
                frame = split_frame(kind, seq, body, split, nbuf, copy=True)
        else:
            mem = self._map(fd, size, private=True)
            frame = split_frame(kind, seq, memoryview(mem)[:size], split, nbuf, copy=False)
            frame.mapped = True
        self.released.append(seg_id)
        return frame

    def _map(self, fd: int, size: int, private: bool) -> mmap.mmap:
        path = f"/proc/{self.pid}/fd/{fd}"
        with StdioReserved():  # the fd opened here, and the duplicate the mmap keeps
            try:
                # non-blocking: a reference to one of the peer's pipes must not block the open
                # (opening a pipe through /proc waits for a writer, as a FIFO's open does)
                sfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            except FileNotFoundError:
                if self._peer_has_fds():
                    raise ProtocolError(f"the peer has no segment {path}") from None
                raise SegmentGone(f"segment {path} is gone (its process exited)") from None
            except OSError as exc:
                raise ProtocolError(f"cannot open shared-memory segment {path}: {exc}") from None
            try:
                st = os.fstat(sfd)
                if not stat.S_ISREG(st.st_mode):  # a memfd is a regular file; not a pipe, a tty
                    raise ProtocolError(f"{path} is not a shared-memory segment")
                length = st.st_size
                if length < size:
                    raise ProtocolError(f"segment {path} holds {length} bytes, not {size}")
                if private:  # copy-on-write: arrays built on it are writable, and ours alone
                    prot = mmap.PROT_READ | mmap.PROT_WRITE
                    return mmap.mmap(sfd, length, flags=mmap.MAP_PRIVATE, prot=prot)
                return mmap.mmap(sfd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            except (OSError, ValueError) as exc:
                raise ProtocolError(f"cannot map shared-memory segment {path}: {exc}") from None
            finally:
                os.close(sfd)

    def _peer_has_fds(self) -> bool:
        """Whether the peer still holds fds: then one its frame names and that is missing was
        never a segment. A process that has exited (a zombie, or reaped) holds none."""
        try:
            return bool(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return False

    def close(self) -> None:
        for mem in self._maps.values():
            mem.close()
        self._maps.clear()


def shm_supported() -> bool:
    """memfd segments need Linux: ``memfd_create`` and ``/proc/<pid>/fd``."""
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def can_open_peer_fd(pid: int, fd: int) -> bool:
    """Whether ``/proc/<pid>/fd/<fd>`` opens here (the handshake before using segments)."""
    try:
        os.close(os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY))
    except OSError:
        return False
    return True
