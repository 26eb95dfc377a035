"""The sdk's modules depend on each other one way: no import circle, not even through an import
made for type checkers only or inside a function (a reader follows those too)."""

from __future__ import annotations

import ast
from pathlib import Path

SDK = Path(__file__).resolve().parents[2] / "sdk"


def _imports(path: Path) -> set[str]:
    """The sdk modules ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from ._x import y
                found.add(node.module)
            elif node.level == 1:  # from . import _x, _y
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("sdk."):
                found.add(node.module.removeprefix("sdk."))
            elif node.module == "sdk":
                found.update(a.name for a in node.names if a.name.startswith("_"))
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("sdk.") for a in node.names if a.name.startswith("sdk.")
            )
    return found


def _graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in SDK.glob("_*.py") if p.stem != "__init__"}
    return {name: _imports(path) & modules.keys() - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_the_imports():
    graph = _graph()
    assert "_context" in graph["_attempt"]  # a plain import
    assert "_definition" in graph["_attempt"]  # an import for type checkers only


def test_sdk_modules_import_each_other_one_way():
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])
