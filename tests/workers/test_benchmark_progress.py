"""A job's closing benchmark reports progress as it goes (a large model's takes minutes: a service
poller must not see one number for all of it), and its progress lists only the stages asked for."""

from __future__ import annotations

from onnxprune.workers.job_process import JobRequest, run_job_process
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.stages import STAGE_END, stage_start
from tests.support.service_models import convnet, save


def test_the_benchmark_stage_moves_while_its_rounds_run(tmp_path):
    model = save(convnet(), tmp_path / "m.onnx")
    seen: list[tuple[str, float]] = []

    run_job_process(
        JobRequest(model, tmp_path / "out.onnx", PruneOptions(ratio=0.5, round_to=1, benchmark_runs=20)),
        tmp_path / "job",
        progress=lambda *p: seen.append(p),
    )

    inside = {f for stage, f in seen if stage == "benchmark" and stage_start("benchmark") < f < STAGE_END["benchmark"]}
    assert len(inside) >= 5  # a tenth of the rounds at a time
    assert [f for _, f in seen] == sorted(f for _, f in seen)
    assert "finetune" not in {stage for stage, _ in seen} and "quantize" not in {stage for stage, _ in seen}
