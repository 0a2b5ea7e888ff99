"""A detector's MACs target is spread over its groups by what each one's cut alone costs the detections
(``workers.detector_sensitivity``).

A YOLO-style detector whose head reads two feature branches, one of them ignored (its head weights are 0):

    images [N, 3, 16, 16] -> conv_used (16) -> ReLU --\\
                          -> conv_idle (16) -> ReLU ---> Concat (32) -> Conv 1x1 (4 + 2) -> [N, 6, 64]
        -> boxes: sigmoid(xy) * 16, softplus(wh) * 4; classes: sigmoid

Cutting conv_idle changes no detection (drop 0); cutting conv_used moves every box and score. conv_idle's
weights are the larger, so a ranking by weight norms alone would cut conv_used first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxprune.graphops.scoring import score_groups
from onnxprune.workers.analysis import analyse_model
from onnxprune.workers.detector_sensitivity import detector_cut
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.stages import Stages
from onnxprune.workers.strategies import Job
from tests.support.detection_models import export_detector

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.integration  # onnxruntime runs in sandboxed children


class TwoBranchDetector(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = torch.nn.Conv2d(3, 16, 3, 2, 1)
        self.idle = torch.nn.Conv2d(3, 16, 3, 2, 1)
        self.head = torch.nn.Conv2d(32, 6, 1)
        with torch.no_grad():
            self.head.weight[:, 16:] = 0.0
            self.head.weight[:, :16] *= 4.0  # scores spread across (0, 1): cutting channels moves them
            self.idle.weight *= 10.0  # weight norms alone would cut the used branch first

    def forward(self, images):
        features = torch.cat([torch.relu(self.used(images)), torch.relu(self.idle(images))], dim=1)
        raw = self.head(features).flatten(2)
        xy = torch.sigmoid(raw[:, :2]) * 16
        wh = torch.nn.functional.softplus(raw[:, 2:4]) * 4
        return torch.cat([xy, wh, torch.sigmoid(raw[:, 4:])], dim=1)


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> tuple[Path, Path]:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("two_branch")
    path = folder / "two_branch.onnx"
    export_detector(TwoBranchDetector(), path, 16)
    data = folder / "data.npz"
    np.savez(data, images=np.random.default_rng(0).random((40, 3, 16, 16), dtype=np.float32))
    return path, data


def job_for(detector: tuple[Path, Path], tmp_path: Path, mode: str, **options: object) -> Job:
    path, data = detector
    chosen = PruneOptions(
        flops_target=0.15, round_to=1, benchmark=False, detector=mode, detection_confidence=0.3, **options
    )
    return Job(analyse_model(path), chosen, Stages(), tmp_path, data_path=data)


def group_of(job: Job, conv_weight: str) -> str:
    producer = next(n.name for n in job.dep.model.graph.node if n.op_type == "Conv" and n.input[1] == conv_weight)
    return next(g.id for g in job.dep.prunable if producer in g.producers)


def test_the_idle_branch_is_cut_and_the_one_detections_need_is_left_whole(detector, tmp_path):
    job = job_for(detector, tmp_path, "auto")
    cut = detector_cut(job, job.dep, score_groups(job.dep, "l1"), 0.15)

    assert cut is not None
    used, idle = group_of(job, "used.weight"), group_of(job, "idle.weight")
    assert cut.drops[idle] == pytest.approx(0.0, abs=1e-6) and cut.drops[used] > 0.01  # detection loss at 50%
    assert cut.ratios is not None and list(cut.ratios) == [idle]  # the idle branch alone reaches 15% of MACs
    assert cut.spared == [used]
    assert "1 groups cut, 1 left whole" in cut.note and "--detector none" in cut.note
    assert not list(tmp_path.glob("probe-*.onnx"))  # the probed models are removed


def test_detector_none_ranks_every_group_alike(detector, tmp_path):
    job = job_for(detector, tmp_path, "none")
    assert detector_cut(job, job.dep, score_groups(job.dep, "l1"), 0.15) is None


def test_past_its_share_of_the_time_budget_nothing_is_probed_and_the_report_says_so(detector, tmp_path):
    job = job_for(detector, tmp_path, "auto", time_budget=10.0)
    job.started -= 60.0  # scoring and the rest have used the budget up

    assert detector_cut(job, job.dep, score_groups(job.dep, "l1"), 0.15) is None
    (note,) = job.budget_notes
    assert "made 0 of 2 cuts" in note and "--time-budget" in note


def test_every_step_of_an_iterative_cut_leaves_the_spared_group_whole(detector, tmp_path):
    import onnxprune

    path, data = detector
    job = job_for(detector, tmp_path, "auto")
    used, idle = group_of(job, "used.weight"), group_of(job, "idle.weight")
    result = onnxprune.prune(
        path, data=data, flops_target=0.15, iterative_steps=2, finetune_steps=1, round_to=1, benchmark=False,
        detection_confidence=0.3, criterion="l1",
    )  # fmt: skip

    assert used not in result.plan.groups and idle in result.plan.groups
    assert sum("left whole" in warning for warning in result.report.warnings) == 1


def test_one_step_meets_the_target_with_the_probed_ratios_and_reports_them(detector, tmp_path):
    import onnxprune

    path, data = detector
    job = job_for(detector, tmp_path, "auto")
    used, idle = group_of(job, "used.weight"), group_of(job, "idle.weight")
    result = onnxprune.prune(
        path, data=data, flops_target=0.15, round_to=1, benchmark=False, recovery="none",
        detection_confidence=0.3, criterion="l1",
    )  # fmt: skip

    assert list(result.plan.groups) == [idle] and result.report.group_ratios == {idle: 0.5}
    assert any("1 groups cut, 1 left whole" in warning and used in warning for warning in result.report.warnings)


class NarrowUsedDetector(TwoBranchDetector):
    """The same detector with a 3-channel used branch: on a grid of 16, half of it rounds back to all 3
    (no cut to probe), while half of the idle branch's 16 is 8."""

    def __init__(self) -> None:
        super().__init__()
        self.used = torch.nn.Conv2d(3, 3, 3, 2, 1)
        self.head = torch.nn.Conv2d(19, 6, 1)
        with torch.no_grad():
            self.head.weight[:, 3:] = 0.0
            self.head.weight[:, :3] *= 4.0


def test_a_group_the_grid_cannot_cut_does_not_stop_the_others_ratios(tmp_path):
    torch.manual_seed(0)
    path, data = tmp_path / "narrow_used.onnx", tmp_path / "data.npz"
    export_detector(NarrowUsedDetector(), path, 16)
    np.savez(data, images=np.random.default_rng(0).random((40, 3, 16, 16), dtype=np.float32))
    chosen = PruneOptions(flops_target=0.1, round_to=16, benchmark=False, detection_confidence=0.3)
    job = Job(analyse_model(path), chosen, Stages(), tmp_path, data_path=data)
    cut = detector_cut(job, job.dep, score_groups(job.dep, "l1"), 0.1)

    assert cut is not None and cut.ratios == {group_of(job, "idle.weight"): 0.5}
    assert list(cut.drops) == [group_of(job, "idle.weight")]  # the used branch had no cut to probe
