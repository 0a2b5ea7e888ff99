"""Data-driven criteria score every prunable group from the data, in the registry beside l1."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest

from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.scoring import available_criteria, criterion_needs_data, score_groups
from onnxprune.roundtrip.context import build_context
from tests.support.oracle import analyse

DATA_CRITERIA = ["taylor", "mean-activation", "apoz", "contribution", "obs"]


@pytest.fixture(scope="module")
def analysed(small_model):
    return analyse(small_model, {"input": [1, 3, 12, 12]})


@pytest.fixture(scope="module")
def context(analysed, small_data):
    return build_context(small_data["labelled"], analysed.prepared, None, batch_size=16, score_batches=3)


def test_criteria_are_registered_and_say_whether_they_need_data():
    assert {"taylor", "mean-activation", "apoz", "contribution", "obs", "bn-gamma"} <= available_criteria()
    assert [criterion_needs_data(c) for c in DATA_CRITERIA + ["bn-gamma", "l1"]] == [True] * len(DATA_CRITERIA) + [
        False,
        False,
    ]


def test_listing_criteria_loads_neither_torch_nor_the_plugins():
    code = (
        "import sys; from graphops.scoring import available_criteria, criterion_needs_data; "
        "available_criteria(); criterion_needs_data('apoz'); print('torch' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


@pytest.mark.parametrize("criterion", DATA_CRITERIA + ["bn-gamma"])
def test_every_prunable_group_gets_one_finite_score_per_channel(analysed, context, criterion):
    scores = score_groups(analysed.dep, criterion, data=context)

    assert set(scores) == {g.id for g in analysed.dep.prunable}
    for group in analysed.dep.prunable:
        assert scores[group.id].shape == (group.channels,)
        assert np.isfinite(scores[group.id]).all()
        assert np.ptp(scores[group.id]) > 0, f"{criterion}: all channels of {group.id} scored alike"


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_criteria_without_data_are_a_user_error(analysed, criterion):
    with pytest.raises(ModelRejected, match=f"criterion '{criterion}' needs data"):
        score_groups(analysed.dep, criterion)


def test_a_filter_that_is_always_zero_ranks_last_under_every_data_criterion(analysed, small_data):
    """Zero a conv filter and its BN shift so its ReLU output is 0 everywhere: nothing depends on it."""
    from onnx import numpy_helper

    from onnxprune.graphops.dependency import analyze

    model = copy.deepcopy(analysed.prepared)
    group = next(g for g in analysed.dep.prunable if len(g.producers) == 1)
    conv = next(n for n in model.graph.node if n.name == group.producers[0])
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization" and n.input[0] == conv.output[0])
    inits = {i.name: i for i in model.graph.initializer}
    for name in (conv.input[1], bn.input[2]):
        values = numpy_helper.to_array(inits[name]).copy()
        values[2] = 0.0 if name == conv.input[1] else -1.0
        inits[name].CopyFrom(numpy_helper.from_array(values, name))
    dep = analyze(model, {"input": [1, 3, 12, 12]})
    dead = build_context(small_data["labelled"], model, None, batch_size=16, score_batches=3)

    for criterion in DATA_CRITERIA:
        scores = score_groups(dep, criterion, data=dead)[group.id]
        assert scores[2] == scores.min(), f"{criterion} did not rank the dead filter last: {scores}"


def test_coupled_residual_group_is_scored_as_a_whole(analysed, context):
    """The residual stream is read by several filters; its scores come from all of them."""
    from onnxprune.roundtrip.taps import consumer_taps

    residual = next(g for g in analysed.dep.prunable if len(g.producers) > 1)
    taps = [t for t in consumer_taps(analysed.dep, {residual.id}) if (t.groups >= 0).any()]

    assert len(taps) >= 2
    assert np.isfinite(score_groups(analysed.dep, "taylor", data=context)[residual.id]).all()


def test_taylor_flops_regularisation_lowers_expensive_layers(analysed, context):
    plain = score_groups(analysed.dep, "taylor", data=context)
    regularised = score_groups(analysed.dep, "taylor", data=context, flops_regularization=0.5)

    shifts = {gid: float(np.mean(plain[gid] - regularised[gid])) for gid in plain}
    assert all(v >= 0 for v in shifts.values()) and max(shifts.values()) == pytest.approx(0.5, rel=1e-6)


def test_taylor_without_labels_still_ranks_channels(analysed, small_data):
    unlabelled = build_context(small_data["unlabelled"], analysed.prepared, None, batch_size=16, score_batches=3)
    assert unlabelled.objective.kind == "distillation"

    scores = score_groups(analysed.dep, "taylor", data=unlabelled)

    assert all(np.ptp(s) > 0 for s in scores.values())


def _permute_first_layer(model, order: np.ndarray):
    """The same function with the first conv's filters (and its NHWC bias, and the second conv's input
    columns) in ``order``."""
    from onnx import numpy_helper

    permuted = copy.deepcopy(model)
    inits = {i.name: i for i in permuted.graph.initializer}
    convs = [n for n in permuted.graph.node if n.op_type == "Conv"]
    bias = next(n for n in permuted.graph.node if n.op_type == "Add").input[1]
    changes = {
        convs[0].input[1]: lambda w: w[order],
        bias: lambda b: b[order],
        convs[1].input[1]: lambda w: w[:, order],
    }
    for name, change in changes.items():
        inits[name].CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(inits[name])), name))
    return permuted


def test_taylor_scores_on_a_tf2onnx_nhwc_graph_follow_its_channels_not_its_layout(tmp_path):
    """tf2onnx graphs wrap every Conv in Transposes and add biases on the last (channel) axis; a score
    read off the wrong axis would not move with the channels when they are reordered."""
    from tests.support import zoo
    from tests.support.oracle import run_model

    model = zoo.nhwc_transpose_model(seed=3, width=8)
    order = np.random.default_rng(0).permutation(8)
    permuted = _permute_first_layer(model, order)
    data = tmp_path / "nhwc.npz"
    np.savez(data, input=np.random.default_rng(1).standard_normal((60, 16, 16, 3)).astype(np.float32))
    feeds = {"input": np.load(data)["input"][:1]}
    np.testing.assert_allclose(run_model(model, feeds)[0], run_model(permuted, feeds)[0], rtol=1e-4, atol=1e-5)

    scores = []
    for each in (model, permuted):
        analysed = analyse(each, {"input": [1, 16, 16, 3]})
        context = build_context(data, analysed.prepared, None, batch_size=8, score_batches=3)
        order_of = [n.name for n in analysed.prepared.graph.node].index
        first = min(analysed.dep.prunable, key=lambda g: order_of(g.producers[0]))  # the first conv's group
        scores.append(score_groups(analysed.dep, "taylor", data=context)[first.id])

    assert np.ptp(scores[0]) > 0
    np.testing.assert_allclose(scores[1], scores[0][order], rtol=1e-3, atol=1e-9)
