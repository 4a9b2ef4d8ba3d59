"""The package's import direction, checked from the source (nothing is imported).

``docs/architecture.md`` draws the parts of ``echoforge`` (each sub-package and each top-level
module) and which way the imports go. These tests keep that true: no two parts may import each
other, directly or round a longer loop, counting every import (module level, inside functions
and under ``TYPE_CHECKING`` alike); and no two modules import each other at run time (a module
that imports its own subclass back, say), ``TYPE_CHECKING`` imports for annotations aside.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "echoforge"

# Imports against the direction docs/architecture.md draws that are known and owned, each with what
# removes it. Nothing else may close a circle; an entry that is no longer needed fails the test below.
KNOWN_BACK_EDGES = {
    # engines/timing.py (word timings, issue 27) aligns with analysis.alignment, while analysis sits
    # above engines (params, memory use engines.base). Goes when the text alignment moves below engines.
    ("engines", "analysis"): "echoforge.engines.timing",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def _imports(path: Path, typing: bool = True) -> set[str]:
    """Every ``echoforge.*`` module ``path`` imports (``from echoforge import x`` counts as ``echoforge.x``);
    without ``typing``, those under ``if TYPE_CHECKING:`` are left out."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set() if typing else _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in found if name == "echoforge" or name.startswith("echoforge.")}


def _part(module: str) -> str | None:
    """The part a module belongs to: ``echoforge.csm.loader`` -> ``csm``, ``echoforge.audio`` -> ``audio``."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file():
        return parts[1]
    return None


def _modules(typing: bool = True) -> dict[str, set[str]]:
    return {_module_name(p): _imports(p, typing) for p in sorted(PACKAGE.rglob("*.py"))}


def part_graph() -> dict[str, dict[str, list[str]]]:
    """part -> {part it imports: [the modules that do]}."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, imported in _modules().items():
        src = _part(module)
        for name in imported:
            dst = _part(name)
            if src and dst and dst != src:
                graph[src][dst].append(module)
    return graph


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return components


def test_no_import_circle_between_parts():
    graph = part_graph()
    edges = {src: {dst for dst in dsts if (src, dst) not in KNOWN_BACK_EDGES} for src, dsts in graph.items()}
    circles = _cycles(edges)
    detail = [
        f"{' <-> '.join(c)}: "
        + "; ".join(f"{a} -> {b} in {sorted(set(graph[a][b]))[:3]}" for a in c for b in c if b in graph.get(a, {}))
        for c in circles
    ]
    assert not circles, "import circle between parts of echoforge (see docs/architecture.md):\n" + "\n".join(detail)


def test_known_back_edges_are_still_there_and_only_where_named():
    graph = part_graph()
    for (src, dst), module in KNOWN_BACK_EDGES.items():
        assert dst in graph.get(src, {}), f"{src} -> {dst} is gone: remove it from KNOWN_BACK_EDGES"
        assert set(graph[src][dst]) == {module}, f"{src} -> {dst} spread beyond {module}: {sorted(set(graph[src][dst]))}"


def test_no_import_circle_between_modules():
    modules = _modules(typing=False)
    edges = {m: {i for i in imported if i in modules and i != m} for m, imported in modules.items()}
    # A package's __init__ importing its own modules (and them importing a name it re-exports) is
    # how Python packages work, not a circle between two jobs.
    for m in edges:
        edges[m] = {i for i in edges[m] if not (m.startswith(i + ".") or i.startswith(m + "."))}
    circles = _cycles(edges)
    assert not circles, f"modules that import each other at run time: {circles}"


def test_the_checker_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
