"""No import cycle inside ``dermtrl``: lower layers never import upper ones (issue 13).

Every module of the package is parsed with :mod:`ast` (nothing is imported), and every ``import`` counts: at
module level, inside functions and methods, under ``if TYPE_CHECKING:`` or ``try:``; relative imports are
resolved against the importing module. An import inside a function hides a cycle from Python but not from a
reader, so it counts the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "dermtrl"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a module of the package (``a.b.func`` -> ``a.b``)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """``{module: {package modules it imports}}``; ``from pkg import sub`` counts as importing ``pkg.sub`` when
    ``sub`` is a module, else ``pkg``. Only the imports written in a module count: the parent packages'
    ``__init__`` that Python runs on the way are modules of their own here, with their own edges."""
    modules = _modules() if modules is None else modules
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{alias.name}" for alias in node.names]
            for target in targets:
                if not target.startswith("dermtrl"):
                    continue
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    edges.add(resolved)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module, each as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan; the package is small enough for recursion
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_through(sorted(c), graph) for c in components]


def _cycle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete cycle inside a strongly connected component, starting and ending at its first module."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth-first back to start
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return component


def test_finder_sees_cycles_through_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "dermtrl"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "top.py").write_text("def f():\n    from dermtrl.sub.low import g\n")
    (pkg / "sub" / "low.py").write_text("def g():\n    from ..top import f\n")
    (pkg / "sub" / "other.py").write_text("from . import low\n")
    modules = {_module_name_in(p, tmp_path): p for p in pkg.rglob("*.py")}
    graph = import_graph(modules)
    assert graph["dermtrl.sub.other"] == {"dermtrl.sub.low"}
    assert find_cycles(graph) == [["dermtrl.sub.low", "dermtrl.top", "dermtrl.sub.low"]]


def _module_name_in(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycles_in_dermtrl():
    graph = import_graph()
    assert len(graph) > 30, "the package was not found"
    cycles = find_cycles(graph)
    assert not cycles, "import cycles inside dermtrl (module-level or in functions):\n" + "\n".join(
        "  " + " -> ".join(c) for c in cycles)
