"""What a worker prints and logs, as the supervisor shows it.

:class:`LineSplitter` cuts a byte stream into the lines a terminal would show. It is pure (no
I/O): the work per read is linear in the read's size, and the partial line kept between reads
never exceeds the cap, whatever the worker writes. :class:`WorkerOutput` reads one worker's
output pipe through a splitter, tags the lines and forwards them, and hands the worker's LOG
records to ``logging``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import sys
from collections.abc import Callable

from pool._logrecord import decode_log

log = logging.getLogger("activitypool")

# A line longer than this is cut: what a terminal cannot show at once is not worth holding
# more of, and the cap bounds the memory a worker that never writes a newline can make us use.
LINE_CAP = 64 * 1024
# A worker's output pipe is read this much at a time (one read per loop callback)...
OUTPUT_READ = 64 * 1024
# ...and at most this much more once the worker has exited (a child of its may hold the pipe).
OUTPUT_DRAIN = 1 << 20
# The last lines an attempt printed that are kept for the error that may end its call.
OUTPUT_TAIL = 20

# on_output(worker_id, activity or None, line)
OutputCallback = Callable[[int, "str | None", str], None]


def cut_marker(cap: int) -> bytes:
    """What ends a line that was cut at ``cap`` bytes (the rest follows as the next line)."""
    return f" [line cut at {cap} bytes]".encode()


class LineSplitter:
    """Splits a byte stream into lines, as a terminal shows them.

    - ``\\n`` ends a line; a ``\\r`` just before it (``\\r\\n``) is part of the ending.
    - A ``\\r`` followed by more text on the same line starts the line over: a progress bar
      drawn with ``\\r`` gives one line, its last state.
    - A line that reaches ``cap`` bytes without ending is cut: its first ``cap`` bytes (less
      when that would split a UTF-8 character) come out with :func:`cut_marker`, and the rest
      goes on as a new line.

    Data may be split anywhere between two ``feed`` calls: the lines are the same.
    """

    __slots__ = ("_cr", "_line", "_marker", "cap")

    def __init__(self, cap: int = LINE_CAP) -> None:
        if cap < 4:
            raise ValueError("cap must be at least 4 bytes (one UTF-8 character)")
        self.cap = cap
        self._marker = cut_marker(cap)
        self._line = bytearray()  # the current line, never more than cap bytes
        # the data so far ended in \r: the next byte other than \n (or \r) starts the line over
        self._cr = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """The lines ``data`` completes (without their ending), in order."""
        data = bytes(data) if not isinstance(data, bytes) else data
        out: list[bytes] = []
        start, end = 0, len(data)
        while start < end:
            nl = data.find(b"\n", start)
            stop = end if nl < 0 else nl
            if stop > start:
                self._add(data, start, stop, out)
            if nl < 0:
                break
            out.append(bytes(self._line))
            self._line.clear()
            self._cr = False
            start = nl + 1
        return out

    def flush(self) -> bytes | None:
        """At the end of the stream: the line left unfinished, if there is one."""
        if not self._line:
            self._cr = False
            return None
        line = bytes(self._line)
        self._line.clear()
        self._cr = False
        return line

    @property
    def pending(self) -> int:
        """Bytes held for the unfinished line (at most ``cap``)."""
        return len(self._line)

    def _add(self, data: bytes, start: int, stop: int, out: list[bytes]) -> None:
        """Append ``data[start:stop]``, which holds no ``\\n``, to the current line."""
        text_end = stop
        while text_end > start and data[text_end - 1] == 0x0D:  # trailing \r: decided later
            text_end -= 1
        if text_end > start:
            first = data.find(b"\r", start, text_end)
            if first != start:  # text that goes on the current line, or over it after a \r
                if self._cr:
                    self._line.clear()
                self._append(data, start, text_end if first < 0 else first, out)
            if first >= 0:
                last = data.rfind(b"\r", first, text_end)
                # Each text between two \r starts the line over and is overwritten by the
                # next: only one longer than the cap shows (cut), as it would if the data came
                # in smaller pieces. Skipped when the span is too short to hold one.
                if last - first - 1 > self.cap:
                    for text in data[first + 1 : last].split(b"\r"):
                        if len(text) > self.cap:
                            self._line.clear()
                            self._append(text, 0, len(text), out)
                self._line.clear()  # what follows the last \r is the line now
                self._append(data, last + 1, text_end, out)
            self._cr = False
        if text_end < stop:
            self._cr = True

    def _append(self, data: bytes, start: int, stop: int, out: list[bytes]) -> None:
        line, cap = self._line, self.cap
        room = cap - len(line)
        while stop - start > room:  # the line reaches the cap: cut it
            line += data[start : start + room]
            start += room
            cut = cap
            # keep a UTF-8 character whole: never cut just before a continuation byte
            while cut > cap - 3 and (line[cut] if cut < cap else data[start]) & 0xC0 == 0x80:
                cut -= 1
            if cut == cap - 3 and line[cut] & 0xC0 == 0x80:
                cut = cap  # not UTF-8 anyway
            out.append(bytes(line[:cut]) + self._marker)
            del line[:cut]
            room = cap - len(line)
        line += data[start:stop]


class WorkerOutput:
    """What one worker prints and logs, on the supervisor's side. Owned by that worker's
    ``pool._channel.Channel``; loop thread only.

    Its output pipe is read into a :class:`LineSplitter`. Each line is tagged with the worker
    and the activity it runs (``running``: the channel's oldest RUN not yet answered) and goes
    to ``on_output``, or else to our stderr. The last lines of the attempt running are kept
    for the error that may end its call (``ActivityError.output``). A LOG record is handled by
    the logger of its name here, as if it were logged here.
    """

    __slots__ = (
        "_fd",
        "_loop",
        "_on_output",
        "_running",
        "_splitter",
        "_tail",
        "_tail_seq",
        "pid",
        "worker_id",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        worker_id: int,
        pid: int,
        fd: int,
        running: Callable[[], tuple[int, str] | None],
        on_output: OutputCallback | None,
    ) -> None:
        """``fd``: the read end of its output pipe (non-blocking); ``running``: the (seq,
        activity name) of the RUN the worker runs now, or None."""
        self._loop = loop
        self.worker_id = worker_id
        self.pid = pid
        self._fd = fd
        self._running = running
        self._on_output = on_output
        self._splitter = LineSplitter()
        # the last lines attempt ``_tail_seq`` printed (made on its first line: an attempt
        # that prints nothing costs nothing)
        self._tail: collections.deque[str] | None = None
        self._tail_seq = -1

    def start(self) -> None:
        self._loop.add_reader(self._fd, self._on_readable)

    def stop(self) -> None:
        """Stop watching the pipe (before its fd is closed)."""
        with contextlib.suppress(Exception):  # (the loop is closing)
            self._loop.remove_reader(self._fd)

    def tail(self, seq: int) -> tuple[str, ...]:
        """The last lines (up to ``OUTPUT_TAIL``) attempt ``seq`` printed."""
        tail = self._tail
        return tuple(tail) if tail is not None and self._tail_seq == seq else ()

    def _on_readable(self) -> None:
        # One read per callback, and the splitter's work is linear in it: a worker that prints
        # without end cannot hold up the loop, nor make us keep more than one line of it.
        try:
            data = os.read(self._fd, OUTPUT_READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._emit(self._splitter.feed(data))
            return
        self._loop.remove_reader(self._fd)
        last = self._splitter.flush()
        if last is not None:
            self._emit([last])

    def catch_up(self) -> None:
        """Read what it printed up to now: its output pipe and its reply pipe are read in
        whatever order the loop picks, and the lines an attempt printed before it answered
        belong to that attempt (its stdout and stderr are line-buffered)."""
        try:
            for _ in range(OUTPUT_DRAIN // OUTPUT_READ):
                data = os.read(self._fd, OUTPUT_READ)
                if not data:  # its end: the output reader sees it too, and flushes
                    return
                self._emit(self._splitter.feed(data))
        except OSError:  # BlockingIOError: nothing more for now
            pass

    def drain(self) -> None:
        """What it printed last, before the fd goes (bounded: a child of its may still write)."""
        self.catch_up()
        last = self._splitter.flush()
        if last is not None:
            self._emit([last])

    def _emit(self, lines: list[bytes]) -> None:
        """Forward printed lines: to ``on_output``, or else to our stderr, tagged."""
        if not lines:
            return
        texts = [line.decode("utf-8", "replace") for line in lines]
        head = self._running()
        activity = None
        if head is not None:
            seq, activity = head
            if self._tail is None or self._tail_seq != seq:  # a new attempt's first line
                self._tail = collections.deque(maxlen=OUTPUT_TAIL)
                self._tail_seq = seq
            self._tail.extend(texts)
        wid = self.worker_id
        if self._on_output is not None:
            for text in texts:
                try:
                    self._on_output(wid, activity, text)
                except Exception:
                    log.exception("on_output callback failed")
            return
        stream = sys.stderr  # looked up each time: pytest and users swap it
        if stream is None:
            return
        tag = f"[worker {wid} {activity}] " if activity else f"[worker {wid}] "
        try:
            stream.write("".join(f"{tag}{text}\n" for text in texts))
            stream.flush()
        except Exception:  # closed, gone or broken: nowhere to show it, and the loop goes on
            pass

    def log(self, body: bytes | bytearray | memoryview) -> None:
        """A LOG frame's record: handled by the logger of its name here, as if logged here,
        with ``worker_id``, ``pid``, ``activity``, ``attempt`` and ``activity_id`` on it."""
        entry = decode_log(body)  # (a malformed one is a ProtocolError: the worker goes)
        name = entry.name or "root"
        logger = logging.getLogger() if name == "root" else logging.getLogger(name)
        if not logger.isEnabledFor(entry.levelno):
            return
        pathname = entry.pathname or ""
        filename = os.path.basename(pathname)
        wid, pid = self.worker_id, self.pid
        record = logging.makeLogRecord(
            {
                "name": name,
                "msg": entry.msg or "",
                "levelno": entry.levelno,
                "levelname": entry.levelname or logging.getLevelName(entry.levelno),
                "pathname": pathname,
                "filename": filename,
                "module": os.path.splitext(filename)[0],
                "lineno": entry.lineno,
                "funcName": entry.funcName,
                "thread": entry.thread,
                "threadName": entry.threadName,
                "process": pid,
                "processName": f"activitypool worker {wid}",
                "exc_text": entry.exc_text,
                "stack_info": entry.stack_info,
                "worker_id": wid,
                "pid": pid,
                "activity": entry.activity or _activity(self._running()),
                "attempt": entry.attempt or None,
                "activity_id": entry.activity_id,
            }
        )
        # its time is the worker's, not ours
        record.relativeCreated += (entry.created - record.created) * 1000
        record.created = entry.created
        record.msecs = (entry.created - int(entry.created)) * 1000
        try:
            logger.handle(record)
        except Exception:
            log.exception("a log record of worker %d could not be handled", wid)


def _activity(head: tuple[int, str] | None) -> str | None:
    return head[1] if head is not None else None
