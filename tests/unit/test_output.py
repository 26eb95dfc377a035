"""LineSplitter: a worker's output cut into the lines a terminal shows, in linear time."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pool._output import LINE_CAP, LineSplitter, cut_marker


def split_all(data: bytes, cap: int = LINE_CAP) -> list[bytes]:
    s = LineSplitter(cap)
    lines = s.feed(data)
    last = s.flush()
    return [*lines, last] if last is not None else lines


def split_chunks(chunks: list[bytes], cap: int = LINE_CAP) -> list[bytes]:
    s = LineSplitter(cap)
    lines = [line for chunk in chunks for line in s.feed(chunk)]
    last = s.flush()
    return [*lines, last] if last is not None else lines


def as_terminal(data: bytes) -> list[bytes]:
    """The model, for lines under the cap: each line is what follows its last \\r that has
    text after it."""
    *lines, last = data.split(b"\n")
    if last:
        lines.append(last)
    shown = []
    for line in lines:
        parts = [p for p in line.split(b"\r") if p]
        shown.append(parts[-1] if parts else b"")
    # an unfinished line that is only \r is no line
    if last and not last.strip(b"\r"):
        shown.pop()
    return shown


def test_lines_and_endings():
    assert split_all(b"one\ntwo\r\nthree") == [b"one", b"two", b"three"]
    assert split_all(b"\n\n") == [b"", b""]
    assert split_all(b"") == []
    assert split_all(b"abc\r") == [b"abc"]  # a last \r shows the line as it is


def test_carriage_return_starts_the_line_over():
    assert split_all(b"abc\rxy\n") == [b"xy"]
    assert split_all(b"abc\r\rxy\r\n") == [b"xy"]
    assert split_all(b"\rabc\n") == [b"abc"]
    bar = b"".join(b"\r%3d%% [" % i + b"#" * (i // 10) + b"]" for i in range(101)) + b"\n"
    assert split_all(bar + b"done\n") == [b"100% [##########]", b"done"]


def test_a_carriage_return_at_a_chunk_end_waits_for_the_next_byte():
    s = LineSplitter()
    assert s.feed(b"10%\r") == []
    assert s.feed(b"\n") == [b"10%"]  # \r\n split over two reads
    assert s.feed(b"10%\r") == []
    assert s.feed(b"20%") == []
    assert s.flush() == b"20%"


def test_a_long_line_is_cut_and_goes_on():
    m = cut_marker(4)
    assert split_all(b"abcdefghij\nk\n", cap=4) == [b"abcd" + m, b"efgh" + m, b"ij", b"k"]
    assert split_all(b"abcd\n", cap=4) == [b"abcd"]  # at the cap exactly: whole
    s = LineSplitter(cap=4)
    assert s.feed(b"ab") == []
    assert s.feed(b"cdef") == [b"abcd" + m]
    assert s.pending == 2


def test_a_cut_never_splits_a_utf8_character():
    m = cut_marker(4)
    text = "aé€😀b".encode()  # 1 + 2 + 3 + 4 + 1 bytes
    lines = split_all(text, cap=4)
    assert lines == ["aé".encode() + m, "€".encode() + m, "😀".encode() + m, b"b"]
    for line in lines:
        line.removesuffix(m).decode()  # each piece decodes alone
    # not UTF-8 at all: cut at the cap
    assert split_all(b"\x80" * 6, cap=4) == [b"\x80" * 4 + m, b"\x80" * 2]


def test_cap_too_small_is_refused():
    with pytest.raises(ValueError):
        LineSplitter(cap=3)


@pytest.mark.parametrize(
    "data",
    [
        b"one\r\ntwo\rthree\n\rfour\r\r\n\n",
        b"progress 1\rprogress 2\rprogress 3\r",
        "çé€\r😀\n".encode() * 3,
        b"x" * 40 + b"\r" + b"y" * 13 + b"\n",
    ],
)
def test_chunks_split_at_any_byte_give_the_same_lines(data):
    whole = split_all(data, cap=16)
    for at in range(len(data) + 1):
        assert split_chunks([data[:at], data[at:]], cap=16) == whole, at
    assert split_chunks([data[i : i + 1] for i in range(len(data))], cap=16) == whole


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b"bc", "é".encode(), b"\r", b"\n", b"\r\n"]), max_size=60),
    st.lists(st.integers(0, 200), max_size=8),
)
def test_model_and_any_chunking(pieces, cuts):
    data = b"".join(pieces)
    assert split_all(data) == as_terminal(data)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert split_chunks(chunks) == split_all(data)
    assert split_chunks(chunks, cap=5) == split_all(data, cap=5)


def test_linear_32_mib_without_a_newline():
    chunk = b"x" * 65536
    bar = b"".join(b"\r%8d" % i for i in range(65536 // 9))
    for piece in (chunk, bar):
        s = LineSplitter()
        lines = 0
        start = time.perf_counter()
        for _ in range(512):  # 32 MiB in 64 KiB reads, as the supervisor reads them
            lines += len(s.feed(piece))
            assert s.pending <= LINE_CAP
        took = time.perf_counter() - start
        # quadratic (joining each read to the tail) took seconds; linear is a few ms
        assert took < 0.5, took
        if piece is chunk:
            assert lines == 511 and s.pending == LINE_CAP
        else:
            assert lines == 0 and s.flush() == b"%8d" % (65536 // 9 - 1)
