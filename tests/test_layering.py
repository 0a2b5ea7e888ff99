"""The import order is one-way: service -> jobs -> workers -> roundtrip -> graphops, with no module cycles.

Imports are read from the source (ast). For layering, function-level imports count too: a lazy import
is still a dependency, and a lazy upward import is how layering quietly erodes. For cycles, only
module-level imports count: those are the ones that run at import time and can break it (a registry
that imports its plug-ins inside a function is not an import cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["graphops", "roundtrip", "workers", "jobs", "service"]  # each may import only those before it


def module_name(path: Path) -> str:
    """Installed as ``onnxprune.<layer>...`` (``onnxprune/<layer>`` links to the top-level folder)."""
    parts = ["onnxprune", *path.relative_to(REPO).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for layer in LAYERS for p in sorted((REPO / layer).rglob("*.py"))}


def _module_level(tree: ast.Module):
    """Import statements that run at import time: the module body and its if/try blocks, not functions."""
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            pending.extend(node.body + node.orelse + getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                pending.extend(handler.body)


def imported_modules(name: str, path: Path, known: set[str], *, module_level_only: bool = False) -> set[str]:
    """Project modules that ``name`` imports (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _module_level(tree) if module_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(*, module_level_only: bool = False) -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {
        name: imported_modules(name, path, known, module_level_only=module_level_only) for name, path in modules.items()
    }


def layer_of(module: str) -> int:
    return LAYERS.index(module.split(".")[1])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path: list[str] = []
        stack = [(root, iter(sorted(graph[root])))]
        state[root] = 1
        path.append(root)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_no_package_imports_a_package_above_it():
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    )
    assert upward == []


def test_no_import_cycles_between_modules():
    assert find_cycle(import_graph(module_level_only=True)) is None


def test_the_checker_sees_upward_imports_and_cycles(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import onnxprune.graphops.a\nif True:\n    from onnxprune.service import b\n"
        "def f():\n    import onnxprune.jobs.c\n"
    )
    a, b, c = "onnxprune.graphops.a", "onnxprune.service.b", "onnxprune.jobs.c"
    known = {a, b, c}
    assert imported_modules("onnxprune.workers.m", source, known) == known
    assert imported_modules("onnxprune.workers.m", source, known, module_level_only=True) == {a, b}
    assert layer_of(b) > layer_of(a)
    assert find_cycle({a: {b}, b: {a}}) == [a, b, a]
    assert find_cycle({a: {"onnxprune.graphops.z"}, "onnxprune.graphops.z": set()}) is None


def test_nothing_imports_the_layers_by_their_bare_top_level_names():
    """Installed, they exist only as ``onnxprune.<layer>``; a bare ``import graphops`` would work in a
    checkout (the folders are on the path) and fail for users, or load a second copy of a module."""
    bare = sorted(
        f"{path.relative_to(REPO)}: {target}"
        for path in [*REPO.glob("*/**/*.py")]
        if ".venv" not in path.parts and "build" not in path.parts
        for target in imported_modules("onnxprune.x", path, set(LAYERS) | {f"{n}.x" for n in LAYERS})
        if target.split(".")[0] in LAYERS
    )
    assert bare == []
