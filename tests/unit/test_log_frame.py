"""LOG frames: a worker's log record in plain fields. Whatever a record holds, the worker makes
a frame of it; whatever bytes arrive, the supervisor decodes a record or raises ProtocolError."""

from __future__ import annotations

import logging
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pool._protocol import (
    LOG_TEXT_MAX,
    LOG_TEXTS,
    FrameReader,
    Kind,
    ProtocolError,
    decode_log,
    encode_log,
)
from pool._worker_log import log_frame, message

TEXTS = ("app.db", "WARNING", "slow query: 3 s", "/src/app/db.py", "query", "MainThread")


def one_frame(data: bytes):
    frames = FrameReader().feed(data)
    assert len(frames) == 1 and frames[0].kind is Kind.LOG
    return frames[0]


def test_round_trip():
    texts = (*TEXTS, "Traceback ...", None, "crunch", "17")
    data = encode_log(0, logging.WARNING, 42, 2, 1 << 63, 1700000000.25, texts)
    entry = decode_log(one_frame(data).body)
    assert (entry.levelno, entry.lineno, entry.attempt) == (logging.WARNING, 42, 2)
    assert (entry.thread, entry.created) == (1 << 63, 1700000000.25)
    assert tuple(getattr(entry, name) for name in LOG_TEXTS) == texts


def test_texts_that_are_not_plain_utf8_or_too_long():
    lone = "half a pair: \ud800"
    huge = "y" * (LOG_TEXT_MAX + 10)
    data = encode_log(0, 10, 1, 0, 1, 0.0, (lone, huge, *[None] * (len(LOG_TEXTS) - 2)))
    entry = decode_log(one_frame(data).body)
    assert entry.name == "half a pair: \\ud800"
    assert entry.levelname.startswith("y" * LOG_TEXT_MAX) and entry.levelname.endswith("]")
    assert len(entry.levelname) < LOG_TEXT_MAX + 100


def test_numbers_out_of_range_are_clamped():
    data = encode_log(0, 1 << 40, -(1 << 40), -5, -1, 0.0, (None,) * len(LOG_TEXTS))
    entry = decode_log(one_frame(data).body)
    assert (entry.levelno, entry.lineno, entry.attempt) == (2**31 - 1, -(2**31), 0)
    assert entry.thread == 2**64 - 1


def test_wrong_number_of_texts_is_a_bug_of_the_caller():
    with pytest.raises(ValueError):
        encode_log(0, 10, 1, 0, 1, 0.0, ("x",))


def test_every_truncation_and_any_trailing_byte_is_a_protocol_error():
    body = one_frame(encode_log(0, 30, 1, 1, 1, 1.0, (*TEXTS, None, None, "a", "b"))).body
    body = bytes(body)
    for n in range(len(body)):
        with pytest.raises(ProtocolError):
            decode_log(body[:n])
    with pytest.raises(ProtocolError):
        decode_log(body + b"\0")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_random_bodies_decode_or_raise_protocol_error(body):
    try:
        entry = decode_log(body)
    except ProtocolError:
        return
    assert len(entry) == 5 + len(LOG_TEXTS)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 10_000))
def test_a_damaged_body_decodes_or_raises_protocol_error(noise, at):
    """Bytes flipped in a valid body: a record (the lengths still agree) or ProtocolError."""
    body = bytearray(one_frame(encode_log(0, 30, 1, 1, 1, 1.0, (*TEXTS, *[None] * 4))).body)
    at %= len(body)
    body[at : at + len(noise)] = noise[: len(body) - at]
    try:
        decode_log(bytes(body))
    except ProtocolError:
        pass


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def record(msg, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("app", logging.ERROR, "/src/app.py", 7, msg, args or None, exc_info)


@pytest.mark.parametrize(
    ("rec", "expected"),
    [
        (record("two %d %d", 1), "could not be formatted (TypeError): msg='two %d %d', args=(1,)"),
        (record(Unprintable()), "its repr() raised RuntimeError"),
        (record("arg %s", Unprintable()), "could not be formatted (RuntimeError)"),
        (record("fine %s", "yes"), "fine yes"),
    ],
)
def test_a_message_that_cannot_be_made_says_why(rec, expected):
    assert expected in message(rec)
    entry = decode_log(one_frame(log_frame(rec)).body)
    assert expected in entry.msg
    assert (entry.name, entry.levelno, entry.lineno) == ("app", logging.ERROR, 7)
    assert entry.activity is None and entry.attempt == 0  # not in an attempt


def test_a_record_with_anything_in_its_fields_still_makes_a_frame():
    rec = record("odd")
    rec.levelno = "high"
    rec.created = None
    rec.name = Unprintable()
    rec.thread = None
    entry = decode_log(one_frame(log_frame(rec)).body)
    assert entry.levelno == 0 and entry.msg == "odd" and "repr() raised" in entry.name


def test_exception_text_survives_an_exception_whose_str_raises():
    class Bad(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    try:
        raise Bad()
    except Bad:
        rec = record("failed", exc_info=sys.exc_info())
    entry = decode_log(one_frame(log_frame(rec)).body)
    assert "Traceback" in entry.exc_text and "Bad" in entry.exc_text
