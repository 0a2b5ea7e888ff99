"""Sensitivity analysis and ``ratio='auto'``: flat curves for idle layers, steep ones for the layers
that carry the signal, and per-group ratios whose combined drop stays within the bound on held-out data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_group_ratios
from onnxprune.graphops.sensitivity_select import sensitive_groups, tolerated_ratio, tolerated_ratios
from onnxprune.roundtrip.data import Dataset, load_dataset, split_data
from onnxprune.workers.evaluation import accuracy, fidelity, make_evaluator
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import run_pipeline
from onnxprune.workers.report import SensitivityCurve, SensitivityReport
from onnxprune.workers.sensitivity import choose_auto, measure_sensitivity, parse_ratios
from tests.support.oracle import analyse, run_model
from tests.support.small_models import two_branch_model

# Integration: the pipeline, the CLI or a sandbox; the pipeline's stages run in this process, as in a
# job's sandbox (tests/support/job_sandbox.py).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stages_in_the_job_process")]

SAMPLES = 300


def group_of(dep, conv_weight_prefix: str) -> str:
    """The id of the group written by the conv whose weight name starts with ``conv_weight_prefix``."""
    weights = {node.name: node.input[1] for node in dep.model.graph.node if node.op_type == "Conv"}
    return next(g.id for g in dep.prunable if any(weights[p].startswith(conv_weight_prefix) for p in g.producers))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sensitivity")


@pytest.fixture(scope="module")
def model_path(workdir) -> Path:
    path = workdir / "two_branch.onnx"
    onnx.save(two_branch_model(), path)
    return path


@pytest.fixture(scope="module")
def data_path(workdir, model_path) -> Path:
    """Random inputs labelled by the model itself: the unpruned model scores 1.0."""
    x = np.random.default_rng(0).standard_normal((SAMPLES, 3, 8, 8)).astype(np.float32)
    labels = run_model(onnx.load(model_path), {"input": x})[0].argmax(axis=1)
    path = workdir / "data.npz"
    np.savez(path, input=x, labels=labels)
    return path


@pytest.fixture(scope="module")
def curves(model_path, data_path) -> SensitivityReport:
    data = load_dataset(data_path, onnx.load(model_path))
    return measure_sensitivity(model_path, data, ratios=(0.25, 0.5, 0.75), workers=2)


def curve(report: SensitivityReport, group: str) -> SensitivityCurve:
    return next(c for c in report.curves if c.group == group)


# ---- the curves -------------------------------------------------------------------------------


def test_a_layer_whose_filters_are_all_near_zero_has_a_flat_curve(curves, model_path):
    quiet = curve(curves, group_of(analyse(model_path).dep, "W_quiet"))
    assert curves.baseline == 1.0
    assert quiet.values == [1.0, 1.0, 1.0]


def test_a_layer_that_carries_the_signal_has_a_steep_curve(curves, model_path):
    signal = curve(curves, group_of(analyse(model_path).dep, "W_1"))
    assert signal.values[-1] < curves.baseline - 0.3
    assert signal.values == sorted(signal.values, reverse=True)  # more removed, less accurate


def test_curves_record_channels_removed_and_macs_at_each_ratio(curves):
    assert curves.metric == "accuracy" and curves.source == "labels" and curves.samples == SAMPLES
    for c in curves.curves:
        assert c.ratios == [0.25, 0.5, 0.75]
        assert c.channels_removed == [2, 4, 6]
        assert curves.macs > c.macs_after[0] > c.macs_after[1] > c.macs_after[2]


def test_without_labels_the_curve_measures_fidelity_to_the_original(model_path, data_path):
    model = onnx.load(model_path)
    unlabelled = Dataset(load_dataset(data_path, model).inputs, None).subset(np.arange(64))
    report = measure_sensitivity(model_path, unlabelled, ratios=(0.5,), workers=1)
    dep = analyse(model_path).dep
    assert report.metric == "fidelity" and report.source == "original outputs" and report.baseline == 1.0
    assert curve(report, group_of(dep, "W_quiet")).values[0] > 0.99999
    assert curve(report, group_of(dep, "W_1")).values[0] < 0.99


# ---- choosing ratios from curves --------------------------------------------------------------


def test_the_tolerated_ratio_walks_up_the_curve_until_the_drop_exceeds_the_bound():
    assert tolerated_ratio([(0.1, 0.0), (0.2, 0.004), (0.3, 0.02), (0.4, 0.001)], 0.01) == 0.2
    assert tolerated_ratio([(0.3, 0.0), (0.1, 0.0), (0.2, 0.0)], 0.01) == 0.3


def test_a_group_that_drops_too_much_at_the_smallest_ratio_is_sensitive_and_skipped():
    curves = {"robust": [(0.1, 0.0), (0.5, 0.005)], "sensitive": [(0.1, 0.05), (0.5, 0.3)]}
    assert tolerated_ratios(curves, 0.01) == {"robust": 0.5, "sensitive": 0.0}
    assert sensitive_groups(curves, 0.01) == ["sensitive"]


def test_group_ratios_prune_each_named_group_by_its_own_ratio(model_path):
    dep = analyse(model_path).dep
    quiet, signal = group_of(dep, "W_quiet"), group_of(dep, "W_1")
    plan = select_by_group_ratios(dep, score_groups(dep, "l1"), {quiet: 0.75, signal: 0.25})
    assert {gid: len(keep) for gid, keep in plan.keep.items()} == {quiet: 2, signal: 6}


def fake_report(groups: dict[str, list[float]], baseline: float = 1.0) -> SensitivityReport:
    return SensitivityReport(
        model_sha256="x",
        criterion="l1",
        metric="accuracy",
        source="labels",
        samples=1,
        baseline=baseline,
        macs=1,
        ratios=[0.25, 0.5, 0.75],
        curves=[
            SensitivityCurve(
                group=g,
                producers=[],
                channels=8,
                ratios=[0.25, 0.5, 0.75],
                channels_removed=[2, 4, 6],
                values=values,
                macs_after=[1, 1, 1],
            )
            for g, values in groups.items()
        ],
    )


def test_auto_lowers_the_per_group_budget_until_the_combined_drop_is_within_the_bound(model_path):
    dep = analyse(model_path).dep
    quiet, signal = group_of(dep, "W_quiet"), group_of(dep, "W_1")
    report = fake_report({quiet: [1.0, 1.0, 1.0], signal: [0.984, 0.97, 0.5]})
    # Validation: pruning the signal group at all costs 3 points, whatever its curve said (1.6).
    check = lambda plan: 0.97 if signal in plan.groups else 1.0  # noqa: E731
    auto = choose_auto(dep, score_groups(dep, "l1"), report, 0.02, check=check, baseline=1.0)
    assert auto.ratios == {quiet: 0.75}
    assert auto.validation_after == 1.0
    tried = [(round(budget, 5), round(drop, 3)) for budget, drop in auto.tried]
    assert tried == [
        (0.02, 0.03),
        (0.01, 0.0),  # halved until it passes, then bisected:
        (0.015, 0.0),
        (0.0175, 0.03),
        (0.01625, 0.03),
    ]
    assert auto.budget == 0.015


def test_auto_raises_the_per_group_budget_while_the_judged_plan_stays_within_the_bound(model_path):
    """Judged after recovery, plans can go past the raw curves: the budget doubles until the judge
    refuses, then is bisected back."""
    dep = analyse(model_path).dep
    quiet, signal = group_of(dep, "W_quiet"), group_of(dep, "W_1")
    report = fake_report({quiet: [1.0, 1.0, 1.0], signal: [0.984, 0.97, 0.5]})
    # After recovery only keeping 2 of the signal group's 8 channels costs (5 points).
    check = lambda plan: 0.95 if len(plan.keep.get(signal, range(8))) <= 2 else 1.0  # noqa: E731
    auto = choose_auto(dep, score_groups(dep, "l1"), report, 0.02, check=check, baseline=1.0)

    assert auto.ratios == {quiet: 0.75, signal: 0.5}  # the raw curve allowed 0.25 within 0.02
    budgets = [round(budget, 4) for budget, _ in auto.tried]
    assert budgets[:6] == [0.02, 0.04, 0.08, 0.16, 0.32, 0.5]  # doubled up to the largest drop on a curve
    assert [round(drop, 3) for _, drop in auto.tried[:6]] == [0.0] * 5 + [0.05]
    assert 0.32 <= auto.budget < 0.5 and auto.validation_after == 1.0


def test_auto_refuses_curves_of_another_model(model_path):
    dep = analyse(model_path).dep
    with pytest.raises(ModelRejected, match="does not have"):
        choose_auto(dep, score_groups(dep, "l1"), fake_report({"nope": [1, 1, 1]}), 0.01)


def test_ratio_auto_keeps_the_drop_on_held_out_data_within_the_bound(model_path, data_path, tmp_path):
    options = PruneOptions(ratio="auto", max_drop=0.05, benchmark=False, round_to=1)
    result = run_pipeline(model_path, tmp_path / "auto.onnx", options, data=data_path)
    report = result.report
    dep = result.dependency
    assert report.group_ratios[group_of(dep, "W_quiet")] == 0.9  # the idle branch goes (almost) entirely
    assert report.evaluation is not None and report.evaluation.metric == "accuracy"
    assert report.evaluation.before - report.evaluation.after <= 0.05
    # Measured again here, outside the pipeline, on the held-out samples it documents.
    held_out = split_data(load_dataset(data_path, onnx.load(model_path))).held_out
    logits = run_model(onnx.load(tmp_path / "auto.onnx"), held_out.inputs)[0]
    assert report.evaluation.samples == len(held_out) == SAMPLES // 5
    assert np.mean(logits.argmax(axis=1) == held_out.labels) >= 1.0 - 0.05
    assert report.macs.after < report.macs.before
    assert report.sensitivity is not None and len(report.sensitivity.curves) == 2


def test_ratio_auto_without_data_or_curves_is_a_clear_user_error(model_path, tmp_path):
    with pytest.raises(ModelRejected, match="ratio 'auto' needs data"):
        run_pipeline(model_path, tmp_path / "x.onnx", PruneOptions(ratio="auto", benchmark=False))


def test_max_drop_without_ratio_auto_is_refused():
    with pytest.raises(ValueError, match="max_drop applies only to ratio 'auto'"):
        PruneOptions(ratio=0.3, max_drop=0.01)


# ---- data and metrics -------------------------------------------------------------------------


def test_every_fifth_sample_is_held_out_everywhere():
    """The pipeline's held-out numbers use the project-wide split (roundtrip.data.split_data)."""
    data = Dataset({"input": np.arange(10, dtype=np.float32)}, np.arange(10))
    splits = split_data(data)
    assert splits.held_out.labels.tolist() == [4, 9]
    assert splits.validation.labels.tolist() == [3, 8]
    assert splits.train.labels.tolist() == [0, 1, 2, 5, 6, 7]


