"""The layering contract (docs/architecture.md): who may import whom, and no import cycles.

``psi`` is the cryptographic core and imports nothing of the services; ``protocols`` is the wire
contract over it; a department's code and a client's code share only ``nodes.shared``, so neither
side can come to depend on the other's state or secrets; the demo and the ``psi`` command line sit
on top of both.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("psi", "protocols", "nodes")

# Each layer and the layers it may import (its own included). The longest matching prefix rules.
ALLOWED: dict[str, tuple[str, ...]] = {
    "psi": ("psi",),
    "protocols": ("psi", "protocols"),
    "nodes": ("nodes",),  # the package's docstring only
    "nodes.shared": ("psi", "protocols", "nodes.shared"),
    "nodes.department": ("psi", "protocols", "nodes.shared", "nodes.department"),
    "nodes.client": ("psi", "protocols", "nodes.shared", "nodes.client"),
    "nodes.demo": (
        "psi",
        "protocols",
        "nodes.shared",
        "nodes.department",
        "nodes.client",
        "nodes.demo",
    ),
    "nodes.cli": ("psi", "protocols", "nodes"),
}


def _layer(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in ALLOWED:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} belongs to no layer: add it to ALLOWED")


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, anywhere in it (function bodies included)."""
    names = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                names.add(sub if sub in known else base)
    return {name for name in names if name.split(".")[0] in PACKAGES and name in known}


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = _modules(root)
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        allowed = ALLOWED[_layer(module)]
        for target in sorted(imported):
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                found.append(f"{module} imports {target}")
    return found


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
        for w in graph[v]:
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


def test_the_tree_keeps_the_layering():
    assert violations(import_graph(ROOT)) == []


def test_the_tree_has_no_import_cycles():
    assert cycles(import_graph(ROOT)) == []


def test_every_module_belongs_to_a_layer():
    for module in _modules(ROOT):
        _layer(module)


def test_a_forbidden_import_is_caught(tmp_path):
    """The contract fails when a department module reaches into the client side, the core
    into the services, or two modules import each other."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for side in ("department", "client", "shared"):
        (tmp_path / "nodes" / side).mkdir()
        (tmp_path / "nodes" / side / "__init__.py").write_text("")
    (tmp_path / "nodes/client/client.py").write_text("from nodes.shared import store\n")
    (tmp_path / "nodes/shared/store.py").write_text("import nodes.shared.cache\n")
    (tmp_path / "nodes/shared/cache.py").write_text("from nodes.shared.store import x\n")
    (tmp_path / "nodes/department/node.py").write_text(
        "def serve():\n    from nodes.client.client import Client\n"
    )
    (tmp_path / "psi/oprf.py").write_text("from nodes.department import node\n")
    graph = import_graph(tmp_path)
    assert violations(graph) == [
        "nodes.department.node imports nodes.client.client",
        "psi.oprf imports nodes.department.node",
    ]
    assert cycles(graph) == [["nodes.shared.cache", "nodes.shared.store"]]
