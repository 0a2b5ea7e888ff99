"""The ``contribution`` criterion scores a head or an MLP neuron by what removing it takes out of the layers
that read it: the oracle's masked model, run in onnxruntime, must show exactly that change.

ViT-style block (``tests/support/transformer_models.vit_style``)::

    x -> LN -> Q/K/V -> heads -> attention/output/MatMul (reads each head: 8 channels) -> + x
      -> LN -> fc1 -> GELU -> fc2/MatMul (reads each neuron: 1 channel) -> + ...
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxprune.graphops.masking import mask_removed_channels
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.scoring import score_groups
from onnxprune.roundtrip.context import build_context
from onnxprune.roundtrip.taps import consumer_taps
from tests.support.oracle import analyse
from tests.support.transformer_models import vit_style

TOKENS, HIDDEN = 9, 32


@pytest.fixture(scope="module")
def analysed():
    return analyse(vit_style(hidden=HIDDEN, heads=4, ffn=64, tokens=TOKENS), {"x": [1, TOKENS, HIDDEN]})


@pytest.fixture(scope="module")
def context(analysed, tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens.npz"
    np.savez(path, x=np.random.default_rng(3).standard_normal((40, TOKENS, HIDDEN)).astype(np.float32))
    return build_context(path, analysed.prepared, None, batch_size=8, score_batches=100)


def _reader_outputs(model: onnx.ModelProto, tensors: list[str], x: np.ndarray) -> list[np.ndarray]:
    """The named intermediate tensors of ``model`` on ``x``, in onnxruntime."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(tensors, {"x": x})


def test_each_unit_scores_the_mean_norm_of_what_masking_it_takes_out_of_its_reader(analysed, context):
    dep = analysed.dep
    scores = score_groups(dep, "contribution", data=context)
    nodes = {node.name: node for node in dep.model.graph.node}
    x = context.train.inputs["x"]
    kinds = set()
    for group in dep.prunable:
        (tap,) = [t for t in consumer_taps(dep, {group.id}) if (t.groups >= 0).any()]
        reader = nodes[tap.node].output[0]
        (original,) = _reader_outputs(dep.model, [reader], x)
        for unit in (0, group.channels - 1):
            plan = PruningPlan.from_keep(dep, {group.id: [c for c in range(group.channels) if c != unit]})
            (masked,) = _reader_outputs(mask_removed_channels(dep, plan), [reader], x)
            taken_out = np.linalg.norm((original - masked).astype(np.float64), axis=-1).mean()
            assert scores[group.id][unit] == pytest.approx(taken_out, rel=1e-4), (group.id, unit)
        kinds.add(group.kind)
    assert kinds == {"head", "neuron"}


def test_a_head_whose_output_projection_rows_are_zero_ranks_last(analysed, context):
    """A head the output projection ignores adds nothing, however large its activations."""
    from onnx import numpy_helper

    from onnxprune.graphops.dependency import analyze

    model = onnx.ModelProto.FromString(analysed.prepared.SerializeToString())
    head = next(g for g in analysed.dep.prunable if g.kind == "head")
    (tap,) = [t for t in consumer_taps(analysed.dep, {head.id}) if (t.groups >= 0).any()]
    projection = next(n for n in model.graph.node if n.name == tap.node)
    weight = next(i for i in model.graph.initializer if i.name == projection.input[1])
    values = numpy_helper.to_array(weight).copy()
    values[tap.classes == 1] = 0.0  # the rows reading head 1
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))

    scores = score_groups(analyze(model, analysed.input_shapes), "contribution", data=context)[head.id]

    assert scores[1] == 0.0 and (np.delete(scores, 1) > 0).all()


def test_obs_scores_what_a_least_squares_refit_of_the_reader_cannot_rebuild(analysed, context):
    """Per unit: the reader's output without the unit, refit on the other inputs and an intercept, keeps
    a residual; ``obs`` is its root mean square per position (up to the refit's small ridge)."""
    dep = analysed.dep
    scores = score_groups(dep, "obs", data=context)
    nodes = {node.name: node for node in dep.model.graph.node}
    weights = {init.name: onnx.numpy_helper.to_array(init) for init in dep.model.graph.initializer}
    x = context.train.inputs["x"]
    for group in dep.prunable:
        (tap,) = [t for t in consumer_taps(dep, {group.id}) if (t.groups >= 0).any()]
        reader = nodes[tap.node]
        (inputs,) = _reader_outputs(dep.model, [reader.input[0]], x)
        inputs = inputs.reshape(-1, inputs.shape[-1]).astype(np.float64)
        target = inputs @ weights[reader.input[1]]
        for unit in (0, group.channels - 1):
            others = np.hstack([inputs[:, tap.classes != unit], np.ones((len(inputs), 1))])
            residual = target - others @ np.linalg.lstsq(others, target, rcond=None)[0]
            left = np.sqrt((residual**2).sum() / len(inputs))
            assert scores[group.id][unit] == pytest.approx(left, rel=0.02), (group.id, unit)


def test_obs_ranks_a_neuron_the_others_rebuild_below_a_weaker_one_they_cannot(analysed, context):
    """fc2 reading two copies of one neuron loses (almost) nothing without either; ``contribution`` still
    ranks them as any other."""
    from onnx import numpy_helper

    from onnxprune.graphops.dependency import analyze

    model = onnx.ModelProto.FromString(analysed.prepared.SerializeToString())
    neurons = next(g for g in analysed.dep.prunable if g.kind == "neuron")
    fc1 = next(n for n in model.graph.node if n.name == neurons.producers[0])
    weight = next(i for i in model.graph.initializer if i.name == fc1.input[1])
    values = numpy_helper.to_array(weight).copy()
    values[:, 1] = values[:, 0]  # neuron 1 computes what neuron 0 does (their fc1 biases aside)
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    add = next(n for n in model.graph.node if fc1.output[0] in n.input)
    bias = next(i for i in model.graph.initializer if i.name in add.input)
    b = numpy_helper.to_array(bias).copy()
    b[1] = b[0]
    bias.CopyFrom(numpy_helper.from_array(b, bias.name))
    dep = analyze(model, analysed.input_shapes)

    compensated = score_groups(dep, "obs", data=context)[neurons.id]
    plain = score_groups(dep, "contribution", data=context)[neurons.id]

    assert set(np.argsort(compensated)[:2].tolist()) == {0, 1}
    assert compensated[:2].max() < 0.2 * np.median(compensated)  # the refit's ridge leaves a little
    assert plain[:2].min() > 0.5 * np.median(plain)
