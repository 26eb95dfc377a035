"""A user's typed program, checked by ``mypy --strict`` in tests/typing/test_mypy.py (never run).

Every line that ends in ``# E: <codes>`` must be reported with those error codes (mypy's, as
it words them: a mismatch in an overloaded call is ``call-overload``, even for the result's type
when a type context is given); no other line may be reported. The good lines are what a user
writes; the bad ones are the mistakes the types must catch. pyright --strict reports the same
lines (checked by hand: it needs Node).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import AsyncIterator, Iterator

from pool import Pool, PoolSession
from sdk import ActivityDefinition, Depends, activity, with_options


def connect() -> dict[str, int]:
    return {"a": 1}


@activity
def add(a: int, b: int) -> int:
    return a + b


@activity
async def async_add(a: int, b: int) -> int:
    return a + b


@activity(retry_policy_max_attempts=1)
def lookup(key: str, conn: dict[str, int] = Depends(connect)) -> int:
    return conn[key]


@activity
async def async_lookup(key: str, conn: dict[str, int] = Depends(connect)) -> int:
    return conn[key]


@activity(sticky_to_worker=True)
def predict(x: str, model: dict[str, int] = Depends(connect)) -> float:
    return float(model.get(x, 0))


def blocking(pool: Pool) -> None:
    total: int = pool.run(add, 1, 2)
    from_async: int = pool.run(async_add, 1, 2)
    by_name: str = pool.run("add", 1, 2)  # a name is Any
    keyword: int = pool.run(add, 1, b=2)
    fut: concurrent.futures.Future[int] = pool.submit(add, 1, 2)
    afut: concurrent.futures.Future[int] = pool.submit(async_add, 1, 2)
    found: int = pool.run(lookup, "a")
    values: Iterator[int] = pool.map(lookup, ["a", "b"])
    chunked: Iterator[int] = pool.map(async_lookup, ["a"], chunksize=10, buffersize=100)
    outcomes: Iterator[int | BaseException] = pool.map(lookup, ["a"], return_exceptions=True)
    pairs: Iterator[tuple[int, int]] = pool.map_unordered(lookup, iter(["a"]))
    named: Iterator[str] = pool.map("lookup", [1, 2])
    print(total, from_async, by_name, keyword, fut, afut, found, values, chunked, outcomes)
    print(pairs, named)

    pool.run(add, "one", 2)  # E: call-overload
    pool.run(add, 1)  # E: call-overload
    pool.run(add, 1, c=2)  # E: call-arg arg-type
    wrong: str = pool.run(add, 1, 2)  # E: assignment
    wrong_async: str = pool.run(async_add, 1, 2)  # E: assignment
    wrong_future: concurrent.futures.Future[str] = pool.submit(add, 1, 2)  # E: call-overload
    pool.submit(async_add, 1, "2")  # E: call-overload
    pool.map(lookup, [1, 2])  # E: arg-type
    pool.map(add, [1, 2])  # E: arg-type
    not_plain: Iterator[int] = pool.map(lookup, ["a"], return_exceptions=True)  # E: assignment
    wrong_pairs: Iterator[int] = pool.map_unordered(lookup, ["a"])  # E: assignment
    pool.map(lookup, ["a"], buffersize="10")  # E: call-overload
    add("one", 2)  # E: arg-type
    print(wrong, wrong_async, wrong_future, not_plain, wrong_pairs)


async def asynchronous(pool: Pool) -> None:
    a: int = await pool.execute(async_add, 1, 2)
    b: int = await pool.execute(add, 1, 2)
    c: int = await async_add(1, 2)
    results: AsyncIterator[int] = pool.amap(async_lookup, ["a"])
    pairs: AsyncIterator[tuple[int, int | BaseException]] = pool.amap_unordered(
        lookup, ["a"], return_exceptions=True
    )
    first: list[int] = [x async for x in pool.amap(lookup, ["a"])]
    print(a, b, c, results, pairs, first)

    await pool.execute(async_add, 1)  # E: call-overload
    wrong: str = await pool.execute(async_add, 1, 2)  # E: call-overload
    pool.amap(async_lookup, [1])  # E: arg-type
    print(wrong)


def in_a_session(session: PoolSession) -> None:
    score: float = session.run(predict, "x")
    scores: Iterator[float] = session.map(predict, ["x", "y"], chunksize=2)
    future: concurrent.futures.Future[float] = session.submit(predict, "x")
    print(score, scores, future)

    session.run(predict, 1)  # E: call-overload
    wrong: int = session.run(predict, "x")  # E: assignment
    print(wrong)


def resources(
    conn: dict[str, int] = Depends(connect),
    other: str = Depends(connect),  # Depends is Any, as in FastAPI
    bad: int = Depends(3),  # E: arg-type
) -> None:
    print(conn, other, bad)


def per_call_options(pool: Pool) -> None:
    once = with_options(add, retry_policy_max_attempts=1, start_to_close_timeout=5)
    total: int = pool.run(once, 1, 2)
    later: int = pool.run(with_options(lookup, heartbeat_timeout=1.0), "a")
    by_name: ActivityDefinition = with_options("add", retry_policy_max_attempts=1)
    copy: ActivityDefinition = with_options(by_name, start_to_close_timeout=2)
    print(total, later, copy)

    pool.run(once, "one", 2)  # E: call-overload
    wrong: str = pool.run(once, 1, 2)  # E: assignment
    print(wrong)
