"""Framing: what one end encodes the other decodes, whole, however the bytes arrive."""

from __future__ import annotations

import os
import pickle
import struct

import pytest

from pool import _protocol as p


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


@pytest.mark.skipif(not p.shm_available(), reason="needs /dev/shm")
def test_shared_memory_frame_names_a_segment_that_the_reader_unlinks():
    name = f"{p.SHM_PREFIX}{os.getpid()}-0-test"
    data = os.urandom(p.SHM_MIN + 10)
    parts = p.encode(p.Kind.RESULT, 3, pickle.dumps(data), shm_name=name)
    assert len(wire(parts)) < 200  # only the name travels
    assert os.path.exists(os.path.join(p.SHM_DIR, name))
    frame = p.FrameReader().feed(wire(parts))[0]
    assert not os.path.exists(os.path.join(p.SHM_DIR, name))
    assert frame.load() == data


@pytest.mark.skipif(not p.shm_available(), reason="needs /dev/shm")
def test_small_frames_never_use_shared_memory_and_sweep_removes_by_prefix():
    name = f"{p.SHM_PREFIX}{os.getpid()}-9-small"
    parts = p.encode(p.Kind.RESULT, 3, pickle.dumps(1), shm_name=name)
    assert not os.path.exists(os.path.join(p.SHM_DIR, name))
    assert p.FrameReader().feed(wire(parts))[0].load() == 1
    leftover = f"{p.SHM_PREFIX}{os.getpid()}-9-x"
    open(os.path.join(p.SHM_DIR, leftover), "wb").close()
    assert p.sweep_segments(f"{p.SHM_PREFIX}{os.getpid()}-9-") == [leftover]


def test_unknown_kind_and_bad_segment_names_are_protocol_errors():
    bad = p.HEADER.pack(0, 0, 99, 0, 1)
    with pytest.raises(p.ProtocolError, match="unknown frame kind"):
        p.FrameReader().feed(bad)
    name = b"../etc/passwd"
    frame = p.HEADER.pack(len(name), 0, p.Kind.RESULT | p.SHM_FLAG, 0, 1) + name
    with pytest.raises(p.ProtocolError, match="segment name"):
        p.FrameReader().feed(frame)
    oversize = struct.pack("<IIBB2xQ", p.MAX_FRAME, 0, p.Kind.RESULT, 0, 1)
    with pytest.raises(p.ProtocolError):
        p.FrameReader().feed(oversize)


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
