"""``activitypool demo``: a short tour on data shipped in this module (no files, no network).

1. a CPU map: primes counted over 1,200 generated ranges, with the progress bar;
2. a sticky session: a small text classifier "loaded" once in one worker, then 300 calls;
3. a hung activity: attempt 1 blocks; the start-to-close deadline kills its worker, the retry
   succeeds;
4. a crashed worker: attempt 1 kills its own process; a replacement starts, the retry succeeds.

Then the summary of the whole run. Its activities live here, so workers import this module:
nothing heavier than the sdk at import time (no rich, no pool internals).
"""

from __future__ import annotations

import os
import random
import time

from sdk import activity

# -- the data (generated: the same every run) --------------------------------------------------
SEED = 2024
N_RANGES = 1_200
RANGE_WIDTH = 400

_TOPICS = {
    "sport": "match goal team coach league score season player win cup referee stadium",
    "food": "recipe bake flour sugar oven taste dinner spice salad soup bread cheese",
    "tech": "cpu kernel memory process thread compiler python code server network disk",
}


def ranges() -> list[list[int]]:
    """The CPU map's input: ``[start, stop)`` ranges at random places below ten million."""
    rng = random.Random(SEED)
    starts = [rng.randrange(1_000_000, 10_000_000) for _ in range(N_RANGES)]
    return [[s, s + RANGE_WIDTH] for s in starts]


def documents(n: int = 300) -> list[str]:
    """The classifier's input: short texts of words drawn mostly from one topic."""
    rng = random.Random(SEED + 1)
    words = {t: v.split() for t, v in _TOPICS.items()}
    every = [w for ws in words.values() for w in ws]
    out = []
    for _ in range(n):
        topic = rng.choice(sorted(words))
        out.append(
            " ".join(rng.choice(words[topic] if rng.random() < 0.7 else every) for _ in range(8))
        )
    return out


# -- activities ----------------------------------------------------------------------------------
@activity(name="demo.count_primes", start_to_close_timeout=10)
def count_primes(span: list[int]) -> int:
    """CPU work: trial division over ``[start, stop)``."""
    start, stop = span
    n = 0
    for k in range(start | 1, stop, 2):
        d = 3
        while d * d <= k:
            if k % d == 0:
                break
            d += 2
        else:
            n += 1
    return n


@activity(name="demo.classify", sticky_to_worker=True, start_to_close_timeout=10)
def classify(text: str) -> dict:
    """Classify a text with the session's model, loading it on the session's first call."""
    state = activity.session_state()
    model = state.get("model")
    if model is None:
        time.sleep(0.3)  # what loading weights from disk would cost
        model = state["model"] = {w: t for t, ws in _TOPICS.items() for w in ws.split()}
        state["loaded_by"] = os.getpid()
        state["loads"] = state.get("loads", 0) + 1
    votes: dict[str, int] = {}
    for word in text.split():
        topic = model.get(word)
        if topic is not None:
            votes[topic] = votes.get(topic, 0) + 1
    best = max(sorted(votes), key=votes.__getitem__) if votes else "unknown"
    return {"topic": best, "pid": os.getpid(), "loads": state["loads"]}


@activity(
    name="demo.flaky_hang",
    start_to_close_timeout=0.5,
    retry_policy_max_attempts=3,
    retry_policy_initial_interval=0.05,
)
def flaky_hang(x: int) -> int:
    """Attempt 1 blocks (as code stuck in a C call would); the supervisor kills it."""
    if activity.info().attempt == 1:
        time.sleep(3600)
    return x * x


@activity(name="demo.flaky_crash", retry_policy_max_attempts=3, retry_policy_initial_interval=0.05)
def flaky_crash(x: int) -> int:
    """Attempt 1 kills its own worker process (as a segfault would)."""
    if activity.info().attempt == 1:
        os._exit(139)
    return x + 1


# -- the tour ------------------------------------------------------------------------------------
def main(*, workers: int | None = None, quiet: bool = False) -> int:
    import sys

    from pool import _progress
    from pool._pool import Pool

    def say(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    workers = max(2, workers or min(4, os.cpu_count() or 1))
    total = _progress.Progress()  # the whole tour, for the summary
    show = not quiet
    say(f"activitypool demo: {workers} worker processes\n")
    with Pool([__name__], workers=workers, on_event=total.on_event) as pool:
        say(f"1. CPU map: primes in {N_RANGES:,} ranges of {RANGE_WIDTH} numbers")
        primes = list(pool.map(count_primes, ranges(), return_exceptions=True, progress=show))
        found = sum(v for v in primes if isinstance(v, int))
        say(f"   {found:,} primes found\n")

        say("2. sticky session: a text classifier loaded once, then 300 calls on its worker")
        with pool.sticky_session() as session:
            labels = list(session.map(classify, documents(), return_exceptions=True, progress=show))
        ok = [v for v in labels if isinstance(v, dict)]
        pids = sorted({v["pid"] for v in ok})
        loads = max((v["loads"] for v in ok), default=0)
        topics = ", ".join(sorted({v["topic"] for v in ok}))
        say(f"   {len(ok)} texts -> {topics}; all on worker pid {pids}, model loaded {loads}x\n")

        say("3. a hung activity: attempt 1 blocks; its 0.5 s deadline kills the worker; retried")
        hung = list(pool.map(flaky_hang, range(4), return_exceptions=True, progress=show))
        say(f"   results {hung}\n")

        say("4. a crashing activity: attempt 1 kills its worker; a new worker takes the retry")
        crashed = list(pool.map(flaky_crash, range(4), return_exceptions=True, progress=show))
        say(f"   results {crashed}\n")
    outcomes = [*primes, *labels, *hung, *crashed]
    failed = sum(isinstance(v, BaseException) for v in outcomes)
    total.item(False, len(outcomes) - failed)
    total.item(True, failed)
    total.finish()
    _progress.Display(total, quiet=quiet).summary("demo summary")
    return 1 if failed else 0
