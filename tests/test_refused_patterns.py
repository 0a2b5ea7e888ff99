"""Patterns that used to freeze whole models now prune, each proven by the masked-original oracle.

    ShuffleNet v2 block:   split -> branch -> Concat -> Reshape (2, c/2) -> Transpose -> Reshape
    ShuffleNet v1 block:   grouped conv1x1 -> shuffle (g) -> dw3x3 -> grouped conv1x1 (+ input)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from graphops.scoring import score_groups
from graphops.selection import select_by_ratio
from tests import zoo
from tests.oracle import Analysed, analyse, assert_prune_matches_oracle

RATIOS = [("random", 0, 0.3), ("random", 1, 0.6), ("l1", 0, 0.5)]


def _exported(tmp_path: Path, module, shape=(1, 3, 16, 16)) -> Analysed:
    import torch

    torch.manual_seed(0)
    path = zoo.export_onnx(zoo.randomize_batchnorm(module, seed=1), shape, tmp_path / "model.onnx")
    return analyse(path, {"input": list(shape)})


def _prune_and_check(analysed: Analysed, criterion: str, seed: int, ratio: float):
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, criterion, seed=seed), ratio)
    assert plan.removed_channels > 0
    return plan, assert_prune_matches_oracle(analysed.original, plan, analysed=analysed)


def _groups_through(analysed: Analysed, op_type: str):
    nodes = {node.name: node.op_type for node in analysed.prepared.graph.node}
    return [g for g in analysed.dep.groups if any(nodes.get(n) == op_type for n in g.nodes)]


@pytest.mark.parametrize("criterion, seed, ratio", RATIOS)
@pytest.mark.parametrize("build", [zoo.shufflenet_v2_block, zoo.shufflenet_v1_block], ids=["v2", "v1"])
def test_a_channel_shuffle_is_a_permutation_the_pruning_follows(tmp_path, build, criterion, seed, ratio):
    analysed = _exported(tmp_path, build())
    shuffled = _groups_through(analysed, "Reshape")

    assert shuffled and all(g.prunable for g in shuffled), [g.frozen_reason for g in shuffled]
    _prune_and_check(analysed, criterion, seed, ratio)
