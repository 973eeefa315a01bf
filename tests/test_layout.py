"""The package's shape: dependencies run one way, and every file stays readable.

Read from the source (the AST), not from what an import happens to load, so
that an import made only for type hints (``if TYPE_CHECKING:``) or inside a
function counts as much as any other: a circle of them is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parent.parent / "greylist"
MOST_LINES = 420  # "no file over ~400 lines"


def _modules() -> Dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imported(module: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The package's modules that ``module`` imports anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    wanted: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            wanted.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                source = base + ("." + node.module if node.module else "")
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:  # a submodule: an edge to it, not its package
                    wanted.add(f"{source}.{alias.name}")
                elif source in modules:
                    wanted.add(source)
    wanted.discard(module)
    return wanted


def _circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, without recursion)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    groups: List[List[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph[step]))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_no_import_circle_in_the_package_type_hints_included():
    modules = _modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 40 and graph["greylist.filter"]  # the reader finds the imports
    assert _circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_file_is_over_about_400_lines():
    long = {str(path.relative_to(PACKAGE.parent)): lines
            for path in PACKAGE.rglob("*.py")
            if (lines := len(path.read_text().splitlines())) > MOST_LINES}
    assert long == {}


def test_the_pure_rooms_load_no_store_metrics_or_filter():
    """A fold's copying child and every command import these; they must stay light."""
    import subprocess
    import sys

    for light in ("greylist.triplet", "greylist.policy"):
        loaded = subprocess.run(
            [sys.executable, "-c", f"import sys, {light}; print(' '.join(sorted(sys.modules)))"],
            capture_output=True, text=True, check=True).stdout.split()
        heavy = [name for name in loaded
                 if name.startswith(("greylist.stores", "greylist.metrics", "greylist.filter"))]
        assert heavy == [], light
