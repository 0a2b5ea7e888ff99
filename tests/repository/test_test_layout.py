"""The suite mirrors the package and shares code through one place.

Test modules live in the folder of the layer they test (``tests/graphops/`` for ``graphops/``, ``tests/cli/`` for
``service/cli*.py``, ``tests/integration/`` for real models and end-to-end runs), never at the top of ``tests/``.
What several modules need (model builders, the oracle, service processes) lives in ``tests/support/``: a test
module that imports another test module (or a conftest) couples two specifications, and moving one breaks the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports, as dotted names (``from tests import zoo`` gives ``tests.zoo``)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative: a sibling module
            names.append("." * node.level + (node.module or ""))
    return names


def outside_support(name: str) -> bool:
    """Whether an import reaches into the suite somewhere other than ``tests.support``."""
    if name.startswith("."):
        return True
    parts = name.split(".")
    if parts[0] in {"conftest"} or parts[0].startswith("test_"):
        return True  # a module found through a folder put on sys.path
    return parts[0] == "tests" and len(parts) > 1 and parts[1] != "support"


def test_no_test_module_or_helper_imports_a_test_module_or_conftest():
    offenders = {
        str(path.relative_to(TESTS)): bad
        for path in sorted(TESTS.rglob("*.py"))
        if (bad := [name for name in imported_modules(path) if outside_support(name)])
    }

    assert offenders == {}, "import shared code from tests.support, not from another test module"


def test_every_test_module_lives_in_the_folder_of_what_it_tests():
    flat = sorted(path.name for path in TESTS.glob("test_*.py"))

    assert flat == [], "move these into tests/<layer>/ (see tests/repository/test_test_layout.py)"


def test_every_test_folder_is_a_package():
    """Without ``__init__.py`` pytest puts the folder on sys.path and its modules become importable by bare
    name (``from svc_models import ...``), which is how test modules came to import each other."""
    folders = {path.parent for path in TESTS.rglob("*.py") if "__pycache__" not in path.parts}

    assert sorted(str(f.relative_to(TESTS)) for f in folders if not (f / "__init__.py").is_file()) == []


def test_the_import_check_finds_what_it_forbids(tmp_path: Path):
    module = tmp_path / "test_example.py"
    module.write_text(
        "from tests.graphops import test_selection\nfrom tests.support import zoo\nimport conftest\n"
        "from .test_other import helper\nfrom tests.roundtrip.conftest import samples\n"
    )

    assert [name for name in imported_modules(module) if outside_support(name)] == [
        "tests.graphops.test_selection",
        "conftest",
        ".test_other",
        "tests.roundtrip.conftest.samples",
    ]
