"""The Python API as a pipeline author uses it: ``import onnxprune``, paths or ModelProtos in, typed results out."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pydantic
import pytest

import onnxprune
from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.analysis_summary import ModelAnalysis
from onnxprune.workers.report import PruneReport, SensitivityReport
from tests.support.oracle import random_feeds, run_model
from tests.support.small_models import residual_model

pytestmark = pytest.mark.integration  # the pipeline, the CLI or a sandbox, in processes of their own

ROOT = Path(__file__).resolve().parents[2]


def readme_python_example() -> str:
    """The first ```python block under the README's 'Python API' heading."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    if match is None:
        raise AssertionError("README's Python API section has no ```python example")
    return match.group(1)


def test_the_readme_example_runs_and_writes_a_smaller_model(tmp_path, monkeypatch, capsys):
    onnx.save(residual_model(width=64), tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)

    exec(compile(readme_python_example(), "README.md", "exec"), {})

    pruned = onnx.load(str(tmp_path / "model.pruned.onnx"))
    onnx.checker.check_model(pruned, full_check=True)
    assert pruned.ByteSize() < (tmp_path / "model.onnx").stat().st_size
    printed = capsys.readouterr().out
    assert "2 prunable groups" in printed and "MACs -" in printed and "p50" in printed


def test_the_readme_example_runs_as_a_script_without_a_main_guard(tmp_path):
    """Saved as ``readme_api.py`` and run with ``python readme_api.py``, as a user would: the sandbox's
    children must not re-run the caller's unguarded ``__main__`` (multiprocessing's spawn would)."""
    onnx.save(residual_model(width=64), tmp_path / "model.onnx")
    example = readme_python_example()
    assert "__main__" not in example  # the README shows no guard, so none may be needed
    (tmp_path / "readme_api.py").write_text(example)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    done = subprocess.run(
        [sys.executable, "readme_api.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("prunable groups") == 1  # the script ran once, not again in a child
    assert "MACs -" in done.stdout and "p50" in done.stdout
    onnx.checker.check_model(onnx.load(str(tmp_path / "model.pruned.onnx")), full_check=True)


def test_prune_takes_a_model_proto_and_returns_model_report_and_plan():
    model = residual_model()

    result = onnxprune.prune(model, ratio=0.5, benchmark=False)

    assert isinstance(result.model, onnx.ModelProto)
    assert isinstance(result.report, PruneReport) and isinstance(result.plan, PruningPlan)
    assert result.report.macs.after < result.report.macs.before
    assert result.path is None
    feeds = random_feeds(result.model, {"input": [1, 3, 8, 8]})
    assert run_model(result.model, feeds)[0].shape == (1, 10)  # the classifier keeps its 10 outputs


def test_prune_with_a_path_writes_the_output_and_returns_the_same_model(tmp_path):
    onnx.save(residual_model(), tmp_path / "in.onnx")

    result = onnxprune.prune(tmp_path / "in.onnx", tmp_path / "out.onnx", ratio=0.25, benchmark=False)

    assert result.path == tmp_path / "out.onnx"
    assert onnx.load(str(tmp_path / "out.onnx")).SerializeToString() == result.model.SerializeToString()


def test_a_saved_plan_applies_again_to_the_same_model():
    model = residual_model()
    first = onnxprune.prune(model, ratio=0.5, criterion="random", seed=3, benchmark=False)

    again = onnxprune.prune(model, plan=first.plan, benchmark=False)

    assert again.plan.keep == first.plan.keep


def test_options_nested_by_strategy_or_a_whole_config_give_the_same_job_as_flat_keywords():
    model = residual_model()
    nested = {"selector": {"ratio": {"ratio": 0.25, "criterion": "l2"}}}

    flat = onnxprune.prune(model, ratio=0.25, criterion="l2", benchmark=False)
    by_keyword = onnxprune.prune(model, strategies=nested, benchmark=False)
    by_config = onnxprune.prune(model, options={"strategies": nested, "benchmark": False})

    assert flat.plan.keep == by_keyword.plan.keep == by_config.plan.keep
    assert flat.report.options == by_keyword.report.options == by_config.report.options
    assert flat.report.options["strategies"]["selector"] == nested["selector"]
    with pytest.raises(pydantic.ValidationError, match="ratio is given twice with different values: 0.3 at ratio"):
        onnxprune.prune(model, ratio=0.3, strategies=nested)


def test_bad_options_and_bad_models_raise_the_errors_the_cli_turns_into_exit_2():
    with pytest.raises(pydantic.ValidationError, match="ratio must be in"):
        onnxprune.prune(residual_model(), ratio=1.5)
    with pytest.raises(ModelRejected, match="no Conv"):
        onnxprune.analyze(
            onnx.helper.make_model(
                onnx.helper.make_graph(
                    [onnx.helper.make_node("Relu", ["x"], ["y"])],
                    "g",
                    [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                    [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
                )
            )
        )


def test_analyze_and_sensitivity_return_typed_results():
    model = residual_model()

    analysis = onnxprune.analyze(model)
    curves = onnxprune.sensitivity(model, synthetic=4, ratios=(0.25, 0.5), workers=1)

    assert isinstance(analysis, ModelAnalysis) and len(analysis.groups) == 2
    assert isinstance(curves, SensitivityReport) and curves.metric == "fidelity"
    assert {c.group for c in curves.curves} == {g.id for g in analysis.groups}


@pytest.mark.slow
def test_data_as_arrays_drives_fine_tuning():
    rng = np.random.default_rng(0)
    data = {"input": rng.standard_normal((20, 3, 8, 8)).astype(np.float32), "labels": rng.integers(0, 10, 20)}

    result = onnxprune.prune(residual_model(), data=data, ratio=0.5, finetune_steps=3, batch_size=8, benchmark=False)

    finetune = result.report.evaluation.finetune
    assert finetune.steps == 3 and len(finetune.losses) == 3
    assert finetune.samples == {"train": 12, "validation": 4}  # and 4 held out (roundtrip.data.split_data)


def test_version_and_python_dash_m():
    assert re.fullmatch(r"\d+\.\d+\.\d+.*|0\+unknown", onnxprune.__version__)
    result = subprocess.run(
        [sys.executable, "-m", "onnxprune", "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0 and "prune" in result.stdout
