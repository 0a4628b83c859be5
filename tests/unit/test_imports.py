"""The package's import structure: no cycles, and a lean path that stays lean.

Read from the source with ``ast`` (every import, at module level or inside a function,
except under ``if TYPE_CHECKING:``), so an import hidden in a function counts as much
as one at the top: both run sooner or later.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

import migrate_lock

pytestmark = pytest.mark.unit

PACKAGE = "migrate_lock"
ROOT = Path(migrate_lock.__file__).parent
#: What the at-head path must never load: each costs tenths of a CPU-second per replica.
HEAVY = ("psycopg", "sqlalchemy", "alembic", "pydantic", "pydantic_settings", "click", "tenacity")
LEAN = f"{PACKAGE}.lean"
#: The light modules outside lean/ that the at-head path may use (and their packages).
LIGHT = frozenset(
    f"{PACKAGE}{suffix}"
    for suffix in (
        "",
        ".errors",
        ".logs",
        ".lock",
        ".scope",
        ".dsn",
        ".guard",
        ".version_table",
        ".seeds",
        ".seeds.files",
        ".outcome",
        ".state",
        ".then",
    )
)


def test_no_import_cycle_in_the_package() -> None:
    """Why: a cycle means two modules can only be understood (and imported) together."""
    internal = {name: [t for t in targets if t in _modules()] for name, targets in _graph().items()}
    cycles = _cycles(internal)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_lean_closure_reaches_no_heavy_package() -> None:
    """Why: the at-head path is the one every replica runs; its promise is its imports."""
    reached = _closure(_lean_modules())
    found = [
        f"{external}: " + " -> ".join(chain)
        for external, chain in reached.items()
        if external in HEAVY
    ]
    assert not found, "migrate_lock.lean reaches:\n" + "\n".join(found)


def test_the_lean_closure_is_standard_library_only() -> None:
    """Why: the lean package is sealed: standard library and libpq (through ctypes) only."""
    reached = _closure(_lean_modules())
    found = [
        f"{external}: " + " -> ".join(chain)
        for external, chain in reached.items()
        if external not in sys.stdlib_module_names
    ]
    assert not found, "migrate_lock.lean reaches non-standard modules:\n" + "\n".join(found)


def test_the_lean_closure_stays_among_the_light_modules() -> None:
    """Why: a light module that starts importing a heavy one breaks the at-head path; the
    list of what lean/ may use is short on purpose, so that growing it is a decision."""
    chains = _internal_closure(_lean_modules())
    outside = [
        " -> ".join(chain)
        for name, chain in sorted(chains.items())
        if name not in LIGHT and not (name == LEAN or name.startswith(LEAN + "."))
    ]
    assert not outside, "migrate_lock.lean reaches modules outside LIGHT:\n" + "\n".join(outside)


def test_importing_the_fast_path_loads_no_heavy_package() -> None:
    """Why: the static graph could miss a dynamic import; a real interpreter cannot."""
    code = (
        "import sys\n"
        "import migrate_lock.lean.fastpath\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_graph_sees_function_level_imports() -> None:
    """Why: the checks above are only as good as the graph; it must see hidden imports."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import psycopg\n"
        "def f():\n    import sqlalchemy\n    from migrate_lock import lean\n"
    )
    found = set(_imports_in(ast.parse(source), f"{PACKAGE}.x", is_package=False))
    assert found == {"typing", "typing.TYPE_CHECKING", "sqlalchemy", PACKAGE, LEAN}


def test_a_cycle_is_reported_as_a_path() -> None:
    """Why: a failure should name the modules to untangle, in import order."""
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["a"]}
    assert _cycles(graph) == [["a", "b", "c", "a"]]


# --- the graph ---------------------------------------------------------------------------


@cache
def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (the project template excluded)."""
    found = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT.parent).with_suffix("")
        if "alembic_template" in relative.parts:
            continue
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        found[".".join(parts)] = path
    return found


@cache
def _graph() -> dict[str, frozenset[str]]:
    """Module → the modules it imports (internal dotted names, external top-level names)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        targets: set[str] = set()
        for target in _imports_in(tree, name, is_package=path.name == "__init__.py"):
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                # Importing a.b.c runs a/__init__ and a/b/__init__ too.
                parts = target.split(".")
                targets.update(
                    ".".join(parts[:i])
                    for i in range(1, len(parts) + 1)
                    if ".".join(parts[:i]) in modules
                )
            else:
                targets.add(target.split(".")[0])
        targets.discard(name)
        graph[name] = frozenset(targets)
    return graph


def _imports_in(tree: ast.Module, module: str, *, is_package: bool) -> Iterator[str]:
    """Dotted names imported anywhere in ``tree`` except under ``if TYPE_CHECKING:``."""
    for node in _walk_outside_type_checking(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package=is_package)
            yield base
            # ``from pkg import name``: name may be a submodule.
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def _walk_outside_type_checking(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _walk_outside_type_checking(other)
            continue
        yield child
        yield from _walk_outside_type_checking(child)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(node: ast.ImportFrom, module: str, *, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(name: str) -> None:  # Tarjan's algorithm
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for target in graph[name]:
            if target not in index:
                connect(target)
                low[name] = min(low[name], low[target])
            elif target in on_stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == name:
                    break
            if len(component) > 1:
                components.append(component)

    for name in sorted(graph):
        if name not in index:
            connect(name)
    return [_a_cycle_in(sorted(component), graph) for component in components]


def _a_cycle_in(component: list[str], graph: dict[str, list[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for name in frontier:
            for target in sorted(graph[name]):
                if target == start:
                    path = [name]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if target in members and target not in previous:
                    previous[target] = name
                    following.append(target)
        frontier = following
    return component


def _lean_modules() -> list[str]:
    return sorted(name for name in _modules() if name == LEAN or name.startswith(LEAN + "."))


def _closure(starts: list[str]) -> dict[str, list[str]]:
    """External top-level modules reachable from ``starts``, each with one import chain."""
    graph = _graph()
    chains = _internal_closure(starts)
    external: dict[str, list[str]] = {}
    for name, chain in sorted(chains.items(), key=lambda item: len(item[1])):
        for target in sorted(graph[name]):
            if target not in graph and target not in external:
                external[target] = [*chain, target]
    return external


def _internal_closure(starts: list[str]) -> dict[str, list[str]]:
    """The package's modules reachable from ``starts``, each with a shortest import chain."""
    graph = _graph()
    chains: dict[str, list[str]] = {name: [name] for name in starts}
    frontier = list(starts)
    while frontier:
        following = []
        for name in frontier:
            for target in sorted(graph[name]):
                if target in graph and target not in chains:
                    chains[target] = [*chains[name], target]
                    following.append(target)
        frontier = following
    return chains
