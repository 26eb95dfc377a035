"""Framing: what one end encodes the other decodes, whole, however the bytes arrive."""

from __future__ import annotations

import os
import pickle
import struct

import pytest

from pool import _protocol as p
from pool import _segments as seg


def wire(parts) -> bytes:
    return b"".join(bytes(x) for x in parts)


def test_small_frames_round_trip_in_any_chunking():
    frames = [
        p.encode_small(p.Kind.RUN, 7, pickle.dumps(("m", "q")), pickle.dumps(((1,), {}))),
        wire(p.encode(p.Kind.RESULT, 8, pickle.dumps({"a": 1}))),
        wire(p.encode(p.Kind.SHUTDOWN)),
    ]
    blob = b"".join(frames)
    for chunk in (1, 3, 17, len(blob)):
        reader = p.FrameReader()
        got = []
        for i in range(0, len(blob), chunk):
            got.extend(reader.feed(blob[i : i + chunk]))
        assert [f.kind for f in got] == [p.Kind.RUN, p.Kind.RESULT, p.Kind.SHUTDOWN]
        assert got[0].seq == 7 and got[0].load() == ("m", "q") and got[0].load2() == ((1,), {})
        assert got[1].load() == {"a": 1}
        assert reader.pending == 0


def test_out_of_band_buffers_are_not_copied_into_the_pickle():
    big = bytearray(os.urandom(p.OOB_MIN * 2))
    body, buffers = p.dumps(pickle.PickleBuffer(big))
    assert len(buffers) == 1 and len(body) < 200
    frame = p.FrameReader().feed(wire(p.encode(p.Kind.RESULT, 1, body, buffers=buffers)))[0]
    assert bytes(frame.load()) == bytes(big)


def test_big_frame_is_filled_in_place_from_a_pipe():
    payload = os.urandom(p.BIG_FRAME * 3)
    body = pickle.dumps(payload)
    blob = wire(p.encode(p.Kind.RESULT, 5, body))
    r, w = os.pipe()
    reader = p.FrameReader()
    frames = []
    try:
        for i in range(0, len(blob), 50_000):
            os.write(w, blob[i : i + 50_000])
            while True:
                got = reader.read(r)
                assert got is not None
                frames.extend(got)
                if reader.pending == 0 or (not got and _drained(r)):
                    break
    finally:
        os.close(w)
        assert reader.read(r) is None  # EOF
        os.close(r)
    assert len(frames) == 1 and frames[0].load() == payload


def _drained(fd: int) -> bool:
    import select

    return not select.select([fd], [], [], 0)[0]


needs_shm = pytest.mark.skipif(not seg.shm_supported(), reason="needs memfd and /proc")


def _memfds() -> int:
    """memfd segments this process holds open (fds) or mapped."""
    fds = sum("memfd:activitypool" in os.readlink(f"/proc/self/fd/{n}") for n in _fds())
    with open("/proc/self/maps") as maps:
        mapped = sum("memfd:activitypool" in line for line in maps)
    return fds + mapped


def _fds() -> list[str]:
    out = []
    for n in os.listdir("/proc/self/fd"):
        try:
            os.readlink(f"/proc/self/fd/{n}")
        except OSError:
            continue
        out.append(n)
    return out


@needs_shm
def test_shared_memory_frame_names_a_segment_that_is_copied_out_and_reused():
    segments = seg.Segments()
    peer = seg.PeerSegments(os.getpid())
    reader = p.FrameReader(peer)
    try:
        data = os.urandom(p.SHM_MIN + 10)
        parts = p.encode(p.Kind.RESULT, 3, pickle.dumps(data), segments=segments)
        assert len(wire(parts)) < 100  # only the reference travels
        (frame,) = reader.feed(wire(parts))
        assert frame.kind is p.Kind.RESULT and frame.seq == 3 and frame.load() == data
        assert segments.lent == 1 and reader.peer is not None
        (seg_id,) = reader.peer.released
        reader.peer.released.clear()
        segments.release(seg_id)
        assert segments.lent == 0
        # the next frame reuses the same segment; the copy out is independent of it
        other = os.urandom(p.SHM_MIN + 20)
        parts = p.encode(p.Kind.RESULT, 4, pickle.dumps(other), segments=segments)
        (again,) = reader.feed(wire(parts))
        assert reader.peer.released == [seg_id] and again.load() == other
        assert frame.load() == data  # the first frame's copy was not overwritten
        with pytest.raises(p.ProtocolError, match="not lent"):
            segments.release(999)
    finally:
        segments.close()
        peer.close()


