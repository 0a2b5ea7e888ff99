"""Layer-wise reconstruction (He et al. 2017, ThiNet) recovers fidelity lost by pruning, in closed form.

small net: conv-BN-ReLU (8) -> conv-BN-ReLU (16) -> residual block -> GAP -> Linear (4)
pruned at ratio 0.5 with l1; each layer that lost inputs is refit to the original's outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper

from onnxprune.graphops.dependency import analyze
from onnxprune.graphops.prepare import prepare_model
from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from onnxprune.graphops.surgery import apply_plan
from onnxprune.roundtrip.data import Dataset
from onnxprune.roundtrip.reconstruction import _conv_rows, reconstruct
from tests.support.bn_net import samples
from tests.support.oracle import run_model


def output_error(reference: onnx.ModelProto, candidate: onnx.ModelProto, x: np.ndarray) -> float:
    want, got = run_model(reference, {"input": x})[0], run_model(candidate, {"input": x})[0]
    return float(np.sum((want - got) ** 2) / np.sum(want**2))


def test_reconstruction_recovers_most_of_the_output_error_pruning_caused_on_unseen_samples(small_model):
    prepared = prepare_model(onnx.load(small_model))
    dep = analyze(prepared, {"input": [1, 3, 12, 12]})
    plan = select_by_ratio(dep, score_groups(dep, "l1"), 0.5)
    pruned = apply_plan(dep, plan)
    calibration = Dataset({"input": samples(128, seed=7)}, None)
    unseen = samples(64, seed=99)

    result = reconstruct(dep, plan, pruned, calibration, samples=128)

    before, after = output_error(prepared, pruned, unseen), output_error(prepared, result.model, unseen)
    assert before > 0.05  # pruning at 0.5 really hurt
    assert after < 0.5 * before
    assert result.layers and all(fit.error_after <= fit.error_before for fit in result.layers)
    shapes = lambda m: {i.name: list(i.dims) for i in m.graph.initializer}  # noqa: E731
    assert shapes(result.model) == shapes(pruned)  # weights refit in place, structure untouched
    onnx.checker.check_model(result.model, full_check=True)


def test_patches_at_chosen_positions_equal_unfold_with_asymmetric_pads_strides_and_dilations():
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2])
    x = torch.randn(3, 4, 9, 10)
    columns = F.unfold(F.pad(x, (0, 1, 1, 2)), [3, 2], dilation=[1, 2], stride=[2, 1])
    positions = np.stack([np.random.default_rng(i).choice(columns.shape[2], 5, replace=False) for i in range(3)])
    expected = torch.gather(columns, 2, torch.from_numpy(positions).unsqueeze(1).expand(-1, columns.shape[1], -1))

    rows = _conv_rows(node, x, [3, 2], positions)

    assert torch.allclose(rows, expected.permute(0, 2, 1).reshape(-1, columns.shape[1]))


def test_nothing_pruned_means_nothing_refit(small_model):
    prepared = prepare_model(onnx.load(small_model))
    dep = analyze(prepared, {"input": [1, 3, 12, 12]})
    plan = select_by_ratio(dep, score_groups(dep, "l1"), 0.0)

    result = reconstruct(dep, plan, apply_plan(dep, plan), Dataset({"input": samples(16)}, None))

    assert result.layers == [] and result.samples == 0
