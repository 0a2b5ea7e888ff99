"""Distillation of a detector's head alone, on features of the pruned model computed once.

After layer-wise reconstruction a pruned detector's boxes are nearly the original's, its class scores are
not: the head's last layers see features that lost information, and a linear refit layer by layer cannot
undo a noise that only the head's nonlinear layers together can average out. Fine-tuning the whole model
would, but each of its steps runs the backbone forward and backward (9-16 s a step for YOLOv8n on two busy
cores: a few steps in a 300 s budget, which made detections worse). The head (``head_layers``: the last
linear layers before the detection output) is a small part of that: its inputs, the pruned model's
features, are computed once per sample, and only the head runs forward and backward at each step, trained
with ``detection_loss`` against the original's outputs. The weights kept are those with the lowest loss on
the validation split (the ones it starts from included), so it never makes that loss worse.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graphops.shapes import graph_inputs
from onnxprune.roundtrip.data import Dataset
from onnxprune.roundtrip.detector_outputs import YoloLayout
from onnxprune.roundtrip.executor import OnnxModule
from onnxprune.roundtrip.objective import detection_loss

# Adam's learning rate, samples per step, and steps between two checks on the validation split.
LEARNING_RATE = 5e-4
BATCH = 16
CHECK_EVERY = 10
# Steps without a deadline (with one, as many as fit before it): on YOLOv8n at 320, 1-2.5 s each on two busy cores.
STEPS = 100
# Memory the cached head inputs of the training and validation samples may take (samples beyond are left out).
FEATURE_BYTES = 1 << 30
# Samples the features are computed on at a time.
CHUNK = 16

# The original's detection output on a split, [samples, ...] (cached by the objective).
Targets = Callable[[Dataset], torch.Tensor]


@dataclass(frozen=True)
class HeadDistillation:
    model: onnx.ModelProto
    steps: int
    samples: int  # training samples the head was fit on
    loss_before: float | None  # detection loss on the validation split, as given (None: the deadline had passed)
    loss_after: float | None  # the same with the weights kept (equal to loss_before when none beat them)
    seconds: float


def head_inputs(model: onnx.ModelProto, head: Collection[str]) -> list[str]:
    """The tensors the head starts from: data inputs of head layers that no other head layer computes
    (YOLOv8's neck outputs P3, P4, P5), in graph order."""
    producer = {out: node for node in model.graph.node for out in node.output}
    by_name = {node.name: node for node in model.graph.node}

    def from_head(tensor: str) -> bool:
        pending, seen = [tensor], set()
        while pending:
            node = producer.get(pending.pop())
            if node is None or node.name in seen:
                continue
            if node.name in head:
                return True
            seen.add(node.name)
            pending.extend(name for name in node.input if name)
        return False

    starts = {by_name[name].input[0] for name in head if name in by_name}
    return [name for node in model.graph.node for name in node.output if name in starts and not from_head(name)] + [
        name for name in (i.name for i in graph_inputs(model)) if name in starts
    ]


def _part(model: onnx.ModelProto, inputs: Collection[str], outputs: list[str]) -> onnx.ModelProto:
    """The nodes of ``model`` that compute ``outputs`` from ``inputs`` (and constants), as a model. (onnx's
    ``Extractor`` wants a shape for every tensor it cuts at; float tensors are all a head starts from.)"""
    producer = {out: index for index, node in enumerate(model.graph.node) for out in node.output}
    needed: set[int] = set()
    pending = list(outputs)
    while pending:
        tensor = pending.pop()
        index = producer.get(tensor)
        if tensor in inputs or index is None or index in needed:
            continue
        needed.add(index)
        pending.extend(name for name in model.graph.node[index].input if name)
    nodes = [node for index, node in enumerate(model.graph.node) if index in needed]
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes,
        "part",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [init for init in model.graph.initializer if init.name in used],
    )
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def _features(backbone: OnnxModule, data: Dataset, count: int) -> list[torch.Tensor]:
    parts = []
    with torch.no_grad():
        for start in range(0, count, CHUNK):
            feeds = {name: array[start : start + CHUNK] for name, array in data.inputs.items()}
            parts.append(backbone.run(feeds, outputs=backbone.output_names))
    return [torch.cat(tensors) for tensors in zip(*parts)]


def distil_head(
    model: onnx.ModelProto,
    head: Collection[str],
    layout: YoloLayout,
    train: Dataset,
    validation: Dataset,
    targets: Targets,
    *,
    deadline: float | None = None,
    seed: int = 0,
    steps: int = STEPS,
) -> HeadDistillation:
    """``model`` with the weights of its ``head`` layers trained on the training split to reproduce the
    original's detection output (``targets``), the features before the head computed once; see the module
    docstring. ``deadline`` (``time.monotonic()``) bounds the whole, feature computation included."""
    started = time.monotonic()
    if deadline is not None and started >= deadline:
        return HeadDistillation(model, 0, 0, None, None, 0.0)
    output = model.graph.output[layout.index].name
    starts = head_inputs(model, head)
    backbone = OnnxModule(_part(model, [i.name for i in graph_inputs(model)], starts)).eval()
    # Evaluation mode throughout: a head's BatchNorm statistics are not what is trained (nor written back).
    head_module = OnnxModule(_part(model, starts, [output])).eval()
    probe = _features(backbone, validation, 1)
    per_sample = sum(t[0].numel() * t.element_size() for t in probe)
    room = max(2, FEATURE_BYTES // max(1, per_sample))
    checks = min(len(validation), max(1, room // 4))
    fits = min(len(train), room - checks)
    check_features, check_targets = _features(backbone, validation, checks), targets(validation)[:checks]
    features, wanted = _features(backbone, train, fits), targets(train)[:fits]
    trained = {
        name: tensor
        for name, tensor in head_module.named_trainable().items()
        if any(name in node.input[1:] for node in model.graph.node if node.name in head)
    }
    for name, tensor in head_module.named_trainable().items():
        tensor.requires_grad_(name in trained)

    def check_loss() -> float:
        with torch.no_grad():
            return float(detection_loss(head_module.run(dict(zip(starts, check_features)))[0], check_targets, layout))

    before = best = check_loss()
    kept = {name: tensor.detach().clone() for name, tensor in trained.items()}
    optimizer = torch.optim.Adam(list(trained.values()), lr=LEARNING_RATE)
    rng = np.random.default_rng(seed)
    done, per_round = 0, 0.0
    while done < steps and trained and fits:
        round_started = time.monotonic()
        if deadline is not None and round_started + per_round > deadline:
            break
        for _ in range(min(CHECK_EVERY, steps - done)):
            index = torch.from_numpy(rng.choice(fits, min(BATCH, fits), replace=False))
            out = head_module.run(dict(zip(starts, (f[index] for f in features))))[0]
            loss = detection_loss(out, wanted[index], layout)
            optimizer.zero_grad()
            torch.autograd.backward(loss)  # loss.backward(), which torch leaves unannotated
            optimizer.step()
            done += 1
        current = check_loss()
        if current < best:
            best, kept = current, {name: tensor.detach().clone() for name, tensor in trained.items()}
        per_round = time.monotonic() - round_started
    distilled = onnx.ModelProto()
    distilled.CopyFrom(model)
    for init in distilled.graph.initializer:
        if init.name in kept:
            old = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(kept[init.name].numpy().astype(old.dtype), init.name))
    return HeadDistillation(distilled, done, fits, before, best, time.monotonic() - started)
