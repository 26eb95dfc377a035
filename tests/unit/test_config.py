"""PoolConfig: frozen, every field documented, every option checked when it is made."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools

import pytest

from pool._config import PoolConfig


def test_every_field_has_a_docstring() -> None:
    tree = ast.parse(inspect.getsource(PoolConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    documented = {
        stmt.target.id
        for stmt, after in itertools.pairwise(body)
        if isinstance(stmt, ast.AnnAssign)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
        and isinstance(after.value.value, str)
    }
    assert {f.name for f in dataclasses.fields(PoolConfig)} == documented


def test_it_is_frozen() -> None:
    config = PoolConfig(workers=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": 0}, "workers must be a positive int"),
        ({"workers": True}, "workers must be a positive int"),
        ({"prefetch": -1}, "prefetch must be >= 0"),
        ({"spares": -1}, "spares must be an int >= 0"),
        ({"reply_spin": 0.5}, r"reply_spin must be seconds in \[0, 0.01\]"),
        ({"direct_run": -0.1}, r"direct_run must be seconds in \[0, 1\]"),
        ({"direct_run": 2}, r"direct_run must be seconds in \[0, 1\]"),
        ({"direct_run": True}, r"direct_run must be seconds in \[0, 1\]"),
        ({"direct_run": "fast"}, r"direct_run must be seconds in \[0, 1\]"),
        ({"start_method": "vfork"}, "unsupported start_method 'vfork'"),
        ({"start_timeout": 0}, "start and shutdown timeouts > 0"),
        ({"thread_limit": 0}, "thread_limit must be an int >= 1"),
        ({"max_tasks_per_worker": 0}, "max_tasks_per_worker must be >= 1"),
        ({"cpu_affinity": (frozenset(),)}, "cpu_affinity"),
    ],
)
def test_construction_refuses_what_is_out_of_range(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PoolConfig(**{"workers": 1, **options})


def test_from_options_resolves_the_users_spellings() -> None:
    config = PoolConfig.from_options(workers=1, thread_limit="auto", cpu_affinity=[[0]])
    assert config.thread_limit is not None and config.thread_limit >= 1
    assert config.cpu_affinity == (frozenset({0}),)
    assert PoolConfig.from_options(workers=None).workers >= 1
    with pytest.raises(ValueError, match="cpu_affinity"):
        PoolConfig.from_options(workers=1, cpu_affinity=[])
