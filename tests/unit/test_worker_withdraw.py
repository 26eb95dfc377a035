"""The worker's side of WITHDRAW: a RUN it has not started is dropped and confirmed with
WITHDRAWN; one it has taken is not. Driven in-process over two pipes, with the SIGUSR1 handler
called directly, as the signal would call it while an activity runs."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

import pytest

from pool import _protocol as p
from pool._worker import CANCEL_SIGNAL, Worker


@pytest.fixture
def channel() -> Iterator[tuple[Worker, int, int]]:
    """A worker (not serving) and our ends: where to write its requests, where it replies."""
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    worker = Worker(req_r, rep_w, os.getpid())
    yield worker, req_w, rep_r
    for fd in (req_r, req_w, rep_r, rep_w):
        os.close(fd)


def run_frame(seq: int) -> bytes:
    return p.encode_small(p.Kind.RUN, seq, b"meta", b"args")


def replies(fd: int, timeout: float = 0.0) -> list[tuple[p.Kind, int]]:
    reader = p.FrameReader()
    got: list[tuple[p.Kind, int]] = []
    while select.select([fd], [], [], timeout)[0]:
        frames = reader.read(fd)
        assert frames is not None
        got.extend((f.kind, f.seq) for f in frames)
        timeout = 0.0
    return got


def while_running(worker: Worker, seq: int) -> None:
    """As the main thread is while it runs attempt ``seq``."""
    worker.running = True
    worker.current_seq = seq


def test_a_queued_run_is_dropped_and_confirmed(channel: tuple[Worker, int, int]) -> None:
    worker, req, rep = channel
    while_running(worker, 1)
    os.write(req, run_frame(2) + run_frame(3) + p.encode_small(p.Kind.WITHDRAW, 3))
    worker._on_cancel_signal(CANCEL_SIGNAL, None)
    assert replies(rep) == [(p.Kind.WITHDRAWN, 3)]
    assert [(f.kind, f.seq) for f in worker.pending] == [(p.Kind.RUN, 2)]


def test_a_run_already_taken_is_not_confirmed_unless_it_had_not_started(
    channel: tuple[Worker, int, int],
) -> None:
    worker, req, rep = channel
    # the main loop has taken RUN 2 off the pipe; it is running it
    while_running(worker, 2)
    os.write(req, p.encode_small(p.Kind.WITHDRAW, 2))
    worker._on_cancel_signal(CANCEL_SIGNAL, None)
    assert replies(rep) == []  # it runs here and is answered as usual
    # RUN 4 was taken but not started when its WITHDRAW was absorbed: withdrawn at its start
    worker.running = False
    os.write(req, p.encode_small(p.Kind.WITHDRAW, 4))
    worker._absorb_cancels()
    assert worker._withdrawn_at_start(4)
    assert replies(rep) == [(p.Kind.WITHDRAWN, 4)]
    assert not worker._withdrawn_at_start(5) and worker.withdraw_seqs == set()


def test_the_handler_never_waits_for_the_write_lock(channel: tuple[Worker, int, int]) -> None:
    """The signal can interrupt the main thread inside a write, holding the lock: the handler
    must not block (it would deadlock); the confirmation follows once the lock is free."""
    worker, req, rep = channel
    while_running(worker, 1)
    os.write(req, run_frame(2) + p.encode_small(p.Kind.WITHDRAW, 2))
    with worker._write_lock:
        worker._on_cancel_signal(CANCEL_SIGNAL, None)
        assert replies(rep) == []
        assert not worker.pending
    assert replies(rep, timeout=5.0) == [(p.Kind.WITHDRAWN, 2)]


def test_cancel_and_withdraw_together(channel: tuple[Worker, int, int]) -> None:
    worker, req, rep = channel
    while_running(worker, 1)
    os.write(
        req,
        run_frame(2) + p.encode_small(p.Kind.CANCEL, 1) + p.encode_small(p.Kind.WITHDRAW, 2),
    )
    worker._on_cancel_signal(CANCEL_SIGNAL, None)
    assert worker.cancel_requested
    assert replies(rep) == [(p.Kind.WITHDRAWN, 2)]
