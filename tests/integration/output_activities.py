"""Activities that print and log (tests/integration/test_output.py). This module never imports
logging at the top: the lazy one checks that a worker forwards records from a logging that an
activity imports only when it runs."""

from __future__ import annotations

import os
import sys
import threading

from sdk import activity


@activity
def quick(x: int) -> int:
    return x


@activity
def worker_pid() -> int:
    return os.getpid()


@activity
def blast(size: int, progress: bool) -> int:
    """``size`` bytes on stdout without a newline: a run of x, or a \\r progress bar (its
    states are 9 bytes each) that a newline ends."""
    chunk = 64 * 1024
    if progress:
        states = chunk // 9
        n = 0
        for _ in range(size // (states * 9)):
            sys.stdout.write("".join(f"\r{n + i:8d}" for i in range(states)))
            n += states
        sys.stdout.write("\n")
        sys.stdout.flush()
        return n - 1
    piece = "x" * chunk
    for _ in range(size // chunk):
        sys.stdout.write(piece)
    sys.stdout.flush()
    return size


@activity
def talk(n: int) -> int:
    import logging

    print(f"printed on stdout {n}")
    sys.stderr.write(f"written to stderr {n}\n")
    os.write(1, b"raw fd write\n")
    logging.warning("root warning %d", n)
    log = logging.getLogger("outputtest")
    log.info("info %d", n, extra={"mine": "kept?"})
    log.debug("debug %d", n)
    logging.getLogger("outputtest.verbose").debug("verbose debug %d", n)
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        log.exception("it failed")
    return n


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@activity
def log_badly(n: int) -> int:
    import logging

    log = logging.getLogger("outputtest")
    log.error("two args %d %d", n)  # msg % args raises
    log.error(_Unprintable())  # str(msg) raises
    log.error("arg %s", _Unprintable())  # the argument's str and repr raise
    log.error("big %s", "y" * (1 << 20))  # cut, not a frame of its own size
    logging.basicConfig(level=logging.DEBUG)  # a worker's root keeps its forwarding handler
    log.warning("after basicConfig")
    return n


@activity
def log_elsewhere(n: int) -> int:
    import logging

    def in_thread() -> None:
        logging.getLogger("outputtest").warning("from a thread %d", n)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    pid = os.fork()
    if pid == 0:  # a child of the activity: the channel is not its own
        try:
            logging.getLogger("outputtest").warning("from a forked child %d", n)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return n
