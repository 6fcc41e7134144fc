"""The package reads bottom-up: no module imports a layer above its own, and no import cycles.

Every ``tasksim_ray`` import counts, including the lazy ones inside functions, since a lazy import
still makes the lower module depend on the upper one."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PKG = Path(__file__).resolve().parents[1] / "tasksim_ray"
# bottom to top; a module may import its own layer and the ones before it
LAYERS = ["errors", "registry", "papers", "config", "infra", "data", "featurize", "models", "training", "embedding",
          "similarity", "stages", "transfer", "search", "cli"]


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tasksim_ray"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tasksim_ray")}
    return found


def _graph() -> nx.DiGraph:
    modules = {_module(p): p for p in PKG.rglob("*.py")}
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        for target in _imports(path):
            if target in modules and target != name and not name.startswith(target + "."):
                graph.add_edge(name, target)
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else -1  # the package root (__version__) is below all


def test_every_module_has_a_layer():
    assert {m.split(".")[1] for m in _graph() if "." in m} <= set(LAYERS)


def test_no_import_runs_up_a_layer():
    upward = [f"{a} -> {b}" for a, b in _graph().edges if _layer(b) > _layer(a)]
    assert upward == []


def test_no_import_cycles():
    assert list(nx.simple_cycles(_graph())) == []
