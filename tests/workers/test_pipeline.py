"""The job pipeline: progress, atomic output, and the oracle guarding every result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxprune.workers.pipeline as pipeline
from onnxprune.workers.fileio import file_sha256
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import VerificationFailed, run_pipeline
from tests.support.small_models import residual_model

pytestmark = pytest.mark.integration  # the pipeline, the CLI or a sandbox, in processes of their own


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "residual.onnx"
    onnx.save(residual_model(), path)
    return path


def test_progress_walks_the_stages_asked_for_in_order_up_to_one(model_path, tmp_path):
    seen: list[tuple[str, float]] = []
    run_pipeline(
        model_path,
        tmp_path / "out.onnx",
        PruneOptions(ratio=0.5, benchmark_runs=3),
        progress=lambda stage, fraction: seen.append((stage, fraction)),
    )
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [s for s, _ in seen[::2]] == [s for s in pipeline.STAGE_END if s not in ("finetune", "quantize")]


def test_a_model_that_fails_the_oracle_is_never_written(model_path, tmp_path, monkeypatch):
    import onnxprune.workers.strategies.base as strategies

    real_apply = strategies.apply_plan

    def corrupting_apply(dep, plan, weights=None):
        model = real_apply(dep, plan, weights)
        weight = model.graph.initializer[0]
        values = numpy_helper.to_array(weight).copy()
        values.flat[0] += 1.0  # one wrong weight: still valid ONNX, wrong numbers
        weight.CopyFrom(numpy_helper.from_array(values, weight.name))
        return model

    monkeypatch.setattr(strategies, "apply_plan", corrupting_apply)
    with pytest.raises(VerificationFailed, match="oracle"):
        run_pipeline(model_path, tmp_path / "out.onnx", PruneOptions(ratio=0.5, benchmark=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["residual.onnx"]


def test_fidelity_is_measured_even_without_benchmark(model_path, tmp_path):
    result = run_pipeline(model_path, tmp_path / "out.onnx", PruneOptions(ratio=0.0, benchmark=False))
    assert result.report.latency_ms is None
    assert result.report.fidelity.max_abs_diff == 0.0 and result.report.macs.after == result.report.macs.before


def test_symbolic_dims_are_probed_and_an_input_shape_overrides_the_probe(tmp_path):
    model = residual_model()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, path)
    probed = run_pipeline(path, tmp_path / "out.onnx", PruneOptions(ratio=0.5, benchmark=False))
    assert any("symbolic dims [2, 3]" in warning for warning in probed.report.warnings)
    result = run_pipeline(
        path, tmp_path / "out.onnx", PruneOptions(ratio=0.5, benchmark=False, input_shapes={"input": [1, 3, 8, 8]})
    )
    assert result.report.input_shapes == {"input": [1, 3, 8, 8]}
    assert not any("symbolic dims" in warning for warning in result.report.warnings)
    pruned_input = onnx.load(tmp_path / "out.onnx").graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in pruned_input][2:] == ["height", "width"]  # still dynamic
    assert result.report.macs.after < result.report.macs.before


def test_untouched_weights_stay_bit_identical(model_path, tmp_path):
    result = run_pipeline(model_path, tmp_path / "out.onnx", PruneOptions(ratio=0.5, benchmark=False))
    before = {i.name: numpy_helper.to_array(i) for i in onnx.load(model_path).graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in onnx.load(tmp_path / "out.onnx").graph.initializer}
    unchanged = [n for n in after if n in before and after[n].shape == before[n].shape]
    assert unchanged and all(
        np.array_equal(before[n], after[n]) and before[n].dtype == after[n].dtype for n in unchanged
    )
    assert result.report.output_sha256 == file_sha256(tmp_path / "out.onnx")


@pytest.mark.parametrize("benchmark", [False, True], ids=["fidelity_only", "benchmark"])
def test_the_checks_run_each_model_once_and_fidelity_reuses_their_outputs(model_path, tmp_path, monkeypatch, benchmark):
    """One shot: the masked original and the pruned model run once on one set of inputs, the original
    with them unless the benchmark measures it anyway; fidelity comes from those outputs, and the
    verified model is the file written (serialised once)."""
    import onnxprune.workers.strategies.base as strategies
    import onnxprune.workers.verification as verification
    from onnxprune.workers.benchmark import compare_outputs, make_inputs, run_models

    runs: list[tuple[int, dict[str, np.ndarray]]] = []
    real_run_models = verification.run_models

    def counting(models, inputs, **kwargs):
        runs.append((len(models), inputs))
        return real_run_models(models, inputs, **kwargs)

    monkeypatch.setattr(verification, "run_models", counting)
    monkeypatch.setattr(pipeline, "run_models", lambda *a, **k: pytest.fail("fidelity ran the models again"))
    monkeypatch.setattr(strategies, "write_model", lambda *a, **k: pytest.fail("the verified model was written again"))
    options = PruneOptions(ratio=0.5, benchmark=benchmark, benchmark_runs=3, seed=4)
    result = run_pipeline(model_path, tmp_path / "out.onnx", options)

    assert sum(count for count, _ in runs) == (2 if benchmark else 3)
    assert all(inputs is runs[0][1] for _, inputs in runs)  # one set of inputs
    fresh = compare_outputs(*run_models([model_path, tmp_path / "out.onnx"], make_inputs(model_path, seed=4)))
    assert result.report.fidelity.cosine_similarity == pytest.approx(fresh.cosine_similarity, abs=1e-6)
    assert result.report.fidelity.max_abs_diff == pytest.approx(fresh.max_abs_diff, rel=1e-4, abs=1e-6)
    assert result.report.output_sha256 == file_sha256(tmp_path / "out.onnx")