@needs_shm
def test_out_of_band_arrays_arrive_writable_and_private():
    np = pytest.importorskip("numpy")
    segments = seg.Segments()
    peer = seg.PeerSegments(os.getpid())
    try:
        arr = np.arange(p.SHM_MIN, dtype=np.float64)
        body, buffers = p.dumps(arr)
        (frame,) = p.FrameReader(peer).feed(
            wire(p.encode(p.Kind.RESULT, 1, body, buffers=buffers, segments=segments))
        )
        got = frame.load()
        got[0] = -1.0  # writable, and its own memory: the sender's segment is untouched
        segments.release(peer.released.pop())
        assert np.array_equal(got[1:], arr[1:]) and got[0] == -1.0 and arr[0] == 0.0
    finally:
        segments.close()
        peer.close()


@needs_shm
def test_segments_are_kept_within_budget_and_one_offs_are_closed_on_release():
    before = _memfds()
    segments = seg.Segments()
    peer = seg.PeerSegments(os.getpid())
    reader = p.FrameReader(peer)
    try:
        small = pickle.dumps(os.urandom(p.SHM_MIN))
        # more frames in flight than kept segments: the extra ones are one-offs
        frames = [
            reader.feed(wire(p.encode(p.Kind.RESULT, i, small, segments=segments)))[0]
            for i in range(seg.KEEP_SEGMENTS + 2)
        ]
        assert segments.lent == seg.KEEP_SEGMENTS + 2 and segments.held == seg.KEEP_SEGMENTS + 2
        for seg_id in peer.released:
            segments.release(seg_id)
        peer.released.clear()
        assert segments.lent == 0 and segments.held == seg.KEEP_SEGMENTS
        # a frame beyond the byte budget gets a segment of its own, closed on release
        big = pickle.dumps(bytes(seg.KEEP_BYTES + 1))
        (frame,) = reader.feed(wire(p.encode(p.Kind.RESULT, 99, big, segments=segments)))
        assert len(frame.load()) == seg.KEEP_BYTES + 1
        assert segments.held == seg.KEEP_SEGMENTS + 1
        segments.release(peer.released.pop())
        assert segments.held == seg.KEEP_SEGMENTS
        assert all(f.load() for f in frames)
        # one-off segments stay mapped (privately) under what was built on them, until it goes
        assert _memfds() > before
        del frames, frame
    finally:
        segments.close()
        peer.close()
    assert _memfds() == before  # nothing open, nothing mapped


# A process that puts a frame in a segment of its own, writes the frame and exits.
_WRITE_AND_EXIT = """
import os, pickle, sys
from pool import _protocol as p
from pool import _segments as seg
parts = p.encode(p.Kind.RESULT, 3, pickle.dumps(os.urandom(p.SHM_MIN)), segments=seg.Segments())
sys.stdout.buffer.write(b"".join(bytes(x) for x in parts))
"""


@needs_shm
def test_a_segment_whose_owner_is_gone_is_reported_as_such():
    import subprocess
    import sys

    with subprocess.Popen([sys.executable, "-c", _WRITE_AND_EXIT], stdout=subprocess.PIPE) as proc:
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0  # and reaped: its pid names no process now
    parts = [out]
    peer = seg.PeerSegments(proc.pid)
    with pytest.raises(p.SegmentGone):
        peer.frame(p.Kind.RESULT, 3, out[p.HEADER.size :], 0, 0)
    # a reader drops that frame (the writer's death decides it) and keeps the ones around it
    blob = wire(p.encode(p.Kind.RESULT, 1, pickle.dumps(1))) + wire(parts)
    blob += wire(p.encode(p.Kind.RESULT, 2, pickle.dumps(2)))
    assert [f.load() for f in p.FrameReader(peer).feed(blob)] == [1, 2]


@needs_shm
def test_a_reference_to_what_a_live_peer_has_not_or_to_no_segment_is_a_protocol_error():
    peer = seg.PeerSegments(os.getpid())
    r, w = os.pipe()
    try:
        os.close(w)  # a pipe without a writer: opening it through /proc must not wait for one
        closed = os.dup(r)
        os.close(closed)
        for fd, why in ((closed, "has no segment"), (r, "not a shared-memory segment")):
            ref = p.SEGREF.pack(1, fd, p.SHM_MIN, 1)
            with pytest.raises(p.ProtocolError, match=why):
                peer.frame(p.Kind.RESULT, 3, ref, 0, 0)
        for size, keep in ((0, 1), (p.MAX_FRAME, 1), (p.SHM_MIN, 2)):
            with pytest.raises(p.ProtocolError, match="bad shared-memory reference"):
                peer.frame(p.Kind.RESULT, 3, p.SEGREF.pack(1, r, size, keep), 0, 0)
    finally:
        os.close(r)
        peer.close()


