"""The layers of docs/architecture.md, read from the code's own imports (no import is run).

Every `import` and `from ... import` counts, at the top of a module or inside a function: an
import deferred into a function still ties two modules together.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prefect_runcomfy"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> Iterator[str]:
    """The package's modules `path` imports (a `from pkg import name` of a submodule counts
    as importing that submodule)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in MODULES:
                    yield f"{node.module}.{alias.name}"
                elif node.module in MODULES:  # a name defined in that module
                    yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name in MODULES)


GRAPH = {name: set(_imports(path)) - {name} for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _folder(name: str) -> str:
    """The layer a module belongs to: `engine.<stage>` inside the engine, else its top part."""
    parts = name.split(".")[1:] or [""]
    if parts[0] == "engine" and len(parts) > 2:
        return ".".join(parts[:2])
    return parts[0]


def _edges_between_folders() -> dict[str, set[str]]:
    folders: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        # a package's __init__ importing its own children is not an edge between layers
        mine = folders.setdefault(_folder(name), set())
        mine.update(_folder(t) for t in targets if _folder(t) != _folder(name))
    return folders


def test_no_module_imports_itself_through_others() -> None:
    assert _cycles(GRAPH) == []


def test_no_two_folders_import_each_other() -> None:
    assert _cycles(_edges_between_folders()) == []


@pytest.mark.parametrize(
    ("layer", "must_not_reach"),
    [
        ("models", {"api", "engine", "report", "flows", "tasks", "blocks", "cli", "sandbox"}),
        ("api", {"engine", "report", "flows", "tasks", "blocks", "cli", "sandbox"}),
        ("engine", {"report", "flows", "tasks", "blocks", "cli", "sandbox"}),
        ("engine.record", {"engine.inputs", "engine.plan", "engine.run", "engine.outputs"}),
        ("report", {"flows", "tasks", "cli", "sandbox"}),
    ],
)
def test_layers_import_only_downwards(layer: str, must_not_reach: set[str]) -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if _folder(name) == layer or _folder(name).startswith(layer + ".")
        for target in targets
        if any(_folder(target) == w or _folder(target).startswith(w + ".") for w in must_not_reach)
    )
    assert wrong == []


def test_the_engine_and_the_reports_are_given_their_model() -> None:
    """Only `models.base` (the `ModelSpec` seam) reaches the engine and the reports: a
    concrete model is chosen by the face and handed down."""
    concrete = {n for n in MODULES if n.startswith("prefect_runcomfy.models")}
    concrete.discard("prefect_runcomfy.models.base")
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if _folder(name).split(".")[0] in {"engine", "report"}
        for target in targets & concrete
    )
    assert wrong == []


def test_the_graph_is_read() -> None:
    """Guards the tests above against reading nothing."""
    assert "prefect_runcomfy.engine.outputs.store" in GRAPH["prefect_runcomfy.engine.plan.ledger"]
    assert len(MODULES) > 50
