"""The pool's own fds stay off 0, 1 and 2, in every process it runs.

fds 0-2 are the stdio of whoever runs there, and an activity may close them. Were a pipe or a
shared-memory segment of the pool then to take one of those numbers (the kernel hands out the
lowest free fd), every later ``print`` would write into the protocol channel or into a result
sitting in a segment; a later redirection (``dup2`` onto fd 1) would replace the pool's fd under
it. So every fd the pool makes or receives goes through ``above_stdio``, and code that makes fds
the pool cannot renumber (``mmap`` keeps a duplicate of the fd it maps; an event loop makes its
own) runs under ``StdioReserved``. ``above_stdio`` costs no system call while fds 0-2 are open,
``StdioReserved`` three ``fcntl``; both run only where fds are made, never per frame.

Imported by every worker: ``os`` only.
"""

from __future__ import annotations

import os

# The first fd number that is not stdio.
FIRST = 3


def above_stdio(fd: int) -> int:
    """``fd`` itself, or if it is 0, 1 or 2, a duplicate numbered 3 or more (close-on-exec, as
    every fd of the pool's is until it is handed to a child) with ``fd`` closed."""
    if fd >= FIRST:
        return fd
    low = [fd]
    new = os.dup(fd)  # the lowest free fd: another of 0-2 while one is free
    while new < FIRST:
        low.append(new)
        new = os.dup(fd)
    for old in low:
        os.close(old)
    return new


def _stdio_open() -> bool:
    try:
        for fd in range(FIRST):
            os.get_inheritable(fd)  # one fcntl(F_GETFD): EBADF if closed
    except OSError:
        return False
    return True


class StdioReserved:
    """While held, each of fds 0-2 that is closed holds ``/dev/null``, so that whatever fds are
    made meanwhile, by us or a library, are numbered 3 or more. On exit those placeholders are
    closed again: stdio is left as its owner left it (a closed fd stays closed)."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: list[int] = []

    def __enter__(self) -> StdioReserved:
        if _stdio_open():
            return self
        while True:
            fd = os.open(os.devnull, os.O_RDWR)  # the lowest free fd
            if fd >= FIRST:
                os.close(fd)
                return self
            self._held.append(fd)

    def __exit__(self, *exc: object) -> None:
        held, self._held = self._held, []
        for fd in held:
            os.close(fd)


def spawn_interpreter(
    boot: str, args: list[str], env: dict[str, str], fds: tuple[int, int, int]
) -> int:
    """``posix_spawn`` a fresh interpreter running ``boot`` with ``args`` as a worker: its
    request and reply pipes (``fds[0]``, ``fds[1]``) inherited at their numbers, stdin
    ``/dev/null``, stdout and stderr the output pipe ``fds[2]``, its own session. Its pid."""
    import sys

    req_r, rep_w, out_w = fds
    os.set_inheritable(req_r, True)
    os.set_inheritable(rep_w, True)
    return os.posix_spawn(
        sys.executable,
        [sys.executable, "-c", boot, str(req_r), str(rep_w), *args],
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, out_w, 2),
        ],
        setsid=True,
        setsigmask=(),
    )
