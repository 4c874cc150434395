"""The import graph of the ``simpletir`` package has no cycles.

Every module's top-level ``import simpletir...`` / ``from simpletir... import`` statements (and
relative ones) are edges; imports inside functions and under ``if TYPE_CHECKING:`` are not
(they run late or never). A cycle means two modules can only be understood, tested and imported
together, and that the order of first import decides which one sees the other half-initialised.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "simpletir"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _imports(tree: ast.Module, *, lazy: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements run when the module is imported (module body, try/if/with blocks);
    with ``lazy`` also those inside functions and classes. Never those under TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                    walk(block)
            elif isinstance(node, ast.With | ast.For | ast.While) or (lazy and isinstance(node, _SCOPES)):
                walk(node.body)

    walk(tree.body)
    return found


def import_graph(*, lazy: bool = False) -> dict[str, set[str]]:
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _imports(tree, lazy=lazy):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:  # relative: from .x import y / from . import y
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # 'from pkg import sub' imports the submodule pkg.sub when there is one
                targets = [
                    f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names
                ]
            for target in targets:
                while target and target not in modules:  # 'import a.b.c' of a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "simpletir.core.config" in graph["simpletir.core.config_load"]
    assert "simpletir.core.options" in graph["simpletir.core.config"]
    # relative imports resolve too
    assert "simpletir.plugins.tools.python_sandbox.config" in graph["simpletir.plugins.tools.python_sandbox"]


def test_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_simpletir_has_no_import_cycles() -> None:
    assert find_cycles(import_graph()) == []


def test_the_former_cycles_stay_broken_even_lazily() -> None:
    """config <-> specs, config_load <-> plugins and rollout.engine <-> its engines were cycles
    through imports inside functions; none of these modules is in a cycle of the lazy graph."""
    graph = import_graph(lazy=True)
    assert graph["simpletir.core.options"] == set()
    assert "simpletir.core.specs" not in graph["simpletir.core.config"]
    assert "simpletir.core.config_load" not in graph["simpletir.core.plugins"]
    assert "simpletir.core.plugins" not in graph["simpletir.core.config_load"]
    assert not graph["simpletir.core.rollout.engine"] & {
        "simpletir.core.rollout.hf_engine",
        "simpletir.core.rollout.vllm_engine",
    }
    watched = {
        "simpletir.core.config",
        "simpletir.core.specs",
        "simpletir.core.options",
        "simpletir.core.config_load",
        "simpletir.core.plugins",
        "simpletir.core.components",
        "simpletir.core.rollout.engine",
        "simpletir.core.rollout.factory",
        "simpletir.cli",
    }
    assert [cycle for cycle in find_cycles(graph) if watched & set(cycle)] == []
