"""An activity module that imports logging only inside its activity (see test_output.py)."""

from __future__ import annotations

from sdk import activity


@activity
def log_lazily(n: int) -> str:
    import logging  # the first import of logging in this worker, unless a test forked it

    logging.getLogger("outputtest.lazy").warning("lazy %d", n)
    return ",".join(type(h).__name__ for h in logging.getLogger().handlers)
