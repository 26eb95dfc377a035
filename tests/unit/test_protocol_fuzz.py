"""Property-based fuzzing of both decoders: the frame reader (headers, chunking, shared-memory
references) and the body decoder (buffer table, split). Whatever bytes arrive, in whatever
pieces, decoding ends in whole frames, a clean wait for more bytes, or ``ProtocolError``:
never another exception, a hang, or an allocation out of proportion to the input."""

from __future__ import annotations

import itertools
import os
import pickle
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pool import _protocol as p
from pool import _segments as seg

# Fast (a few seconds for the module), reproducible, and no example database in the repository.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# What one decode may allocate beyond a small multiple of its input: a large frame's first
# buffer (BIG_AHEAD) and change.
ALLOWANCE = p.BIG_AHEAD + (1 << 20)

KINDS = [int(k) for k in p._KINDS]
U32 = st.one_of(
    st.sampled_from([0, 1, 7, 8, 24, p.BIG_FRAME, p.MAX_FRAME - 1, p.MAX_FRAME, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)
U64 = st.one_of(
    st.sampled_from([0, 1, 2**31, p.BYTES_BUFFER, p.BYTES_BUFFER | 5, 2**64 - 1]),
    st.integers(0, 2**64 - 1),
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One well-formed frame on the wire (with buffers, a split, or neither)."""
    kind = p.Kind(draw(st.sampled_from(KINDS)))
    seq = draw(st.integers(0, 2**64 - 1))
    body = draw(st.binary(max_size=64))
    body2 = draw(st.binary(max_size=64))
    bufs = draw(st.lists(st.binary(min_size=1, max_size=64), max_size=3))
    parts = p.encode(kind, seq, body, body2, [pickle.PickleBuffer(b) for b in bufs])
    return b"".join(bytes(x) for x in parts)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """Well-formed frames, then damaged: a header field set to anything, bytes flipped,
    inserted or cut, a buffer table entry set to any 64-bit length."""
    blob = bytearray(b"".join(draw(st.lists(frames(), min_size=1, max_size=4))))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["field", "flip", "insert", "cut", "table", "shm"]))
        at = draw(st.integers(0, max(0, len(blob) - 1)))
        if how == "field" and len(blob) >= p.HEADER.size:
            # the first header's size, split or mark; and perhaps its kind (| flag) and nbuf
            field = draw(st.sampled_from([(0, "<I", U32), (4, "<I", U32), (10, "<H", U32)]))
            offset, fmt, values = field
            value = draw(values) & (0xFFFF if fmt == "<H" else 0xFFFFFFFF)
            blob[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
            blob[8] = draw(st.integers(0, 255)) if draw(st.booleans()) else blob[8]
            blob[9] = draw(st.integers(0, 255)) if draw(st.booleans()) else blob[9]
        elif how == "flip" and blob:
            blob[at] ^= draw(st.integers(1, 255))
        elif how == "insert":
            blob[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif how == "cut":
            del blob[at:]
        elif how == "table" and len(blob) >= p.HEADER.size + 8:
            blob[p.HEADER.size : p.HEADER.size + 8] = struct.pack("<Q", draw(U64))
        elif how == "shm":  # a shared-memory frame naming any fd, size and segment
            ref = p.SEGREF.pack(draw(U32), draw(st.integers(0, 64)), draw(U64), draw(U32) & 0xFF)
            kind = draw(st.sampled_from(KINDS)) | p.SHM_FLAG
            blob[at:at] = p.HEADER.pack(len(ref), 0, kind, draw(U32) & 0xFF, p.MARK, 1) + ref
    return bytes(blob)


def decode(blob: bytes, cuts: list[int], peer: seg.PeerSegments | None) -> list[p.Frame]:
    """Feed ``blob`` in pieces (cut at ``cuts``); ProtocolError passes through. Checks the
    memory the decoding allocated."""
    reader = p.FrameReader(peer)
    got: list[p.Frame] = []
    bounds = sorted({0, len(blob), *(c % (len(blob) + 1) for c in cuts)})
    tracemalloc.start()
    try:
        for a, b in itertools.pairwise(bounds):
            got.extend(reader.feed(blob[a:b]))
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 4 * len(blob) + ALLOWANCE
    return got


@FUZZ
@given(st.binary(max_size=4096), st.lists(st.integers(0, 4096), max_size=8))
def test_arbitrary_bytes_end_in_frames_a_wait_or_a_protocol_error(blob, cuts):
    try:
        decode(blob, cuts, None)
    except p.ProtocolError:
        pass


@FUZZ
@given(mutated(), st.lists(st.integers(0, 4096), max_size=8))
def test_damaged_frames_end_in_frames_a_wait_or_a_protocol_error(blob, cuts):
    peer = seg.PeerSegments(os.getpid()) if seg.shm_supported() else None
    try:
        for frame in decode(blob, cuts, peer):
            # whatever was decoded is within the bytes that came
            lengths = [len(frame.body), len(frame.body2 or b""), *map(len, frame.buffers)]
            assert sum(lengths) <= len(blob)
    except p.ProtocolError:
        pass
    finally:
        if peer is not None:
            peer.close()


@FUZZ
@given(st.lists(frames(), min_size=1, max_size=5), st.lists(st.integers(0, 4096), max_size=8))
def test_whole_frames_round_trip_in_any_pieces_and_a_cut_stream_waits(wire, cuts):
    blob = b"".join(wire)
    got = decode(blob, cuts, None)
    assert len(got) == len(wire)
    truncated = blob[: len(blob) - 1]
    assert len(decode(truncated, cuts, None)) == len(wire) - 1  # the last one is awaited


@FUZZ
@given(
    st.binary(max_size=512),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.lists(U64, max_size=4),
)
def test_the_body_decoder_checks_every_length(body, split, nbuf, table):
    raw = b"".join(struct.pack("<Q", e) for e in table) + body
    try:
        frame = p.split_frame(p.Kind.RESULT, 1, memoryview(raw), split, nbuf)
    except p.ProtocolError:
        return
    lengths = [len(frame.body), len(frame.body2 or b""), *map(len, frame.buffers)]
    assert sum(lengths) + 8 * nbuf == len(raw)


def test_a_header_claiming_gigabytes_read_from_a_pipe_allocates_with_what_arrives():
    r, w = os.pipe()
    reader = p.FrameReader()
    try:
        os.write(w, p.HEADER.pack(p.MAX_FRAME - 1, 0, p.Kind.RESULT, 0, p.MARK, 1))
        tracemalloc.start()
        try:
            for _ in range(4):
                os.write(w, b"x" * 60_000)
                assert reader.read(r) == []
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < ALLOWANCE and reader.pending == 240_000
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("how", ["read", "feed"])
def test_a_frame_larger_than_its_first_buffer_grows_into_place(how):
    payload = os.urandom(2 * p.BIG_AHEAD + 12345)
    blob = b"".join(bytes(x) for x in p.encode(p.Kind.RESULT, 9, pickle.dumps(payload)))
    reader = p.FrameReader()
    got: list[p.Frame] = []
    if how == "feed":
        for i in range(0, len(blob), 1 << 20):
            got.extend(reader.feed(blob[i : i + (1 << 20)]))
    else:
        r, w = os.pipe()
        try:
            os.set_blocking(r, False)
            for i in range(0, len(blob), 1 << 16):
                os.write(w, blob[i : i + (1 << 16)])
                while True:
                    try:
                        frames = reader.read(r)
                    except BlockingIOError:
                        break
                    assert frames is not None
                    got.extend(frames)
        finally:
            os.close(r)
            os.close(w)
    assert len(got) == 1 and got[0].seq == 9 and got[0].load() == payload
    assert reader.pending == 0
