"""The rooms import each other in one direction: no import cycle, not even through a lazy import.

A lazy import (inside a function, or through importlib) hides a cycle from Python at import time but not
from the reader: ``models/weights.py`` once reached ``tracking/models.py`` that way, which imported
``models/`` back. Every import in the package is read here (with ``ast``) and the graph must be a DAG.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medvision

ROOT = Path(medvision.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(str(node.args[0].value))
    return {name for name in found if name in known}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle() -> None:
    known = _modules()
    graph = {name: _imports(path, known) - {name} for name, path in known.items()}
    assert len(graph) > 50 and graph["medvision.engine.tasks"] >= {"medvision.engine.loop"}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_models_room_never_reaches_mlflow_or_the_tracking_room() -> None:
    known = _modules()
    for name, path in known.items():
        if name.startswith("medvision.models"):
            assert not {i for i in _imports(path, known) if i.startswith("medvision.tracking")}, name
            assert "import mlflow" not in path.read_text() and "from mlflow" not in path.read_text(), name


def test_the_readme_names_every_module_of_the_engine_and_the_report() -> None:
    """The README's "What is here" table is the map a newcomer reads: it names each module of these rooms."""
    readme = (ROOT.parent / "README.md").read_text()
    table = readme[readme.index("## What is here") : readme.index("## The command line")]
    for room in ("engine", "reporting"):
        row = next(line for line in table.splitlines() if line.startswith(f"| `medvision/{room}`"))
        for path in sorted((ROOT / room).glob("*.py")):
            if not path.name.startswith("_"):
                assert f"`{path.name}`" in row, f"README What is here: medvision/{room}/{path.name} is not named"
