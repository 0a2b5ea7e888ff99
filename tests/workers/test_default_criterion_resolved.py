"""Criterion 'auto' (the default with data) resolved once the model is analysed (``workers.default_criterion``):
obs with MLP neurons first and attention heads last for a transformer at a MACs target, taylor for the rest.

    x -> [MatMul Q/K/V -> heads -> MatMul Wo -> Add, LayerNorm -> MLP fc1 -> fc2 -> Add, LayerNorm] x 2 -> y
                                               (``tests.support.transformer_models.bert_style``)
"""

from __future__ import annotations

import onnx
import pytest

from onnxprune.graphops.kinds import most_removable
from onnxprune.workers.analysis import analyse_model
from onnxprune.workers.default_criterion import resolve_default_criterion, transformer_share
from onnxprune.workers.options import PruneOptions
from tests.support.small_models import residual_model
from tests.support.transformer_models import bert_style

SHAPES = {"x": [2, 7, 32], "attention_mask": [2, 7]}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert") / "bert.onnx"
    onnx.save(bert_style(), path)
    return analyse_model(path, SHAPES)


def _heads_held(analysis) -> list[int | None]:
    return [g.max_removed for g in analysis.dep.prunable if g.kind == "head"]


def test_a_transformer_at_a_macs_target_gets_obs_with_the_heads_whole_while_neurons_reach_it(bert):
    options = PruneOptions(criterion="auto", flops_target=0.2, input_shapes=SHAPES)

    resolved, analysis, notes = resolve_default_criterion(bert, options)

    assert transformer_share(bert.dep, bert.node_macs) > 0.5
    assert resolved.criterion == "obs" and resolved.flops_target == 0.2
    assert _heads_held(analysis) == [0, 0] and _heads_held(bert) == [None, None]
    assert [g.max_removed for g in analysis.dep.prunable if g.kind == "neuron"] == [None, None]
    assert any("heads left whole" in note for note in notes)
    # the report names the default as what held them, not a prune_kinds the user never gave
    assert {g.limited_by for g in analysis.dep.prunable if g.kind == "head"} == {"criterion auto (obs): heads last"}


def test_heads_are_cut_too_where_neurons_alone_cannot_reach_the_target(bert):
    _, held, _ = resolve_default_criterion(bert, PruneOptions(criterion="auto", flops_target=0.1))
    beyond = round(most_removable(held.dep, bert.node_macs) + 0.05, 2)  # past what neurons alone remove

    resolved, analysis, notes = resolve_default_criterion(bert, PruneOptions(criterion="auto", flops_target=beyond))

    assert _heads_held(held) == [0, 0] and resolved.criterion == "obs"
    assert analysis is bert and _heads_held(analysis) == [None, None]
    assert any("heads cut too" in note for note in notes)


@pytest.mark.parametrize(
    ("given", "criterion"),
    [
        ({"criterion": "auto", "ratio": 0.3}, "taylor"),  # not a MACs target
        ({"criterion": "auto", "latency_target": 0.7}, "taylor"),  # cuts heads last on its own
        ({"criterion": "taylor", "flops_target": 0.2}, "taylor"),  # chosen: kept, every kind
        ({"criterion": "obs", "flops_target": 0.2}, "obs"),
    ],
)
def test_other_targets_and_a_chosen_criterion_keep_every_kind(bert, given, criterion):
    resolved, analysis, notes = resolve_default_criterion(bert, PruneOptions(**given))

    assert resolved.criterion == criterion
    assert analysis is bert and notes == []


def test_user_kind_limits_are_kept_as_given(bert):
    options = PruneOptions(criterion="auto", flops_target=0.2, prune_kinds=["head", "neuron"], max_neuron_ratio=0.5)

    resolved, analysis, notes = resolve_default_criterion(bert, options)

    assert resolved.criterion == "obs" and analysis is bert and len(notes) == 1


def test_a_conv_net_gets_taylor_and_its_analysis_unchanged(tmp_path):
    onnx.save(residual_model(), tmp_path / "cnn.onnx")
    analysis = analyse_model(tmp_path / "cnn.onnx")

    resolved, after, notes = resolve_default_criterion(analysis, PruneOptions(criterion="auto", flops_target=0.3))

    assert transformer_share(analysis.dep, analysis.node_macs) == 0.0
    assert resolved.criterion == "taylor" and after is analysis and notes == []
