"""An activity module that imports logging only inside its activity (see test_output.py)."""

from __future__ import annotations

from sdk import activity


@activity
def log_lazily(n: int) -> str:
    import logging  # the first import of logging in this worker, unless a test forked it

    logging.getLogger("outputtest.lazy").warning("lazy %d", n)
    return ",".join(type(h).__name__ for h in logging.getLogger().handlers)


@activity
def fork_then_log(n: int) -> int:
    """A child forked before this worker imported logging, which then logs: the import hook
    came with the fork, but the channel is not the child's."""
    import os

    pid = os.fork()
    if pid == 0:
        try:
            import logging

            logging.getLogger("outputtest.child").warning("child record %d", n)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return n
