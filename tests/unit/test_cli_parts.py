"""The command line's pure parts: reading calls, counting lines, naming errors, writing records."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pool._cli import BadLine, Writer, count_lines, error_info, read_calls
from sdk import ActivityError, ActivityTimeoutError, ApplicationError, TimeoutType


def test_read_calls_spreads_arrays_and_objects_and_skips_blank_lines() -> None:
    lines = io.BytesIO(b'[1, 2]\n{"a": 1}\n"s"\n\n  \nnull\n')
    assert list(read_calls(lines)) == [((1, 2), {}), ((), {"a": 1}), (("s",), {}), ((None,), {})]


def test_read_calls_names_the_line_that_is_not_json() -> None:
    calls = read_calls(io.BytesIO(b"1\n\n{oops\n4\n"))
    assert next(calls) == ((1,), {})
    with pytest.raises(BadLine, match=r"^line 3: not valid JSON \(Expecting"):
        next(calls)


@pytest.mark.parametrize(
    ("text", "lines"), [(b"", 0), (b"1\n2\n", 2), (b"1\n2", 2), (b"1\n\n3\n", 3)]
)
def test_count_lines(tmp_path: Path, text: bytes, lines: int) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(text)
    assert count_lines(str(path)) == lines


def test_count_lines_of_what_is_not_a_file_is_unknown(tmp_path: Path) -> None:
    assert count_lines(str(tmp_path)) is None
    assert count_lines(str(tmp_path / "missing")) is None


def test_error_info_is_the_last_attempts_own_error() -> None:
    err = ActivityError("failed after 3 attempts", attempts=3)
    err.__cause__ = KeyError("k")
    assert error_info(err) == {"type": "KeyError", "message": "'k'", "attempts": 3}
    err.__cause__ = ActivityTimeoutError("t/o", type=TimeoutType.HEARTBEAT)
    assert error_info(err) == {"type": "ActivityTimeoutError", "message": "t/o", "attempts": 3}
    err.__cause__ = ApplicationError("nope", type="Refused")
    assert error_info(err) == {"type": "Refused", "message": "nope", "attempts": 3}

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert error_info(Unprintable())["message"] == "<Unprintable: message not printable>"


def test_writer_counts_failures_and_an_unserialisable_result_is_one() -> None:
    out = io.BytesIO()
    w = Writer(out)
    assert w.record(0, {"x": 1.5}) is True
    assert w.record(1, object()) is False
    assert w.record(2, ValueError("v")) is False
    lines = out.getvalue().splitlines()
    assert lines[0] == b'{"index":0,"result":{"x":1.5}}'
    assert b'"index":1,"error":{"type":"PydanticSerializationError"' in lines[1]
    assert lines[2] == b'{"index":2,"error":{"type":"ValueError","message":"v","attempts":0}}'
    assert w.failed == 2