def test_metrics_are_top1_accuracy_and_mean_cosine():
    logits = {"y": np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])}
    assert accuracy(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert fidelity(logits, logits) == pytest.approx(1.0)
    assert fidelity({"y": -logits["y"]}, logits) == pytest.approx(-1.0)


def test_a_model_with_a_fixed_batch_of_one_is_evaluated_sample_by_sample(tmp_path, data_path):
    path = tmp_path / "batch1.onnx"
    onnx.save(two_branch_model(batch=1), path)
    data = load_dataset(data_path, onnx.load(path)).subset(np.arange(20))
    evaluator = make_evaluator(path, data)
    assert evaluator.baseline == 1.0
    assert evaluator.score([path]) == [1.0]


def test_sensitivity_ranks_by_weights_and_says_where_data_driven_criteria_belong(model_path, data_path):
    data = load_dataset(data_path, onnx.load(model_path))
    with pytest.raises(ModelRejected, match="criterion 'taylor' needs the data-driven pipeline"):
        measure_sensitivity(model_path, data, criterion="taylor")


def test_ratios_parse_sorted_and_bounded():
    assert parse_ratios("0.5, 0.1,0.5") == (0.1, 0.5)
    with pytest.raises(ModelRejected):
        parse_ratios("0.5,1.0")


# ---- the command line -------------------------------------------------------------------------


def onnxprune(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onnxprune.service.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_writes_curves_as_json_png_and_html(model_path, data_path, tmp_path):
    result = onnxprune(
        "sensitivity",
        model_path,
        "--data",
        data_path,
        "--ratios",
        "0.5",
        "--samples",
        "50",
        "--json",
        "curves.json",
        "--plot",
        "curves.png",
        "--report-html",
        "curves.html",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    saved = SensitivityReport.model_validate_json((tmp_path / "curves.json").read_text())
    assert saved.samples == 50 and len(saved.curves) == 2
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'id="plot-sensitivity"' in (tmp_path / "curves.html").read_text()
    assert "[2/2]" in result.stderr  # progress, one line per group when not on a terminal


def test_cli_without_data_says_what_to_pass(model_path, tmp_path):
    result = onnxprune("sensitivity", model_path, cwd=tmp_path)
    assert result.returncode == 2
    assert "sensitivity needs held-out data: pass --data DATA.npz" in result.stderr
    assert "--synthetic N" in result.stderr


def test_cli_synthetic_proxy_is_labelled_as_such(model_path, tmp_path):
    result = onnxprune(
        "sensitivity", model_path, "--synthetic", "8", "--ratios", "0.5", "--json", "c.json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "a proxy" in result.stderr
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["source"] == "synthetic inputs" and saved["metric"] == "fidelity"


def test_prune_ratio_auto_uses_saved_curves_and_writes_an_html_report(model_path, data_path, tmp_path):
    curves_made = onnxprune(
        "sensitivity", model_path, "--data", data_path, "--ratios", "0.5,0.9", "--json", "curves.json", cwd=tmp_path
    )
    assert curves_made.returncode == 0, curves_made.stderr
    result = onnxprune(
        "prune",
        model_path,
        "-o",
        "small.onnx",
        "--ratio",
        "auto",
        "--max-drop",
        "0.02",
        "--sensitivity",
        "curves.json",
        "--data",
        data_path,
        "--no-benchmark",
        "--report",
        "report.json",
        "--report-html",
        "report.html",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    auto = report["options"]["strategies"]["selector"]["auto"]
    assert (auto["ratio"], auto["max_drop"]) == ("auto", 0.02)
    assert report["evaluation"]["before"] - report["evaluation"]["after"] <= 0.02
    assert 'id="plot-sensitivity"' in (tmp_path / "report.html").read_text()
