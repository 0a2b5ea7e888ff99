"""Never a silent no-op: a ratio or MACs target that removes nothing, or far less than asked, says why
and what would prune, in one warning the report carries; a ratio that rounds back to whole groups on
the grid is met in MACs on the grid instead (``workers.strategies.ranked``, ``workers.shortfall``)."""

from __future__ import annotations

import onnx
import pytest

from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import run_pipeline
from onnxprune.workers.report import BeforeAfter
from onnxprune.workers.shortfall import shortfall_notes
from tests.support import zoo

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")


def small_net():
    """x(1ch) -> Conv(8) -> Relu -> Conv(16) -> Relu -> GAP -> Flatten -> Gemm(10), like the MNIST nets:
    two groups of at most 16 channels, which a ratio rounded up to a grid of 16 leaves whole."""
    g = zoo.GraphBuilder(seed=5)
    a = g.conv("input", 1, 8, kernel=5)
    b = g.conv(g.node("Relu", [a]), 8, 16, kernel=5)
    pooled = g.node("Flatten", [g.node("GlobalAveragePool", [g.node("Relu", [b])])], axis=1)
    logits = g.node("Gemm", [pooled, g.random("fc", [10, 16]), g.random("fc_b", [10])], transB=1)
    return g.model([zoo.float_input("input", [1, 1, 28, 28])], logits, 13, "small")


@pytest.fixture
def small(tmp_path):
    onnx.save(small_net(), tmp_path / "model.onnx")
    return tmp_path


def prune(folder, **options):
    return run_pipeline(folder / "model.onnx", folder / "out.onnx", PruneOptions(benchmark=False, **options)).report


def cut(report) -> dict[str, tuple[int, int]]:
    return {g.id: (g.channels_before, g.channels_after) for g in report.groups}


def test_a_ratio_that_rounds_back_to_whole_groups_is_met_on_the_grid_and_says_so(small):
    report = prune(small, ratio=0.3, round_to=16)

    assert report.macs.after < report.macs.before
    assert all(after in (before, 8, 4) for before, after in cut(report).values())  # counts on the grid of 16
    notes = [w for w in report.warnings if w.startswith("ratio 0.3: rounded up to the grid of 16 channels")]
    assert len(notes) == 1 and "--round-to 1" in notes[0] and "met on the grid" in notes[0]
    assert not [w for w in report.warnings if w.startswith("round-to auto")]  # said once


def test_a_ratio_whose_grid_cut_would_overshoot_prunes_nothing_and_warns_once(small):
    report = prune(small, ratio=0.1, round_to=16)

    assert report.macs.after == report.macs.before
    notes = [w for w in report.warnings if w.startswith("nothing pruned: ")]
    assert len(notes) == 1
    assert "grid of 16 (--round-to 16)" in notes[0] and "--round-to 1 prunes exact counts" in notes[0]
    # 8 -> 4 and 16 -> 8 are the groups' smallest steps down: half of what each could lose
    assert "the smallest step down removes 50% of a group's removable channels" in notes[0]


def test_a_macs_target_the_grid_overshoots_says_so(small):
    report = prune(small, flops_target=0.05, round_to=16)

    assert report.macs.reduction > 0.15
    notes = [w for w in report.warnings if w.startswith("--flops-target 0.05 removed ")]
    assert len(notes) == 1 and "far more than asked" in notes[0] and "--round-to 1" in notes[0]


@pytest.mark.parametrize(("target", "after", "warned"), [(0.3, 423, True), (0.3, 560, False), (0.05, 880, False)])
def test_a_macs_cut_past_one_and_a_half_times_the_target_and_ten_points_says_so(target, after, warned):
    """-57.7% for --flops-target 0.3 (BlazeFace's one group on the grid of 16) is far more than asked;
    -44% is not (under 1.5x), nor -12% for 0.05 (2.4x, but under 10 points more)."""
    options = PruneOptions(flops_target=target, round_to=16)

    notes = shortfall_notes(options, [], [], BeforeAfter(before=1000, after=after), 16, "16", plan_given=False)

    assert bool(notes and "far more than asked" in notes[0]) is warned


def test_exact_counts_prune_the_same_ratio_without_a_warning(small):
    report = prune(small, ratio=0.3, round_to=1)

    assert cut(report) == {group: (before, before - int(0.3 * before)) for group, (before, _) in cut(report).items()}
    assert not [w for w in report.warnings if "nothing pruned" in w or "far less than asked" in w]


def test_a_model_without_a_prunable_group_says_so(tmp_path):
    """x -> Conv(4) -> output: the conv's channels reach the graph output, so its group is frozen."""
    g = zoo.GraphBuilder(seed=1)
    onnx.save(
        g.model([zoo.float_input("input", [1, 3, 8, 8])], g.conv("input", 3, 4), 13, "frozen"), tmp_path / "model.onnx"
    )

    report = prune(tmp_path, ratio=0.5, round_to=1)

    assert report.groups == []
    assert [w for w in report.warnings if w.startswith("nothing pruned: the model has no prunable channel group")]


def test_a_saved_plan_that_removes_nothing_is_not_a_shortfall(small):
    from onnxprune.graphops.plan import PruningPlan

    report = run_pipeline(
        small / "model.onnx", small / "out.onnx", PruneOptions(benchmark=False, round_to=1), plan=PruningPlan({})
    ).report

    assert report.macs.after == report.macs.before
    assert not [w for w in report.warnings if "nothing pruned" in w]
