"""Under --time-budget, layer-wise reconstruction stops before a layer whose refit would end past the deadline,
as the layers refit before it took (``roundtrip.layer_pace``): that layer and those after it stay as pruned, and
the report names them. The batch is sized from a probe at the start, and a machine that slows down after it must
not carry the refit past the budget (ViT-S/14 with data, ``--time-budget 300``: 362 s at load 6.3).

small net: conv-BN-ReLU (8) -> conv-BN-ReLU (16) -> residual block -> GAP -> Linear (4), pruned at 0.5 by L1.

The clock is the test's own (``reconstruct(clock=...)``): every refit's solve takes ``SOLVE_SECONDS`` on it,
nothing else takes any time, so what stops and what runs does not depend on the machine's speed.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.graphops.dependency import analyze
from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from onnxprune.graphops.surgery import apply_plan
from onnxprune.roundtrip import reconstruction
from onnxprune.roundtrip.data import Dataset
from onnxprune.roundtrip.layer_pace import LayerPace, LayerSize, LayerTime
from onnxprune.roundtrip.reconstruction import layers_to_refit, reconstruct
from onnxprune.workers.analysis import analyse_model
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.stages import Stages
from onnxprune.workers.strategies import Job
from onnxprune.workers.strategies.ranked import RankedByRatio
from onnxprune.workers.strategies.reconstruct import Reconstruct
from onnxprune.workers.strategies.recovery import NoRecovery
from onnxprune.workers.strategies.stepwise import Stepwise
from tests.support.bn_net import samples

pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")

SHAPE = {"input": [1, 3, 12, 12]}
SOLVE_SECONDS = 10.0


class TestClock:
    """A clock that stands still unless a refit's solve moves it on; it notes each refit's size."""

    __test__ = False

    def __init__(self) -> None:
        self.now = 0.0
        self.sizes: list[LayerSize] = []

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> TestClock:
    """Every layer's solve takes SOLVE_SECONDS on the returned clock."""
    clock = TestClock()
    solve = reconstruction._Refit.solve

    def slow_solve(refit: reconstruction._Refit) -> reconstruction.LayerFit:
        clock.now += SOLVE_SECONDS
        clock.sizes.append(refit.size)
        return solve(refit)

    monkeypatch.setattr(reconstruction._Refit, "solve", slow_solve)
    return clock


@pytest.fixture
def pruned_small(small_model):
    dep = analyze(onnx.load(small_model), SHAPE)
    plan = select_by_ratio(dep, score_groups(dep, "l1"), 0.5)
    return dep, plan, apply_plan(dep, plan)


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


# The pruned small net's layers to refit, in order (inputs x outputs): conv 36 x 8, conv 72 x 8, conv 72 x 8,
# Gemm 9 x 4. Each solve takes 10 s. Before the second layer the first's 10 s predict 80 s (twice the inputs:
# the solve grows with their cube); the third is the second's size (10 s), the fourth, smaller, as the third.
DEADLINE_CASES = [
    pytest.param(15.0, 1, id="the wider 2nd layer cannot end by 15 s"),
    pytest.param(89.0, 1, id="10 s + 80 s expected: 1 s past the deadline"),
    pytest.param(90.0, 4, id="10 s + 80 s expected: on time; then the 3rd and 4th, 10 s each, by 40 s"),
]


@pytest.mark.parametrize(("deadline", "refit"), DEADLINE_CASES)
def test_a_layer_that_would_end_past_the_deadline_is_left_as_pruned_with_every_layer_after_it(
    pruned_small, clock, deadline, refit
):
    dep, plan, pruned = pruned_small
    nodes, _ = layers_to_refit(dep.model, pruned)
    data = Dataset({"input": samples(64, seed=3)}, None)

    result = reconstruct(dep, plan, pruned, data, samples=64, deadline=deadline, clock=clock)

    assert clock.sizes == [LayerSize(36, 8), LayerSize(72, 8), LayerSize(72, 8), LayerSize(9, 4)][:refit]
    assert [fit.node for fit in result.layers] == [node.name for node in nodes[:refit]]
    assert result.left_by_deadline == [node.name for node in nodes[refit:]]
    assert clock.now == refit * SOLVE_SECONDS <= deadline  # no refit began that was expected to end late
    assert result.seconds_per_layer == SOLVE_SECONDS
    before, after = weights(pruned), weights(result.model)
    for node in nodes[refit:]:  # left as pruned: exactly the weights surgery wrote
        assert all(np.array_equal(after[name], before[name]) for name in node.input if name in before)
    onnx.checker.check_model(result.model, full_check=True)


