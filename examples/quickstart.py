"""Quickstart: CPU work with heartbeats and retries, then a sticky session sharing a model.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from datetime import timedelta

import sdk as workflows
from pool import Pool
from sdk import activity


def heavy(x: int) -> int:
    """Some honest CPU work: iterate a hash."""
    digest = str(x).encode()
    for _ in range(20_000):
        digest = hashlib.sha256(digest).digest()
    return digest[0]


@workflows.activity(
    start_to_close_timeout=timedelta(seconds=30),
    heartbeat_timeout=timedelta(seconds=2),
    retry_policy_max_attempts=5,
    retry_policy_backoff_coefficient=2.0,
)
def crunch(items: list[int]) -> int:
    total = 0
    for i, x in enumerate(items):
        total += heavy(x)
        activity.heartbeat({"processed": i + 1, "total": len(items)})
    return total


@workflows.activity(sticky_to_worker=True)
async def load_model(size: str) -> dict:
    """'Load' a model into this worker's session state (a real app loads weights here)."""
    started = time.perf_counter()
    vocab = {word: heavy(i) for i, word in enumerate(["hello", "world", "pool", "model"] * 25)}
    activity.session_state()["model"] = {"size": size, "vocab": vocab}
    return {"pid": os.getpid(), "load_ms": round((time.perf_counter() - started) * 1000, 1)}


@workflows.activity(sticky_to_worker=True)
async def predict(text: str) -> dict:
    model = activity.session_state()["model"]
    score = sum(model["vocab"].get(w, 0) for w in text.split())
    return {"pid": os.getpid(), "model": model["size"], "text": text, "score": score}


async def main() -> None:
    async with Pool(activities=[crunch, load_model, predict], workers=2) as pool:
        print("workers:", pool.worker_pids())
        t0 = time.perf_counter()
        totals = await asyncio.gather(
            *(pool.execute(crunch, list(range(i, i + 20))) for i in range(4))
        )
        print(f"crunch x4 on 2 workers: {totals} in {time.perf_counter() - t0:.2f}s")

        async with workflows.run_sticky_worker_session():
            loaded = await load_model("small")  # sticky: binds this session to one worker
            print(f"load_model: {loaded}")
            for text in ("hello", "hello world", "pool model"):
                result = await predict(text)  # same subprocess, model already loaded
                print(f"predict: {result}")
                assert result["pid"] == loaded["pid"]
        print("stats:", pool.stats())


if __name__ == "__main__":
    asyncio.run(main())
