"""Pipeline tests run their stages as a job runs them: in one process, the job's sandbox.

A job (the CLI's ``prune``, the Python API, the service) runs ``run_pipeline`` whole in one sandboxed
child (``workers.job_process``), where ``run_in_child`` runs each stage right there. A test that calls
``run_pipeline`` in the pytest process would instead start a fresh interpreter for every stage (the path
of one-off calls such as ``onnxprune bench``): dozens per pipeline, most of such a test's time (measured:
tests/roundtrip/test_held_out_split.py 40 s -> 8 s), and not the path a job takes. Modules that test the
pipeline's logic on benign models use the fixture below (``pytestmark``); the sandbox itself (crashes,
limits, results sent back as plain data) keeps its tests on real children (tests/workers/test_benchmark.py,
test_ort_models.py, test_hostile_bounds.py, test_job_process.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from onnxprune.workers import sandbox


# Module scope, so that the module's own module-scoped fixtures (a pipeline run shared by several tests)
# run this way too; tests/conftest.py does not count it as a reason to keep a module on one xdist worker.
@pytest.fixture(scope="module")
def stages_in_the_job_process() -> Iterator[None]:
    """This process stands in for the job's sandbox (its limits are job_process's, tested there)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sandbox, "_inside_sandbox", True)
        yield
