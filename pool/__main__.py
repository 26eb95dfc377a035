"""``python -m pool``: the ``activitypool`` command (see pool/_cli.py)."""

from pool._cli import entry

if __name__ == "__main__":
    entry()
