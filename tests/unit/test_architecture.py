"""The package's shape, checked from its source (ast): imports run one way, modules stay small,
protocols are complete (no probing of a detector with getattr, no dispatch on a class name)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "edgedet"
MAX_LINES = 600
APP_MAX_LINES = 150


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imported_modules(name: str, tree: ast.AST) -> Iterator[str]:
    """The edgedet modules ``name`` imports anywhere in its body (module level and inside functions).

    ``from edgedet.x import y`` names the submodule ``edgedet.x.y`` when there is one, else ``edgedet.x``.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package(name) else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target not in MODULES:
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            yield from subs
            if len(subs) < len(node.names):
                yield target


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = {dep for dep in imported_modules(name, tree) if dep != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative DFS, white/grey/black)."""
    state: dict[str, int] = {}
    for root in sorted(graph):
        if state.get(root):
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"b2", "c"}, "b2": set(), "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_find_cycle_reports_the_cycle(graph: dict[str, set[str]], expected: list[str] | None) -> None:
    assert find_cycle(graph) == expected


def test_the_graph_sees_function_level_and_from_imports() -> None:
    tree = ast.parse("import edgedet.types\ndef f():\n    from edgedet.model import base, load_detector\n")
    assert sorted(imported_modules("edgedet.app", tree)) == ["edgedet.model", "edgedet.model.base", "edgedet.types"]


def test_module_sizes() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    too_big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_big, f"modules over {MAX_LINES} lines (each is doing two jobs): {too_big}"
    assert sizes["edgedet.app"] <= APP_MAX_LINES, f"app.py has {sizes['edgedet.app']} lines"


def _probes(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args:
            target = ast.unparse(node.args[0])
            if "detector" in target.lower():
                yield f"line {node.lineno}: getattr({target}, ...)"
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                if (isinstance(side, ast.Attribute) and side.attr == "__name__" and isinstance(side.value, ast.Call)
                        and isinstance(side.value.func, ast.Name) and side.value.func.id == "type"):
                    yield f"line {node.lineno}: dispatch on {ast.unparse(side)}"


def test_no_protocol_probing_or_class_name_dispatch() -> None:
    found = {}
    for name, path in MODULES.items():
        hits = list(_probes(ast.parse(path.read_text(encoding="utf-8"))))
        if hits:
            found[name] = hits
    assert not found, found


def test_the_probe_check_catches_both_forms() -> None:
    code = "x = getattr(detector, 'input_layout', 'nchw')\nif type(d).__name__ == 'TorchScriptDetector': pass\n"
    assert len(list(_probes(ast.parse(code)))) == 2
