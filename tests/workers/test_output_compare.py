"""Outputs of every kind are compared by what they hold: tensors and maps/sequences by value,
string labels not at all (they never fail a check).

    ZipMap classifier: input -> conv (8) -> relu -> conv (6) -> relu -> GAP -> Gemm (3) -> Softmax
                       -> ZipMap (seq(map(string, float)) 'scores') and ArgMax -> LabelEncoder ('label')
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from onnxprune.workers.benchmark import compare_outputs
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.output_compare import FLOAT16_RTOL, FLOAT32_RTOL, oracle_rtol, output_mismatch
from onnxprune.workers.pipeline import run_pipeline
from tests.support.small_models import zipmap_classifier

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")


def test_a_model_with_string_and_zipmap_outputs_prunes_and_passes_the_oracle(tmp_path):
    path = tmp_path / "zipmap.onnx"
    onnx.save(zipmap_classifier(), path)

    result = run_pipeline(path, tmp_path / "out.onnx", PruneOptions(ratio=0.5, benchmark_runs=2, round_to=1))

    pruned = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(pruned, full_check=True)
    assert pruned.graph.output[1].type.HasField("sequence_type")  # still seq(map(string, float))
    assert result.report.macs.after < result.report.macs.before
    assert set(result.report.fidelity.outputs) == {"scores"}  # compared by value; the label is not
    # The classes reach the string label and the map only through the Gemm: no channel group is lost.
    assert result.report.groups and all(g.channels_after < g.channels_before for g in result.report.groups)


def test_map_outputs_are_compared_by_value_and_keys():
    reference = [{"cat": 0.5, "dog": 0.25, "bird": 0.25}]

    assert output_mismatch("scores", reference, [{"cat": 0.5, "dog": 0.25, "bird": 0.25}], FLOAT32_RTOL) is None
    assert "deviates" in output_mismatch("scores", reference, [{"cat": 0.4, "dog": 0.35, "bird": 0.25}], FLOAT32_RTOL)
    assert "expected" in output_mismatch("scores", reference, [{"cat": 0.5, "dog": 0.5}], FLOAT32_RTOL)


def test_string_outputs_never_fail_a_comparison():
    labels = np.array(["cat"], dtype=object)

    assert output_mismatch("label", labels, np.array(["dog"], dtype=object), FLOAT32_RTOL) is None
    fidelity = compare_outputs(
        {"label": labels, "p": np.ones(3)}, {"label": np.array(["dog"], dtype=object), "p": np.ones(3)}
    )
    assert set(fidelity.outputs) == {"p"} and fidelity.max_abs_diff == 0.0


def test_the_oracle_tolerance_follows_the_models_precision():
    model = zipmap_classifier()
    assert oracle_rtol(model) == FLOAT32_RTOL

    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    assert oracle_rtol(model) == FLOAT16_RTOL