def test_with_time_to_spare_the_deadline_changes_nothing(pruned_small, clock):
    dep, plan, pruned = pruned_small
    nodes, _ = layers_to_refit(dep.model, pruned)
    data = Dataset({"input": samples(64, seed=3)}, None)

    budgeted = reconstruct(dep, plan, pruned, data, samples=64, deadline=1e6, end=1e6, reserve=100, clock=clock)
    unbounded = reconstruct(dep, plan, pruned, data, samples=64)

    assert budgeted.left_by_deadline == [] and len(budgeted.layers) == len(nodes)
    assert (budgeted.samples, budgeted.affordable) == (unbounded.samples, unbounded.affordable) == (64, 64)
    assert budgeted.model.SerializeToString() == unbounded.model.SerializeToString()


def test_the_time_kept_for_the_evaluations_after_reconstruction_counts_against_the_layers(pruned_small, clock):
    """``end`` less ``reserve`` passes of the original over a sample: on the test's clock a pass takes no
    time, so the end itself is what the second layer cannot reach."""
    dep, plan, pruned = pruned_small
    data = Dataset({"input": samples(64, seed=3)}, None)

    result = reconstruct(dep, plan, pruned, data, samples=64, deadline=1e6, end=15.0, reserve=100, clock=clock)

    assert len(result.layers) == 1 and result.left_by_deadline


def test_a_batch_at_its_least_refits_every_layer_however_late(pruned_small, clock):
    """A deadline already passed leaves the probe's samples: the least reconstruction, which refits every
    layer (as scoring always looks at one batch); only a batch planned above its least is cut short."""
    dep, plan, pruned = pruned_small
    nodes, _ = layers_to_refit(dep.model, pruned)
    data = Dataset({"input": samples(64, seed=3)}, None)
    clock.now = 1_000.0

    result = reconstruct(dep, plan, pruned, data, samples=64, deadline=10.0, end=10.0, clock=clock)

    assert result.samples == reconstruction.PROBE_SAMPLES < result.affordable
    assert [fit.node for fit in result.layers] == [node.name for node in nodes]
    assert result.left_by_deadline == []


def test_the_report_names_the_layers_the_deadline_left_and_a_warning_counts_them(
    small_model, small_data, tmp_path, clock, monkeypatch
):
    """A job whose refits run slow after the batch was planned (every solve 10 s on the test's clock, which
    starts at the job's time): the first layer is refit, the wider second would end past the budget's share."""
    import functools
    import time

    clock.now = time.monotonic()
    monkeypatch.setattr(reconstruction, "reconstruct", functools.partial(reconstruction.reconstruct, clock=clock))
    analysis = analyse_model(small_model, SHAPE)
    options = PruneOptions(round_to=1, benchmark=False, criterion="l1", ratio=0.5, time_budget=60.0)
    job = Job(analysis, options, Stages(), tmp_path, data_path=small_data["unlabelled"])

    report = Stepwise(RankedByRatio(0.5), Reconstruct(NoRecovery())).run(job).finetune

    assert report is not None
    (iteration,) = report.iterations
    tried = len(iteration.reconstructed_layers) + len(iteration.reconstruction_not_kept)
    left = iteration.reconstruction_left_by_deadline
    assert tried == 1 and len(left) >= 2
    (note,) = [note for note in job.budget_notes if "as pruned" in note]
    assert note.startswith(f"--time-budget: layer-wise reconstruction left {len(left)} of {len(left) + 1} layers")
    assert "reconstruction_left_by_deadline names them" in note


SQUARE, WIDE = LayerSize(100, 100), LayerSize(200, 100)


def test_a_layer_of_a_size_refit_before_is_expected_to_take_what_the_latest_such_layer_took():
    pace = LayerPace()
    pace.record(LayerTime(SQUARE, advance=1.0, add=1.0, solve=1.0))
    pace.record(LayerTime(WIDE, advance=5.0, add=5.0, solve=5.0))
    pace.record(LayerTime(SQUARE, advance=2.0, add=2.0, solve=2.0))  # the machine slowed down

    assert pace.expected(SQUARE) == 6.0
    assert pace.expected(WIDE) == 15.0


def test_a_wider_layer_scales_the_latest_sums_and_solve_up_and_the_longest_runs_as_they_are():
    pace = LayerPace()
    pace.record(LayerTime(SQUARE, advance=3.0, add=1.0, solve=1.0))
    pace.record(LayerTime(LayerSize(50, 50), advance=1.0, add=0.5, solve=0.5))

    # From the latest (50 x 50): sums 200 x 300 / (50 x 100) = 12x, solve (200 / 50)^3 = 64x; runs: the longest.
    assert pace.expected(WIDE) == pytest.approx(3.0 + 0.5 * 12 + 0.5 * 64)
    # A smaller layer than the latest is not expected to be faster than it.
    assert pace.expected(LayerSize(10, 10)) == pytest.approx(3.0 + 0.5 + 0.5)


def test_before_any_refit_nothing_is_expected():
    assert LayerPace().expected(SQUARE) is None
