"""Fixtures shared by the test modules (where the shared real models live), the markers every test
gets by where it lives, and the Hypothesis profiles."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Handler bugs fail the tests with their own traceback instead of becoming a job's internal error
# (graphops.dependency.STRICT_ENV); subprocesses the tests start (the CLI, workers) inherit it.
os.environ.setdefault("ONNXPRUNE_STRICT_ANALYSIS", "1")
# Latency tables the tests measure (--latency-target caches them) stay out of the user's cache, and
# each xdist worker has its own: a table one worker measured must not turn another's miss into a hit.
# (Workers inherit the controller's environment, hence the marker variable.)
if "ONNXPRUNE_CACHE_DIR" not in os.environ or os.environ.get("ONNXPRUNE_TEST_CACHE_DIR_SET"):
    _worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    os.environ["ONNXPRUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix=f"onnxprune-test-cache-{_worker}-")
    os.environ["ONNXPRUNE_TEST_CACHE_DIR_SET"] = "1"

import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from tests.support.needs import SHARED_HINT, in_ci, shared_dir, unavailable  # noqa: E402 - after the environment is set

# Fixtures that test modules across folders use by name (a module never imports a conftest).
pytest_plugins = ["tests.support.job_sandbox", "tests.support.xdist_groups"]
# Module-scoped fixtures that cost nothing to set up again on another worker.
CHEAP_MODULE_FIXTURES = {"stages_in_the_job_process"}

# In-process torch runs on one thread (the oracle's onnxruntime sessions too, tests/support/oracle.py): the test
# models are small, so a second thread buys nothing, and beside the other xdist workers or on a loaded machine
# every parallel region waits for a descheduled sibling. Measured at load 10.6, -n 0: the feature-matching
# fine-tuning test (tests/roundtrip/test_feature_match.py) took 53 s on torch's default 2 threads, 7.5 s on 1.
# Jobs the tests start in processes of their own size their threads as in production (workers/job_threads.py).
torch.set_num_threads(1)


@pytest.fixture
def shared_models_dir() -> Path:
    """``../shared/models`` (or ``$ONNXPRUNE_SHARED/models``); skipped locally, failed in CI, where absent."""
    models = shared_dir() / "models"
    if not models.is_dir():
        unavailable(f"real models not found at {models}; {SHARED_HINT}")
    return models


# Hypothesis: "ci" replays the same examples every run (a red CI is reproducible, never a lucky draw),
# keeps no example database (no .hypothesis/ shared by parallel workers) and has no per-example
# deadline (a loaded machine is not a bug). "dev" explores new examples each run. Tests that name
# max_examples keep it; HYPOTHESIS_PROFILE=dev|ci chooses (default: ci under CI=true).
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, max_examples=50, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if in_ci() else "dev"))

TESTS = Path(__file__).resolve().parent
# The kind of test a folder holds; a test with none of these markers is a unit test.
FOLDER_MARKERS = {
    "service": ("service", "integration"),
    "browser": ("browser", "integration"),
    "integration": ("integration",),
}
KINDS = {"integration", "service", "browser", "slow", "timing"}


# Modules run longest-first, so that on parallel workers the long ones do not start last.
FIRST = ("service", "browser", "slow", "integration")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks by folder (service, browser: integration too); slow tests are integration tests; the rest unit.

    For ``--dist loadgroup`` (pytest-xdist): the tests of a module that share a module-scoped fixture
    run on one worker (the fixture is then built once); any other test goes to whichever worker is free.
    Modules are ordered by their slowest kind (stable: the tests of a module keep their order)."""
    for item in items:
        folder = Path(item.path).resolve().relative_to(TESTS).parts[0]
        for name in FOLDER_MARKERS.get(folder, ()):
            item.add_marker(name)
        kinds = {mark.name for mark in item.iter_markers()} & KINDS
        if "slow" in kinds:
            item.add_marker("integration")
        elif not kinds:
            item.add_marker("unit")
        if _uses_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(str(Path(item.path).relative_to(TESTS))))

    def rank(item: pytest.Item) -> int:
        names = {mark.name for mark in item.iter_markers()}
        return next((i for i, kind in enumerate(FIRST) if kind in names), len(FIRST))

    module_rank: dict[Path, int] = {}
    for item in items:
        module_rank[item.path] = min(module_rank.get(item.path, len(FIRST)), rank(item))
    items.sort(key=lambda item: module_rank[item.path])
    items[:] = _service_tests_spread(items)


def _service_tests_spread(items: list[pytest.Item]) -> list[pytest.Item]:
    """``items`` with the service tests spread evenly, by expected time, through the first 85% of the others.

    A service test spends most of its time waiting on servers, sleeps and timeouts (a quiet run: 52 to 67%
    of the 2 cores busy while both workers ran them back to back, 99% otherwise), so beside it the other
    worker should be running a test that computes. The end of the run keeps the shortest tests, so that no
    long one starts last. (xdist hands out grouped modules first, largest first, whatever this order; it
    only orders the tests scheduled one by one.)"""
    waiting = [item for item in items if item.get_closest_marker("service")]
    computing = [item for item in items if not item.get_closest_marker("service")]
    if not waiting or not computing:
        return items
    waiting_total = sum(map(_expected_seconds, waiting))
    span = 0.85 * sum(map(_alone_seconds, computing))
    spread: list[pytest.Item] = []
    waited = computed = 0.0
    queue = iter(waiting)
    pending = next(queue, None)
    for item in computing:
        while pending is not None and waited / waiting_total <= computed / span:
            spread.append(pending)
            waited += _expected_seconds(pending)
            pending = next(queue, None)
        spread.append(item)
        computed += _alone_seconds(item)
    return spread + ([pending, *queue] if pending is not None else [])


def _alone_seconds(item: pytest.Item) -> float:
    """What a test adds to the tests scheduled one by one: nothing when it is in a group (sent first)."""
    return 0.0 if item.get_closest_marker("xdist_group") else _expected_seconds(item)


def _expected_seconds(item: pytest.Item) -> float:
    """About how long a test of this kind takes (the means of a quiet run on 2 cores, 2026-12-07)."""
    names = {mark.name for mark in item.iter_markers()}
    if "slow" in names:
        return 12.0 if "service" in names else 4.0
    if names & {"service", "integration", "browser"}:
        return 1.2
    return 0.1


def _uses_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        definition.scope in ("module", "class", "package")
        for name, definitions in info.name2fixturedefs.items()
        if name not in CHEAP_MODULE_FIXTURES
        for definition in definitions
    )
