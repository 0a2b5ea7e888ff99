"""A pruned model declares intermediate shapes (value_info) only where its original declared some.

    x -> [BERT-style layer] x 2 -> y     (``tests.support.transformer_models.bert_style``, exported
                                          without value_info, as MiniLM-L3's export is)

onnxruntime decides some fusions on declared shapes (MiniLM-L3: Add + LayerNormalization into a
slower SkipLayerNormalization), so shapes the original did not declare would time a different graph.
"""

from __future__ import annotations

import onnx
import pytest

from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from onnxprune.graphops.shapes import inferred_value_info
from onnxprune.graphops.surgery import apply_plan, declare_shapes_like
from tests.support.oracle import analyse
from tests.support.transformer_models import bert_style

SHAPES = {"x": [2, 7, 32], "attention_mask": [2, 7]}


@pytest.fixture(scope="module")
def pruned():
    dep = analyse(bert_style(), SHAPES).dep
    return apply_plan(dep, select_by_ratio(dep, score_groups(dep, "l1"), 0.5))


def _declaring(model: onnx.ModelProto) -> onnx.ModelProto:
    declared = onnx.ModelProto()
    declared.CopyFrom(model)
    declared.graph.value_info.extend(inferred_value_info(declared))
    return declared


def test_surgery_declares_no_intermediate_shapes(pruned):
    assert len(pruned.graph.node) > 0
    assert list(pruned.graph.value_info) == []


def test_an_original_without_declared_shapes_gives_a_model_without_them(pruned):
    original = bert_style()
    assert list(original.graph.value_info) == []

    written = declare_shapes_like(_declaring(pruned), original)

    assert list(written.graph.value_info) == []
    assert [n.name for n in written.graph.node] == [n.name for n in pruned.graph.node]


def test_an_original_with_declared_shapes_gives_the_pruned_models_own(pruned):
    original = _declaring(bert_style())

    written = declare_shapes_like(pruned, original)

    declared = {info.name: info for info in written.graph.value_info}
    produced = {name for node in written.graph.node for name in node.output}
    assert declared and set(declared) <= produced
    # The pruned model's widths, not the original's.
    assert declared == {info.name: info for info in inferred_value_info(pruned)}
    assert list(pruned.graph.value_info) == []  # the model given is left as it was
    onnx.checker.check_model(written)
