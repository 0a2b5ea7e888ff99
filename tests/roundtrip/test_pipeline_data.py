"""The pipeline and the CLI with data: scoring, fine-tuning, the oracle and write-back checks, the report."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from onnxprune.graphops.errors import ModelRejected
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import STAGE_END, run_pipeline

# Integration: the pipeline, the CLI or a sandbox; the pipeline's stages run in this process, as in a
# job's sandbox (tests/support/job_sandbox.py).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stages_in_the_job_process")]


def test_taylor_with_fine_tuning_reports_before_after_pruning_and_after_fine_tuning(
    small_model, small_data, tmp_path, monkeypatch
):
    from onnxprune.workers import evaluation as evaluation_module

    seen, references = [], []
    scored = evaluation_module.held_out_evaluation

    def spied(*args, **kwargs):
        references.append(kwargs.get("evaluator"))
        return scored(*args, **kwargs)

    monkeypatch.setattr(evaluation_module, "held_out_evaluation", spied)
    options = PruneOptions(
        criterion="taylor",
        ratio=0.5,
        finetune_steps=20,
        lr=0.02,
        batch_size=16,
        score_batches=2,
        benchmark=False,
        round_to=1,
    )

    result = run_pipeline(
        small_model,
        tmp_path / "out.onnx",
        options,
        data=small_data["labelled"],
        progress=lambda stage, fraction: seen.append((stage, fraction)),
    )

    evaluation = result.report.evaluation
    assert evaluation.metric == "accuracy" and evaluation.after_pruning is not None
    assert evaluation.finetune.objective == "cross-entropy + distillation" and len(evaluation.finetune.losses) == 20
    assert evaluation.finetune.iterations[0].after_finetune is not None
    assert result.report.macs.after < result.report.macs.before
    assert [f for _, f in seen] == sorted(f for _, f in seen) and any("finetune 20/20" in s for s, _ in seen)
    assert "finetune" in STAGE_END and result.report.stage_seconds["finetune"] > 0
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"), full_check=True)
    # the recovered and the pruned-only model are scored against one run of the original on the held-out split
    assert len(references) == 2 and references[0] is not None and references[0] is references[1]


def test_a_data_criterion_without_data_is_rejected(small_model, tmp_path):
    with pytest.raises(ModelRejected, match="criterion 'apoz' needs data"):
        run_pipeline(small_model, tmp_path / "out.onnx", PruneOptions(criterion="apoz", benchmark=False))
    assert not (tmp_path / "out.onnx").exists()


def test_weight_norm_jobs_without_data_have_no_evaluation_and_load_no_torch(small_model, tmp_path):
    code = (
        "import sys; from pathlib import Path; from onnxprune.workers.options import PruneOptions; "
        "from onnxprune.workers.pipeline import run_pipeline\n"
        "if __name__ == '__main__':\n"
        f"    r = run_pipeline(Path({str(small_model)!r}), Path({str(tmp_path / 'o.onnx')!r}), "
        "PruneOptions(ratio=0.5, benchmark=False))\n"
        "    print(r.report.evaluation is None, 'torch' in sys.modules)"
    )
    script = tmp_path / "job.py"
    script.write_text(code)

    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout.split()

    assert out == ["True", "False"]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "onnxprune.service.cli", "prune", *map(str, args)], capture_output=True, text=True
    )


def test_cli_data_driven_criterion_without_data_exits_2_with_one_line(small_model, tmp_path):
    result = run_cli(small_model, "-o", tmp_path / "out.onnx", "--criterion", "taylor")

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: criterion 'taylor' needs data: pass --data DATA.npz"]


def test_cli_iterative_distillation_writes_model_report_and_plan(small_model, small_data, tmp_path):
    result = run_cli(
        small_model,
        "-o",
        tmp_path / "out.onnx",
        "--criterion",
        "mean-activation",
        "--flops-target",
        "0.4",
        "--round-to",
        "1",  # every group here is no wider than the CPU's step (16), which would keep them whole
        "--data",
        small_data["unlabelled"],
        "--iterative-steps",
        "2",
        "--finetune-steps",
        "4",
        "--batch-size",
        "16",
        "--score-batches",
        "2",
        "--no-benchmark",
        "--report",
        tmp_path / "report.json",
        "--plan-out",
        tmp_path / "plan.json",
    )

    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["options"]["strategies"]["schedule"]["stepwise"]["iterative_steps"] == 2
    assert report["evaluation"]["metric"] == "fidelity"
    assert report["evaluation"]["finetune"]["schedule"] == "iterative + layer-wise reconstruction"
    assert len(report["evaluation"]["finetune"]["iterations"]) == 2
    assert report["macs"]["after"] <= 0.62 * report["macs"]["before"]
    assert json.loads((tmp_path / "plan.json").read_text())["groups"]
