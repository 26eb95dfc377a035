"""The public face of the runtime is exactly this."""

import pool


def test_pool_all_is_pinned():
    assert sorted(pool.__all__) == ["Pool", "PoolEvent", "PoolSession", "PoolStats"]
    for name in pool.__all__:
        assert getattr(pool, name).__name__ == name
