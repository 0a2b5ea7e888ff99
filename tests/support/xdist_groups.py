"""``--dist loadgroup`` that works under pytest 9: tests marked ``xdist_group(name)`` run on one worker.

pytest-xdist 3.8 groups a test by appending ``@name`` to ``item._nodeid`` on the worker, and pytest 9 no
longer reads that attribute (a node's id is ``item._id``), so every test was scheduled on its own: a
module-scoped fixture was built on each worker that ran one of its tests, and again each time a worker
came back to the module (tests/workers/test_html_report_finetune.py built its fixture twice in a run of
that module alone on 2 workers). xdist offers no public way to pass a group to the controller, so each
worker writes the groups it collected to a folder the controller made, and the controller's scheduler
(xdist's own scope scheduler, public hook ``pytest_xdist_make_scheduler``) reads them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

GROUPS_DIR_ENV = "ONNXPRUNE_TEST_XDIST_GROUPS"


def _controls_workers(config: pytest.Config) -> bool:
    return "PYTEST_XDIST_WORKER" not in os.environ and config.getoption("dist", "no") == "loadgroup"


def pytest_configure(config: pytest.Config) -> None:
    """The controller makes the folder before it starts the workers, which inherit the variable (a nested
    pytest run gets a folder of its own)."""
    if _controls_workers(config) and config.getoption("numprocesses", None):
        os.environ[GROUPS_DIR_ENV] = tempfile.mkdtemp(prefix="onnxprune-xdist-groups-")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _controls_workers(config) and GROUPS_DIR_ENV in os.environ:
        shutil.rmtree(os.environ.pop(GROUPS_DIR_ENV), ignore_errors=True)


@pytest.hookimpl(trylast=True)  # after tests/conftest.py has marked the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    folder, worker = os.environ.get(GROUPS_DIR_ENV), os.environ.get("PYTEST_XDIST_WORKER")
    if not folder or not worker:
        return
    groups = {item.nodeid: group for item in items if (group := _group_of(item))}
    written = Path(folder) / f".{worker}.json"
    written.write_text(json.dumps(groups))
    written.replace(Path(folder) / f"{worker}.json")  # whole or absent: the controller never reads half


def _group_of(item: pytest.Item) -> str | None:
    names = {
        mark.args[0] if mark.args else mark.kwargs.get("name", "default") for mark in item.iter_markers("xdist_group")
    }
    return "_".join(sorted(map(str, names))) or None


class MarkedGroupScheduling(LoadScopeScheduling):
    """xdist's scope scheduling, where a test's scope is its group, or the test alone when it has none.
    Scopes are asked for once every worker has collected, so every worker's file is there by then."""

    def __init__(self, config: pytest.Config, log: object | None = None) -> None:
        super().__init__(config, log)  # type: ignore[arg-type]
        self._groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._groups is None:
            self._groups = {}
            for written in sorted(Path(os.environ[GROUPS_DIR_ENV]).glob("gw*.json")):
                self._groups.update(json.loads(written.read_text()))
        group = self._groups.get(nodeid)
        return f"group:{group}" if group else nodeid


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> LoadScopeScheduling | None:
    if config.getoption("dist", "no") != "loadgroup" or GROUPS_DIR_ENV not in os.environ:
        return None
    return MarkedGroupScheduling(config, log)
