"""The project's packages import each other without cycles, counting the imports inside
functions too (a deferred import hides a cycle from Python, not from the design)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("actors", "bench", "cli", "config", "corpus", "evaluation", "learner", "models",
            "retrieval_service", "rollout", "tiny")
# The stand-in models' training code: production packages never import it.
PRODUCTION = ("config", "corpus", "evaluation", "learner", "models", "retrieval_service",
              "rollout")


def package_imports() -> dict[str, set[str]]:
    """package -> the other project packages its modules import (anywhere in the module)."""
    graph: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                graph[package] |= {n.split(".")[0] for n in names} & set(PACKAGES) - {package}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:  # path ends with node
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_packages_import_without_cycles():
    assert find_cycle(package_imports()) is None


def test_production_packages_never_import_the_tiny_models_training():
    graph = package_imports()
    assert {p for p in PRODUCTION if "tiny" in graph[p]} == set()
