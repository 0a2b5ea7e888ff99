"""The original model's outputs for fine-tuning, computed by onnxruntime instead of the PyTorch executor.

With augmentation the teacher runs on every training batch, and in the executor (one eager PyTorch op
at a time) that was a fifth of each step (ResNet-20 at -50% MACs, 120 s at load 5: 15.6 of 74 s of
training); onnxruntime, with its fused kernels, computes the same outputs for about 40% of the CPU.
The session gets the batch axis symbolic, since the executor feeds whole batches to models exported
for one sample; ``Objective.use_runner`` uses it only where it gives the executor's outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

if TYPE_CHECKING:
    import onnxruntime

    from onnxprune.roundtrip.context import RunnerFactory
    from onnxprune.roundtrip.objective import TeacherRunner

BATCH_AXIS = "batch"


def with_outputs_per_batch(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are ``tensors`` and whose inputs take any batch size (the
    shapes inferred for one sample dropped, as they would contradict a batch)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = BATCH_AXIS
    del graph.value_info[:]
    del graph.output[:]
    graph.output.extend(onnx.ValueInfoProto(name=name) for name in tensors)
    return copy


def runner_of(original: Path) -> RunnerFactory:
    """The factory ``make_context`` asks for the teacher (the prepared model) answered with the
    original's file (``Analysis.path``): preparing folds its run-time shape subgraphs for one sample (a
    Reshape to [1, 64]), which the executor re-batches but onnxruntime cannot; the original as exported
    computes them per batch."""
    return lambda _prepared, tensors: teacher_runner(original, tensors)


def teacher_runner(path: Path, tensors: list[str]) -> TeacherRunner:
    """Runs ``tensors`` of the model at ``path`` in a CPU session (the job's threads, passive waits),
    made on first use (so that a model onnxruntime refuses fails the probe, not the job)."""
    session: list[onnxruntime.InferenceSession] = []

    def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not session:
            from onnxprune.workers.ort_sessions import cpu_session

            session.append(cpu_session(with_outputs_per_batch(onnx.load(path), tensors).SerializeToString()))
        outputs: list[np.ndarray] = session[0].run(tensors, inputs)
        return outputs

    return run
