"""Trained weights go back into the same graph by name, and onnxruntime then computes what torch did."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from onnxprune.graphops.loading import load_model
from onnxprune.graphops.prepare import prepare_model
from onnxprune.roundtrip.context import build_context
from onnxprune.roundtrip.executor import OnnxModule
from onnxprune.roundtrip.training import finetune, outputs_on
from onnxprune.roundtrip.writeback import changed_initializers, write_back
from tests.support.bn_net import samples
from tests.support.oracle import relative_error, run_model


def test_a_few_training_steps_written_back_run_in_onnxruntime_as_in_torch(small_model, small_data):
    prepared = prepare_model(load_model(small_model))
    context = build_context(small_data["labelled"], prepared, None, batch_size=16, score_batches=2)
    module = OnnxModule(prepared)

    losses = finetune(module, context.objective, context.train, steps=5, lr=0.05, batch_size=16).losses
    trained = write_back(prepared, module)
    x = samples(6, seed=7)

    assert len(losses) == 5
    assert relative_error(outputs_on(module, {"input": x})["output"], run_model(trained, {"input": x})[0]) < 1e-4
    assert relative_error(run_model(prepared, {"input": x})[0], run_model(trained, {"input": x})[0]) > 1e-3


def test_write_back_changes_only_initializer_values_never_the_graph(small_model, small_data):
    prepared = prepare_model(load_model(small_model))
    context = build_context(small_data["unlabelled"], prepared, None, batch_size=16, score_batches=2)
    module = OnnxModule(prepared)
    finetune(module, context.objective, context.train, steps=2, lr=0.05, batch_size=16)
    with torch.no_grad():
        module.tensor(next(iter(module.named_trainable()))).add_(1.0)  # surely changed

    trained = write_back(prepared, module)

    assert [n.SerializeToString() for n in trained.graph.node] == [n.SerializeToString() for n in prepared.graph.node]
    assert [(i.name, i.data_type, list(i.dims)) for i in trained.graph.initializer] == [
        (i.name, i.data_type, list(i.dims)) for i in prepared.graph.initializer
    ]
    assert list(trained.graph.input) == list(prepared.graph.input) and list(trained.graph.output) == list(
        prepared.graph.output
    )
    changed = set(changed_initializers(prepared, trained))
    assert changed and changed <= module.trainable_names | module.statistics_names
    onnx.checker.check_model(trained, full_check=True)


def test_untrained_module_writes_back_the_same_values(small_model):
    prepared = prepare_model(load_model(small_model))

    assert changed_initializers(prepared, write_back(prepared, OnnxModule(prepared))) == []
    assert np.isfinite(run_model(write_back(prepared, OnnxModule(prepared)), {"input": samples(1)})[0]).all()
