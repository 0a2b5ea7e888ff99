"""Channel counts spelt out in shape constants follow the pruning, even inside run-time shapes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from onnxprune.graphops.surgery import apply_plan
from tests.support import zoo
from tests.support.oracle import analyse, assert_prune_matches_oracle, run_model


@pytest.mark.parametrize("opset", [13, 17])
def test_a_dynamic_batch_se_view_is_pruned_and_stays_dynamic(tmp_path, opset):
    """SE with Linear layers: GAP -> Flatten -> Linear -> ReLU -> Linear -> Sigmoid -> view(b, c, 1, 1) -> Mul.

    With a dynamic batch, torch exports the view's shape as Concat(batch from Shape(x), [c], [1], [1]):
    the constant [c] must shrink with the channels it names.
    """
    path = tmp_path / "se.onnx"
    zoo.export_onnx(
        zoo.randomize_batchnorm(zoo.se_swish_block(se_linear=True), seed=2),
        (1, 3, 16, 16),
        path,
        opset=opset,
        dynamic_batch=True,
    )
    analysed = analyse(path, {"input": [1, 3, 16, 16]})
    assert not [g for g in analysed.dep.frozen if "run-time shape" in g.frozen_reason]
    rewritten = analysed.dep.shape_entries
    assert rewritten, "the view's channel count should be recorded for rewriting"

    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.5)
    assert_prune_matches_oracle(analysed.original, plan, analysed=analysed)

    pruned = apply_plan(analysed.dep, plan)
    batch = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    (logits,) = run_model(pruned, {"input": batch})
    assert logits.shape[0] == 3
    onnx.checker.check_model(pruned, full_check=True)
