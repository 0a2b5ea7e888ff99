"""What ``onnxprune analyze`` tells users: MACs shares that add up, frozen reasons that name the node.

input -> conv_a (8) -> relu -> conv_b (8) -> + -> conv_c (4) -> output
                           \\-> CumSum (H) ----/
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from onnxprune.graphops.cost import measure_cost
from onnxprune.graphops.shares import macs_shares
from tests.support.oracle import analyse
from tests.support.small_models import residual_model
from tests.support.zoo import GraphBuilder, float_input


def _model_with_unsupported_op() -> onnx.ModelProto:
    g = GraphBuilder(2)
    a = g.node("Relu", [g.conv("input", 3, 8)])
    summed = g.node("CumSum", [a, g.constant("axis", np.array(2, dtype=np.int64))])
    y = g.node("Add", [g.conv(a, 8, 8), summed])
    return g.model([float_input("input", [1, 3, 8, 8])], g.conv(y, 8, 4), 14, "unsupported")


@pytest.mark.parametrize("build", [residual_model, _model_with_unsupported_op], ids=["residual", "unsupported"])
def test_macs_shares_of_all_groups_add_up_to_the_whole_model(build):
    analysed = analyse(build())
    cost = measure_cost(analysed.prepared, analysed.input_shapes)

    shares = macs_shares(analysed.dep, {node.name: node.macs for node in cost.nodes})

    assert set(shares) == {group.id for group in analysed.dep.groups}
    assert sum(shares.values()) == pytest.approx(1.0)


def test_a_reason_names_the_unsupported_node_that_dropped_the_channels_not_a_tensor():
    analysed = analyse(_model_with_unsupported_op())

    added = next(
        g
        for g in analysed.dep.groups
        if any(n.startswith("add") for n in g.nodes) and g.channels == 8 and "Add" in g.frozen_reason
    )
    assert added.frozen
    assert "from unsupported op CumSum node 'cumsum_" in added.frozen_reason


def test_analyze_prints_shares_that_add_up(tmp_path):
    path = tmp_path / "residual.onnx"
    onnx.save(residual_model(), path)

    result = subprocess.run(
        [sys.executable, "-m", "onnxprune.service.cli", "analyze", str(path), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    total = sum(g["macs_share"] for g in data["groups"]) + sum(g["macs_share"] for g in data["frozen"])
    assert 0.99 <= total <= 1.0 + 1e-6
