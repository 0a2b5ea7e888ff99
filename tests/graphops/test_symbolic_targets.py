"""Models with symbolic sizes prune with every target, at the probe's size (graphops.input_shapes).

The model is a DB text detector as paddle2onnx exports PP-OCR det: a -1 batch and symbolic height
and width, FPN upsampling (Resize nearest) with Adds, a Concat of four upsampled scales, and a
head of two ConvTransposes ending in a Sigmoid. Two faults hid here: the pruned model's recorded
intermediate shapes (inferred at the -1 batch: ``[-1, C, 'unk__0', ...]``) won over the probe's
size when its MACs were counted; and a probability map saturated on random inputs (largest value
~1e-5) failed the oracle on onnxruntime's own Sigmoid rounding, though the surgery was right.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.output_compare import FLOAT32_ATOL
from tests.support import zoo
from tests.support.oracle import analyse, assert_prune_matches_oracle

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")

# The head's ConvTransposes ([C_in, C_out, 2, 2]) and the Concat of the four upsampled scales prune.
DB_PRUNED_GROUPS = {"conv_65", "conv_63", "conv_61", "conv_59", "conv_74", "convtranspose_83"}


@pytest.mark.parametrize("head_bias", [0.0, -12.0], ids=["live-map", "saturated-map"])
def test_db_text_detector_pruned_at_ratio_0_3_satisfies_the_oracle(head_bias: float):
    model = zoo.db_text_detector(width=8, head_bias=head_bias)
    analysed = analyse(model)
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.3)

    assert analysed.input_shapes == {"x": [1, 3, 224, 224]}  # probed: the model fixes no size
    assert DB_PRUNED_GROUPS <= {gid for gid, keep in plan.keep.items() if len(keep) < plan.groups[gid].channels}
    pruned = assert_prune_matches_oracle(model, plan, analysed=analysed, atol=FLOAT32_ATOL).pruned
    image = pruned.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in image] == [-1, 3, "h", "w"]  # the interface stays symbolic


def test_db_upsampling_to_sizes_computed_at_run_time_freezes_with_a_reason():
    model = zoo.db_text_detector(width=8, sizes_from_shape=True)
    analysed = analyse(model)
    frozen = {group.id: group.frozen_reason for group in analysed.dep.frozen}

    assert "sizes computed at run time" in frozen["conv_48"]
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.3)
    assert plan.removed_channels > 0
    assert_prune_matches_oracle(model, plan, analysed=analysed, atol=FLOAT32_ATOL)


# session, not module: cheap to build, and a module-scoped fixture puts every test of the module on one
# xdist worker (tests/conftest.py), where these long tests would queue behind each other.
@pytest.fixture(scope="session")
def db_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("db") / "db_det.onnx"
    onnx.save(zoo.db_text_detector(width=8, head_bias=-12.0), path)
    return path


TARGETS = [
    pytest.param(PruneOptions(ratio=0.3, round_to=1), id="ratio"),
    pytest.param(PruneOptions(flops_target=0.5, round_to=1, benchmark_runs=5), id="flops-target"),
    pytest.param(
        PruneOptions(latency_target=0.6, latency_budget_s=2.0, latency_iterations=1, benchmark_runs=5, round_to=1),
        id="latency-target",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("options", TARGETS)
def test_every_target_prunes_a_model_with_symbolic_sizes(db_path: Path, tmp_path: Path, options: PruneOptions):
    from onnxprune.workers.pipeline import run_pipeline

    report = run_pipeline(db_path, tmp_path / "pruned.onnx", options).report  # oracle-checked

    assert report.input_shapes == {"x": [1, 3, 224, 224]}
    assert report.macs.after < report.macs.before
    if options.flops_target is not None:
        assert report.macs.after <= report.macs.before * (1 - options.flops_target + 0.05)
    if options.latency_target is not None:
        assert report.latency_target is not None and report.latency_target.iterations


@pytest.mark.slow
def test_sensitivity_sweeps_a_model_with_symbolic_sizes(db_path: Path, tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "onnxprune.service.cli", "sensitivity", str(db_path), "--synthetic", "2",
         "--ratios", "0.5", "--workers", "1", "--json", "curves.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-2000:]
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert DB_PRUNED_GROUPS <= {curve["group"] for curve in curves["curves"]}
