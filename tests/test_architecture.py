"""The package's layering: no import cycle between its modules, one helper per job."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "mri_anomaly"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, imports inside functions included.

    ``from pkg import name`` depends on ``pkg.name`` when that is a module, else on ``pkg`` itself. The import
    of a parent package that Python performs before a submodule is not an edge (a package facade that re-exports
    lazily would otherwise close a cycle with every module below it); the compiled ``_C`` is not a module here.
    """
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(kept + ([base] if base else []))
                for alias in node.names:
                    if alias.name == "_C":
                        continue
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in modules else base)
            for target in targets:
                while target and target not in modules:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_import_graph_has_no_cycle():
    graph = import_graph()
    assert (
        "mri_anomaly.runs" in graph["mri_anomaly.scoring.runner"]
    )  # the graph sees function-level imports too
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_scoring_does_not_depend_on_the_trainer():
    graph = import_graph()
    reachable, todo = (
        set(),
        ["mri_anomaly.scoring.runner", "mri_anomaly.runs", "mri_anomaly.export", "mri_anomaly.bundle"],
    )
    while todo:
        node = todo.pop()
        if node not in reachable:
            reachable.add(node)
            todo += graph[node]
    assert "mri_anomaly.training.trainer" not in reachable


def test_one_atomic_write_and_one_json_rule():
    """Output files are replaced through mri_anomaly.files only; JSON is made safe by one function."""
    offenders = []
    for name, path in _modules().items():
        if name == "mri_anomaly.files":
            continue
        text = path.read_text()
        if "os.replace(" in text or re.search(r"def _?jsonable\(", text):
            offenders.append(name)
    assert offenders == []
