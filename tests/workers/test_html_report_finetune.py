"""The HTML report of a fine-tuned job: the loss curve, the right sample counts, latency with its noise band."""

from __future__ import annotations

import base64
import re

import numpy as np
import onnx
import pytest

from onnxprune.workers.html_report import render_report_html
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import run_pipeline
from tests.support.oracle import run_model
from tests.support.small_models import two_branch_model

# One fine-tuning run; the pipeline's stages in this process, as in a job's sandbox
# (tests/support/job_sandbox.py).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stages_in_the_job_process")]
IMG = re.compile(r'<img id="(plot-[a-z]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """100 labelled samples: 60 train, 20 validation, 20 held out; two prune-then-fine-tune steps of 6 steps each."""
    folder = tmp_path_factory.mktemp("finetune-html")
    model = two_branch_model()
    onnx.save(model, folder / "model.onnx")
    x = np.random.default_rng(1).standard_normal((100, 3, 8, 8)).astype(np.float32)
    np.savez(folder / "data.npz", input=x, labels=run_model(model, {"input": x})[0].argmax(axis=1))
    options = PruneOptions(ratio=0.5, finetune_steps=6, iterative_steps=2, batch_size=16, benchmark_runs=5)
    return run_pipeline(folder / "model.onnx", folder / "out.onnx", options, data=folder / "data.npz").report


@pytest.fixture(scope="module")
def page(finetuned) -> str:
    return render_report_html(finetuned, title="fine-tuned")


def test_the_loss_curve_is_drawn_from_the_reported_losses(finetuned, page):
    assert len(finetuned.evaluation.finetune.losses) == 12
    plots = {name: base64.b64decode(data) for name, data in IMG.findall(page)}
    assert "plot-loss" in plots and plots["plot-loss"].startswith(b"\x89PNG") and len(plots["plot-loss"]) > 2000


def test_fine_tuning_is_credited_to_the_training_samples_and_evaluation_to_the_held_out_ones(finetuned, page):
    samples = finetuned.evaluation.finetune.samples
    assert samples == {"train": 60, "validation": 20} and finetuned.evaluation.samples == 20
    assert "then fine-tuned on 60 training samples" in page
    assert "measured on 20 held-out samples" in page
    assert "on 20 samples" not in page.replace("on 20 held-out samples", "")
    summary = re.search(r'<p id="finetune-summary">(.*?)</p>', page, re.S).group(1)
    assert "on 60 training samples" in summary and "chosen on 20 validation samples" in summary
    assert "held-out samples were never trained or chosen on" in summary
    splits = re.search(r'<table id="data-splits">(.*?)</table>', page, re.S).group(1)
    assert [int(n) for n in re.findall(r"<tr><td>\w+</td><td>(\d+)</td>", splits)] == [60, 20, 20]


def test_each_iterative_step_is_a_row(finetuned, page):
    iterations = finetuned.evaluation.finetune.iterations
    assert len(iterations) == 2
    assert page.count("<tr><td>1</td>") + page.count("<tr><td>2</td>") >= 2


def test_latency_is_shown_with_its_noise_band(finetuned, page):
    before, after = finetuned.latency_ms.before, finetuned.latency_ms.after
    assert before.p10 <= before.p50 <= before.p90 and after.p10 <= after.p50 <= after.p90
    band = re.search(r'<span id="latency-band">(.*?)</span>', page, re.S).group(1)
    assert f"{before.p10:.3f}" in band and f"{after.p90:.3f}" in band and "5 interleaved runs" in band


def test_what_recovery_bought_is_shown_beside_the_fine_tuning(finetuned, page):
    finetune = finetuned.evaluation.finetune
    assert finetune.total_steps == 12 and finetune.epochs == 3.2  # 12 steps of 16 on 60 training samples
    bought = re.search(r'<p id="finetune-bought">(.*?)</p>', page, re.S).group(1)
    assert "12 fine-tuning steps" in bought and "3.2 epochs over the training samples" in bought
    assert f"{finetune.samples_per_s:g} samples/s" in bought
    assert f"{finetune.cpu_per_second:.2f} CPU-seconds per second" in bought
    assert "finetune-budget-warning" not in page  # three epochs: nothing to warn about


def test_the_budget_warning_is_repeated_beside_the_steps_it_is_about(finetuned):
    from onnxprune.workers.quality_warnings import recovery_budget_warnings

    finetune = finetuned.evaluation.finetune.model_copy(update={"total_steps": 2, "epochs": 0.53})
    warning = recovery_budget_warnings(finetune, time_budget=None)
    assert len(warning) == 1 and "under 2 epochs" in warning[0]
    evaluation = finetuned.evaluation.model_copy(update={"finetune": finetune})
    report = finetuned.model_copy(update={"evaluation": evaluation, "warnings": ["another warning", *warning]})
    page = render_report_html(report, title="short budget")
    section = page[page.index('<h2 id="finetune">') :]
    shown = re.findall(r'<p class="bad finetune-budget-warning">(.*?)</p>', section, re.S)
    assert shown == [warning[0]] and "another warning" not in section
    assert "2 fine-tuning steps" in re.search(r'<p id="finetune-bought">(.*?)</p>', section, re.S).group(1)
