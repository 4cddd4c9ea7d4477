"""The import graph: no cycles between modules, and layers that point one way.

Read from the source with `ast` (every import counts, also those inside functions or under
TYPE_CHECKING: a lazy import is still a dependency). The folders map to their installed names:
server/ -> ortserve.server, conversion/ -> ortserve.conversion, core/ -> ortserve.core.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"core": "ortserve.core", "conversion": "ortserve.conversion", "server": "ortserve.server"}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ours that `name` imports (a package import counts as its __init__)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            names = [f"{base}.{alias.name}" for alias in node.names]
            # `from package import submodule` imports the submodule; names that are not modules come from base
            targets = [n for n in names if n in known] + ([base] if any(n not in known for n in names) else [])
        for target in targets:
            while target and target not in known:  # `from a.b import c`: module a.b.c, else a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
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


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_the_graph_is_read(graph):
    # a guard against a reader that finds nothing (and so no cycles)
    assert "ortserve.server.errors" in graph["ortserve.server.app"]
    assert "ortserve.server.engine.generation" in graph["ortserve.server.engine.runner_client"]


def importers(graph: dict[str, set[str]], prefix: str, banned: tuple[str, ...]) -> list[str]:
    return sorted(f"{m} -> {t}" for m, ts in graph.items() if m.startswith(prefix) for t in ts if t.startswith(banned))


def test_core_is_below_both_halves(graph):
    assert importers(graph, "ortserve.core", ("ortserve.server", "ortserve.conversion")) == []


def test_conversion_does_not_import_the_server(graph):
    assert importers(graph, "ortserve.conversion", ("ortserve.server",)) == []


def test_the_protocol_layer_is_pure_data(graph):
    banned = (
        "ortserve.server.settings",
        "ortserve.server.modelfile",
        "ortserve.server.registry",
        "ortserve.server.serving",
        "ortserve.server.routes",
        "ortserve.server.app",
    )
    assert importers(graph, "ortserve.server.protocol", banned) == []


def test_the_registry_returns_domain_records(graph):
    assert importers(graph, "ortserve.server.registry", ("ortserve.server.protocol",)) == []
