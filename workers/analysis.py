"""The front half every command shares: load, validate, prepare, analyse and cost a model.

``prune`` (the pipeline), ``analyze``, ``sensitivity`` and the tests all start from one
:class:`Analysis`, built by :func:`analyse_model`, so the steps and their order exist once.
"""

from __future__ import annotations

import gc
import hashlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxprune.graphops.cost import ModelCost, measure_cost
from onnxprune.graphops.dependency import DependencyGraph, analyze
from onnxprune.graphops.input_shapes import choose_input_shapes
from onnxprune.graphops.loading import inline_local_functions, parse_model, read_model_file, validate_model
from onnxprune.graphops.prepare import prepare_model
from onnxprune.graphops.shapes import skeleton

# A stage timer: ``stage("load")`` is a context manager (the pipeline's progress reporter).
StageTimer = Callable[[str], AbstractContextManager[None]]


@dataclass
class Analysis:
    """A model as the pruner sees it: the original as loaded, the prepared graph that is pruned
    (constant weights folded, nodes named), its channel groups and its cost."""

    path: Path
    sha256: str
    # The model as loaded, without its large weights (``graphops.shapes.skeleton``): its interface and
    # nodes; the prepared model holds the weights, and one copy of a big model's weights is enough.
    original: onnx.ModelProto = field(repr=False)
    prepared: onnx.ModelProto = field(repr=False)
    dep: DependencyGraph = field(repr=False)
    cost: ModelCost = field(repr=False)
    input_shapes: dict[str, list[int]]
    # Which size symbolic input dims were probed at (``graphops.input_shapes``), one line per input.
    input_shape_notes: list[str] = field(default_factory=list)

    @property
    def node_macs(self) -> dict[str, int]:
        return {node.name: node.macs for node in self.cost.nodes}


def output_shapes(analysis: Analysis) -> list[tuple[int | str | None, ...] | None]:
    """The graph outputs' shapes at the analysed input sizes (None where inference did not reach)."""
    return [analysis.dep.shapes.get(output.name) for output in analysis.prepared.graph.output]


def detector_output(analysis: Analysis, mode: str) -> str | None:
    """The name of the output with a YOLO detector's shape (``--detector`` 'auto' or 'yolo'), or None;
    'auto' also wants its scores from a Sigmoid (the shape alone fits a transformer's hidden states)."""
    from onnxprune.roundtrip.detector_outputs import scores_from_sigmoid, yolo_shaped_output

    layout = yolo_shaped_output(output_shapes(analysis), mode)
    if layout is None:
        return None
    name: str = analysis.prepared.graph.output[layout.index].name
    if mode == "auto" and not scores_from_sigmoid(analysis.prepared.graph, name):
        return None
    return name


def _no_stages(_name: str) -> AbstractContextManager[None]:
    return nullcontext()


def analyse_model(
    path: Path,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    stage: StageTimer = _no_stages,
    data_file: Path | None = None,
) -> Analysis:
    """Load and check ``path``, fold it into the graph the pruner works on, find its channel groups.
    With ``data_file``, symbolic input dims the data's arrays fix (a sentence length) are analysed at that size.

    Raises :class:`graphops.errors.ModelRejected` for models that cannot be pruned (the user's input)."""
    path = Path(path)
    with stage("load"):
        data = read_model_file(path)
        with ThreadPoolExecutor(1) as pool:  # hashlib releases the GIL: hash while protobuf parses
            digest = pool.submit(hashlib.sha256, data)
            original = parse_model(data)
            sha256 = digest.result().hexdigest()
        del data
    with stage("validate"):
        validate_model(original)
        if original.functions:  # the pruner, and onnxruntime for a function of the default domain, need plain ops
            original = inline_local_functions(original)
            path = _saved_inlined(original, path)
        from_data = None
        if data_file is not None:
            from onnxprune.roundtrip.data import array_shapes  # numpy only: no torch

            from_data = array_shapes(data_file, original)
        shape_choice = choose_input_shapes(original, input_shapes, from_data)  # probes symbolic image sizes
        shapes = shape_choice.shapes
    with stage("analyze"):
        prepared = prepare_model(original)
        dep = analyze(prepared, shapes)
        cost = measure_cost(prepared, shapes)
    analysis = Analysis(path, sha256, skeleton(original), prepared, dep, cost, shapes, shape_choice.notes)
    del original
    # onnx-graphsurgeon's graphs are reference cycles (nodes <-> tensors); the ones prepare and analyze
    # built still reference the original's weights. Collect them now, not whenever the collector runs.
    gc.collect()
    return analysis


def _saved_inlined(model: onnx.ModelProto, path: Path) -> Path:
    """Where the stages that run the original from a file (benchmark, fidelity, evaluation) find it inlined:
    beside the temporary files of this process (a job's sandbox directory), never beside the user's file."""
    folder = Path(tempfile.mkdtemp(prefix="onnxprune-inlined-"))
    inlined = folder / path.name
    onnx.save(model, inlined)
    return inlined