def test_small_frames_never_use_shared_memory():
    class NoSegments(seg.Segments):
        def put(self, chunks, size):
            raise AssertionError("a small frame went to shared memory")

    parts = p.encode(p.Kind.RESULT, 3, pickle.dumps(1), segments=NoSegments())
    assert p.FrameReader().feed(wire(parts))[0].load() == 1


def header(size: int, split: int, kind: int, nbuf: int, seq: int, mark: int = p.MARK) -> bytes:
    return p.HEADER.pack(size, split, kind, nbuf, mark, seq)


def test_unknown_kind_and_bad_segment_references_are_protocol_errors():
    bad = header(0, 0, 99, 0, 1)
    with pytest.raises(p.ProtocolError, match="unknown frame kind"):
        p.FrameReader().feed(bad)
    ref = b"../etc/passwd"
    frame = header(len(ref), 0, p.Kind.RESULT | p.SHM_FLAG, 0, 1) + ref
    with pytest.raises(p.ProtocolError, match="shared-memory frame with a body of 13 bytes"):
        p.FrameReader(seg.PeerSegments(os.getpid())).feed(frame)
    ref = b"\0" * p.SEGREF.size
    frame = header(len(ref), 0, p.Kind.RESULT | p.SHM_FLAG, 0, 1) + ref
    with pytest.raises(p.ProtocolError, match="without segments"):
        p.FrameReader().feed(frame)
    with pytest.raises(p.ProtocolError, match="bad shared-memory reference"):
        p.FrameReader(seg.PeerSegments(os.getpid())).feed(frame)
    oversize = header(p.MAX_FRAME, 0, p.Kind.RESULT, 0, 1)
    with pytest.raises(p.ProtocolError, match="frame of"):
        p.FrameReader().feed(oversize)


def test_a_header_where_none_is_or_with_lengths_out_of_bounds_is_refused_at_once():
    good = p.encode_small(p.Kind.RESULT, 1, pickle.dumps(1))
    cases = {
        "no frame header": b"\xff" * 7 + good,  # a stream that lost its framing
        "no frame header ": header(0, 0, p.Kind.RESULT, 0, 1, mark=0),
        "split 9": header(8, 9, p.Kind.RUN, 0, 1),  # (the header alone: refused before the body)
        "2 buffers": header(15, 0, p.Kind.RESULT, 2, 1),
        "buffers of": header(16, 0, p.Kind.RESULT, 1, 1) + struct.pack("<Q", 9) + b"x" * 8,
        "2 buffers ": header(8, 0, p.Kind.RESULT, 2, 1) + b"\0" * 8,
    }
    for why, blob in cases.items():
        reader = p.FrameReader()
        with pytest.raises(p.ProtocolError, match=why.strip()) as caught:
            reader.feed(good + blob)
        assert [f.load() for f in caught.value.frames] == [1]  # what came before is whole


def test_a_large_header_gets_a_buffer_bounded_by_what_arrived():
    import tracemalloc

    reader = p.FrameReader()
    tracemalloc.start()
    try:
        reader.feed(header(p.MAX_FRAME - 1, 0, p.Kind.RESULT, 0, 1) + b"x" * 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * p.BIG_AHEAD
    assert reader.pending == 1000


def test_large_bytes_travel_out_of_band_and_come_back_as_bytes():
    data = os.urandom(p.OOB_MIN * 4)
    args, kwargs = p.lift_call_bytes((data, b"small"), {"k": data})
    body, buffers = p.dumps((args, kwargs))
    assert len(buffers) == 2 and len(body) < 500  # not copied into the pickle
    frame = p.FrameReader().feed(wire(p.encode(p.Kind.RUN, 1, body, buffers=buffers)))[0]
    (a, small), kw = frame.load()
    assert type(a) is bytes and a == data and small == b"small" and kw["k"] == data
    assert p.lift_bytes(b"tiny") == b"tiny"
    assert pickle.loads(pickle.dumps(p.lift_bytes(data), protocol=4)) == data
