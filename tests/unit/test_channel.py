"""Channel: one worker's pipes on the supervisor's side, with no process behind them.

The frames one event queues leave in one write; what the worker writes back reaches the
listener decoded; printed lines are tagged with the worker and its running activity."""

from __future__ import annotations

import os
import pickle
import select
from typing import Any

import pytest

from pool._channel import Channel
from pool._process import WorkerProcess
from pool._protocol import FailureInfo, FrameReader, Kind, encode_small


class Listener:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        if not name.startswith(("on_", "after")):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, *args[1:]))


class Loop:
    """The loop calls a channel makes: none here, unless a pipe fills."""

    def add_reader(self, *args: Any) -> None:
        raise AssertionError("not expected")

    add_writer = remove_reader = remove_writer = add_reader


@pytest.fixture
def pipes():
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    out_r, out_w = os.pipe()
    for fd in (to_w, from_r, out_r):
        os.set_blocking(fd, False)
    proc = WorkerProcess(os.getpid(), to_w, from_r, out_r, None)
    yield proc, to_r, from_w, out_w
    proc.close_fds()
    for fd in (to_r, from_w, out_w):
        os.close(fd)


def make(proc: WorkerProcess, on_output=None) -> tuple[Channel, Listener, list[Channel]]:
    listener, batch = Listener(), []
    channel = Channel(Loop(), 7, proc, listener, batch, on_output, shm=False)  # type: ignore[arg-type]
    return channel, listener, batch


def test_an_events_frames_leave_in_one_write(pipes) -> None:
    proc, to_r, _, _ = pipes
    channel, _, batch = make(proc)
    meta = pickle.dumps(("m", "q", "act", "1", 1, None, None, None, None))
    channel.send_run(1, "act", meta, (pickle.dumps(((), {})), []))
    channel.send_close_session("s")
    assert batch == [channel] and not select.select([to_r], [], [], 0)[0]  # not yet sent
    channel.flush()
    data = os.read(to_r, 1 << 16)
    frames = FrameReader().feed(data)
    assert [f.kind for f in frames] == [Kind.RUN, Kind.CLOSE_SESSION]
    assert channel.activity == "act" and list(channel.in_pipe) == [(1, "act")]


def test_replies_reach_the_listener_decoded(pipes) -> None:
    proc, _, from_w, _ = pipes
    channel, listener, _ = make(proc)
    channel.in_pipe.extend([(1, "act"), (2, "act")])
    failure = FailureInfo(None, "ValueError", "bad", "Traceback...")
    os.write(
        from_w,
        encode_small(Kind.RESULT, 1, pickle.dumps(41))
        + encode_small(Kind.HEARTBEAT, 2, pickle.dumps(("half", 0.0)))
        + encode_small(Kind.FAILURE, 2, pickle.dumps(failure)),
    )
    assert channel.on_readable()
    names = [c[0] for c in listener.calls]
    assert names == ["on_result", "on_heartbeat", "on_failure", "after"]
    assert listener.calls[0][1:3] == (1, 41)
    assert listener.calls[1][1:3] == (2, "half")
    exc = listener.calls[2][2]
    assert "ValueError: bad" in str(exc) and exc.remote_traceback_text == "Traceback..."
    assert not channel.in_pipe  # both answered
    assert not channel.on_readable()  # nothing more to read


def test_a_malformed_frame_is_reported_after_the_sound_ones(pipes) -> None:
    proc, _, from_w, _ = pipes
    channel, listener, _ = make(proc)
    os.write(from_w, encode_small(Kind.RESULT, 1, pickle.dumps(1)) + encode_small(Kind.RUN, 2))
    channel.on_readable()
    assert [c[0] for c in listener.calls] == ["on_result", "on_malformed", "after"]


def test_printed_lines_are_tagged_with_the_worker_and_its_activity(pipes) -> None:
    proc, _, _, out_w = pipes
    seen: list[tuple[int, str | None, str]] = []
    channel, _, _ = make(proc, on_output=lambda *line: seen.append(line))
    channel.in_pipe.append((1, "act"))
    os.write(out_w, b"one\ntw")
    channel.output.drain()
    assert seen == [(7, "act", "one"), (7, "act", "tw")]


def test_lines_printed_before_a_failure_belong_to_its_attempt(pipes) -> None:
    """The output pipe is read before the failure is reported, whatever order the loop would
    have picked; the tail keeps the last lines of the attempt that printed them only."""
    proc, _, from_w, out_w = pipes
    seen: list[tuple[Any, ...]] = []
    channel, listener, _ = make(proc, on_output=lambda *line: seen.append(line))
    channel.in_pipe.extend([(1, "act"), (2, "act")])
    os.write(out_w, b"first attempt\n")
    channel.output.catch_up()
    assert channel.output.tail(1) == ("first attempt",)
    failure = FailureInfo(None, "ValueError", "bad", "Traceback...")
    os.write(out_w, b"".join(b"line %d\n" % i for i in range(25)))
    os.write(from_w, encode_small(Kind.FAILURE, 1, pickle.dumps(failure)))
    os.write(from_w, encode_small(Kind.FAILURE, 2, pickle.dumps(failure)))
    channel.on_readable()
    assert [c[0] for c in listener.calls] == ["on_failure", "on_failure", "after"]
    # the 25 lines came before attempt 1 answered: its tail, tagged with it
    assert channel.output.tail(1) == tuple(f"line {i}" for i in range(5, 25))
    assert channel.output.tail(2) == ()
    assert seen[-1] == (7, "act", "line 24")
