"""The import order is one-way: onnxprune/*.py -> service -> jobs -> workers -> roundtrip -> graphops, with no
module cycles. ``onnxprune/*.py`` (the package's own modules: the library API, ``__main__``) is the top layer.

Imports are read from the source (ast). For layering, function-level imports count too: a lazy import
is still a dependency, and a lazy upward import is how layering quietly erodes. For cycles, only
module-level imports count: those are the ones that run at import time and can break it (a registry
that imports its plug-ins inside a function is not an import cycle).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYERS = ["graphops", "roundtrip", "workers", "jobs", "service"]  # each may import only those before it
TOP = "onnxprune"  # onnxprune/*.py: above every layer (the library API imports the workers)


def module_name(path: Path) -> str:
    """Installed as ``onnxprune.<layer>...`` (``onnxprune/<layer>`` links to the top-level folder)."""
    relative = path.relative_to(REPO).with_suffix("").parts
    parts = list(relative) if relative[0] == TOP else [TOP, *relative]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    layers = {module_name(p): p for layer in LAYERS for p in sorted((REPO / layer).rglob("*.py"))}
    top = {module_name(p): p for p in sorted((REPO / TOP).glob("*.py"))}  # not the layer links inside it
    return {**layers, **top}


def _module_level(tree: ast.Module):
    """Import statements that run at import time: the module body and its if/try blocks, not functions
    (nor ``if TYPE_CHECKING:`` blocks, which only the type checker reads)."""
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.If) and ast.unparse(node.test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}:
            pending.extend(node.orelse)
        elif isinstance(node, (ast.If, ast.Try)):
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
    """The index in LAYERS; the package's own modules (``onnxprune.api``) rank above all.

    The package ``onnxprune`` itself ranks below all: importing any module runs it first, so it
    imports nothing at import time (its API is loaded on first use) and any layer may read
    ``onnxprune.__version__``."""
    parts = module.split(".")
    if module == TOP:
        return -1
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


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
        if module != TOP  # its one import, the API on first use, is checked below
        for target in targets
        if layer_of(target) > layer_of(module)
    )
    assert upward == []


def test_the_top_level_modules_are_checked_as_the_top_layer():
    modules = project_modules()
    assert {"onnxprune", "onnxprune.api", "onnxprune.__main__"} <= set(modules)
    assert layer_of("onnxprune.api") > layer_of("onnxprune.service.cli") > layer_of("onnxprune")
    assert "onnxprune.workers.options" in import_graph()["onnxprune.api"]


def test_the_top_level_package_imports_nothing_at_import_time():
    """``onnxprune/__init__.py`` loads its API on first use (PEP 562): importing a layer runs it first."""
    assert import_graph(module_level_only=True)["onnxprune"] == set()
    assert import_graph()["onnxprune"] == {"onnxprune.api"}


LOADED_BY = """
import json, sys
import {module}
print(json.dumps(sorted(sys.modules)))
"""


def modules_loaded_by(module: str) -> set[str]:
    """What a fresh interpreter has in ``sys.modules`` after importing ``module`` (nothing else ran)."""
    done = subprocess.run(
        [sys.executable, "-c", LOADED_BY.format(module=module)], capture_output=True, text=True, check=True, cwd=REPO
    )
    return set(json.loads(done.stdout))


def test_importing_the_graph_library_loads_no_worker_service_or_torch_module():
    for module in ("onnxprune", "onnxprune.graphops", "onnxprune.graphops.plan"):
        loaded = modules_loaded_by(module)
        heavy = sorted(
            name
            for name in loaded
            if name.split(".")[0] in {"torch", "fastapi", "celery", "redis"}
            or name.split(".")[:2] in (["onnxprune", layer] for layer in ("workers", "jobs", "service", "roundtrip"))
            or name == "onnxprune.api"
        )
        assert module in loaded and heavy == [], module


def test_the_api_is_loaded_on_first_use():
    import onnxprune

    assert onnxprune.prune.__module__ == "onnxprune.api" and "prune" in dir(onnxprune)
    try:
        onnxprune.no_such_name  # noqa: B018 - the attribute access is the test
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown attribute must raise AttributeError")


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
