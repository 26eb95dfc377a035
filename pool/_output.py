"""What a worker prints, cut into the lines a terminal would show. Pure: no I/O, no processes.

The supervisor feeds each read of a worker's output pipe to that worker's :class:`LineSplitter`
and forwards the lines it returns. The work per read is linear in the read's size, and the
partial line kept between reads never exceeds the cap, whatever the worker writes.
"""

from __future__ import annotations

# A line longer than this is cut: what a terminal cannot show at once is not worth holding
# more of, and the cap bounds the memory a worker that never writes a newline can make us use.
LINE_CAP = 64 * 1024


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
