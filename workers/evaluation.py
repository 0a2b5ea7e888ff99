"""How good a model is on held-out data: accuracy with labels, fidelity to the original without.

Accuracy is top-1 on the first output (``argmax`` over axis 1, ``[N, C]`` or ``[N, C, 1, 1]``).
Fidelity is the mean, over samples, of the cosine similarity between a model's outputs and the
original model's outputs on the same sample (all floating-point outputs of a sample flattened together): 1.0 for
the original, lower as pruning changes what the model computes. It needs no labels, so it works
for any model, and on synthetic inputs it is a proxy, reported as such.

onnxruntime runs in sandboxed child processes (``workers.sandbox``); each child builds one session
per model and feeds it all the data in batches. A model whose batch dim is fixed (exporters often
write 1) is tried with a symbolic batch dim; if that runs and agrees with sample-by-sample runs on
the first samples it is fed in batches, otherwise sample by sample (a Reshape folded to batch 1,
say). Each model is checked on its own: pruning can fold shapes differently than the original.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxprune.graphops.errors import ModelRejected
from onnxprune.roundtrip.data import Dataset
from onnxprune.workers.sandbox import RunnerLimits, run_in_child

if TYPE_CHECKING:
    from onnxruntime import InferenceSession  # imported in the sandboxed child, where sessions run

    from onnxprune.workers.report import HeldOutEvaluation

ACCURACY = "accuracy"
FIDELITY = "fidelity"
BATCH = 64
_AGREEMENT_RTOL = 1e-4

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Evaluator:
    """Scores models of one graph on one dataset; built once from the original model."""

    data: Dataset
    reference: Outputs  # the original model's outputs on ``data``
    limits: RunnerLimits
    source: str  # where the numbers come from: "labels", "original outputs", "synthetic inputs"

    @property
    def metric(self) -> str:
        return ACCURACY if self.data.labels is not None else FIDELITY

    @property
    def baseline(self) -> float:
        """The original model's score (fidelity of a model to itself is 1)."""
        return score_outputs(self.reference, self.data.labels, self.reference)

    def score(self, paths: Sequence[Path]) -> list[float]:
        """One score per model, in one child process (one session per model)."""
        args = ([str(p) for p in paths], self.data.inputs, self.data.labels, self.reference)
        return run_in_child(_score_models, args, limits=self.limits)

    def detections(self, path: Path, mode: str, confidence: float) -> dict[str, Any] | None:
        """Agreement of ``path``'s detections with the original's (``workers.detection``), or None
        when no output is a detector's (``mode``: 'auto', 'yolo' or 'none')."""
        if mode == "none":
            return None
        args = (str(path), self.data.inputs, self.reference, mode, confidence)
        return run_in_child(_detection_agreement, args, limits=self.limits)

    def detection_map50(self, paths: Sequence[Path], mode: str, confidence: float) -> list[float | None]:
        """Each model's mAP50 against the original's detections, in one child process (None: no output
        is a detector's, or the original found no box at ``confidence``)."""
        args = ([str(p) for p in paths], self.data.inputs, self.reference, mode, confidence)
        return run_in_child(_detection_map50, args, limits=self.limits)

    def detection_losses(self, paths: Sequence[Path], mode: str) -> list[float | None]:
        """Each model's detection loss against the original's outputs (``roundtrip.objective.detection_loss``:
        boxes where the original detects, class scores and logits), in one child process (None: no
        output is a detector's). Continuous where mAP50 on a few boxes is a step function of them."""
        args = ([str(p) for p in paths], self.data.inputs, self.reference, mode)
        return run_in_child(_detection_losses, args, limits=self.limits)


def make_evaluator(
    original: Path, data: Dataset, *, limits: RunnerLimits = RunnerLimits(), synthetic: bool = False
) -> Evaluator:
    """Run the original once: its outputs are the fidelity reference (and give its accuracy)."""
    reference = run_in_child(_outputs, (str(original), data.inputs), limits=limits)
    if data.labels is not None:
        _check_classifier(reference, data.labels)
        source = "labels"
    else:
        source = "synthetic inputs" if synthetic else "original outputs"
    return Evaluator(data, reference, limits, source)


def synthetic_dataset(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None, samples: int, seed: int = 0
) -> Dataset:
    """Standard-normal samples for each input (no labels): the proxy when a user has no data."""
    from onnxprune.workers.benchmark import make_inputs

    draws = [make_inputs(model, input_shapes, seed + i) for i in range(samples)]
    return Dataset({name: np.concatenate([d[name] for d in draws]) for name in draws[0]}, None)


def score_outputs(outputs: Outputs, labels: np.ndarray | None, reference: Outputs) -> float:
    return accuracy(outputs, labels) if labels is not None else fidelity(outputs, reference)


def accuracy(outputs: Outputs, labels: np.ndarray) -> float:
    logits = next(iter(outputs.values()))
    predicted = logits.reshape(len(logits), -1).argmax(axis=1)
    return float(np.mean(predicted == labels))


def fidelity(outputs: Outputs, reference: Outputs) -> float:
    """Mean per-sample cosine similarity to ``reference`` (outputs matched by position)."""
    count = len(next(iter(reference.values())))
    # Integer outputs (token ids passed through, as sentence encoders return them) are left out: their
    # magnitudes would swamp the embeddings' cosine.
    floating = [i for i, o in enumerate(reference.values()) if np.issubdtype(np.asarray(o).dtype, np.floating)]
    keep = set(floating) if floating else set(range(len(reference)))
    got = np.concatenate(
        [np.asarray(o, np.float64).reshape(count, -1) for i, o in enumerate(outputs.values()) if i in keep], axis=1
    )
    want = np.concatenate(
        [np.asarray(o, np.float64).reshape(count, -1) for i, o in enumerate(reference.values()) if i in keep], axis=1
    )
    if got.shape != want.shape:
        return 0.0
    dot = np.sum(got * want, axis=1)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    same = np.all(got == want, axis=1)
    cosine = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), np.where(same, 1.0, 0.0))
    return float(np.mean(cosine))


def _check_classifier(reference: Outputs, labels: np.ndarray) -> None:
    name, logits = next(iter(reference.items()))
    classes = int(np.prod(logits.shape[1:])) if logits.ndim > 1 else 0
    if classes < 2:
        raise ModelRejected(f"accuracy needs class scores in the first output; {name!r} has shape {logits.shape}")
    if labels.min() < 0 or labels.max() >= classes:
        raise ModelRejected(f"labels range over [{labels.min()}, {labels.max()}], the model has {classes} classes")


def with_symbolic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose inputs' and outputs' first dim is symbolic; intermediate shapes are dropped."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initializers = {init.name for init in copy.graph.initializer}
    for value in [*copy.graph.input, *copy.graph.output]:
        if value.name in initializers or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "onnxprune_batch"
    del copy.graph.value_info[:]
    return copy


# ---- what runs in the child process ----------------------------------------------------------


def _session(model: onnx.ModelProto | bytes) -> InferenceSession:
    from onnxprune.workers.ort_sessions import cpu_session

    # One thread: the sensitivity sweep runs as many of these side by side as the job has threads.
    return cpu_session(model if isinstance(model, bytes) else model.SerializeToString(), threads=1)


def _load(path: str) -> onnx.ModelProto:
    from onnxprune.graphops.loading import parse_model

    return parse_model(Path(path).read_bytes())  # refuses external data before onnxruntime reads it


def _run_all(session: InferenceSession, inputs: Mapping[str, np.ndarray], batch: int | None) -> Outputs:
    """Outputs on every sample; ``batch`` None means the model's own fixed batch size."""
    count = len(next(iter(inputs.values())))
    step = batch or max(1, int(session.get_inputs()[0].shape[0]))
    names = [o.name for o in session.get_outputs()]
    pieces: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, count, step):
        feed = {k: v[start : start + step] for k, v in inputs.items()}
        short = step - len(next(iter(feed.values())))
        if short and batch is None:  # a fixed batch: pad with the last sample, drop its outputs
            feed = {k: np.concatenate([v, np.repeat(v[-1:], short, axis=0)]) for k, v in feed.items()}
        results = session.run(names, feed)
        for piece, result in zip(pieces, results):
            piece.append(result[: step - short] if short and batch is None else result)
    return {name: np.concatenate(piece) for name, piece in zip(names, pieces)}


def _fixed_batch(session: InferenceSession) -> bool:
    return all(isinstance(i.shape[0], int) for i in session.get_inputs() if i.shape)


def _model_outputs(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> Outputs:
    session = _session(model)
    if not _fixed_batch(session):
        return _run_all(session, inputs, BATCH)
    try:
        batched = _session(with_symbolic_batch(model))
        first = {k: v[:2] for k, v in inputs.items()}
        agrees = all(
            got.shape == want.shape
            and np.allclose(got, want, rtol=_AGREEMENT_RTOL, atol=_AGREEMENT_RTOL * max(1.0, float(np.abs(want).max())))
            for got, want in zip(_run_all(batched, first, BATCH).values(), _run_all(session, first, None).values())
        )
    except Exception:  # the graph hard-codes its batch size somewhere: run sample by sample
        agrees = False
    return _run_all(batched, inputs, BATCH) if agrees else _run_all(session, inputs, None)


def _outputs(path: str, inputs: Mapping[str, np.ndarray]) -> Outputs:
    return _model_outputs(_load(path), inputs)


def _score_models(
    paths: list[str], inputs: Mapping[str, np.ndarray], labels: np.ndarray | None, reference: Outputs
) -> list[float]:
    return [score_outputs(_model_outputs(_load(path), inputs), labels, reference) for path in paths]


def _detection_agreement(
    path: str, inputs: Mapping[str, np.ndarray], reference: Outputs, mode: str, confidence: float
) -> dict[str, Any] | None:
    from onnxprune.workers.detection import detection_agreement, find_layout

    found = find_layout(reference, mode)
    if found is None:
        return None
    name, layout = found
    outputs = list(_model_outputs(_load(path), inputs).values())  # surgery keeps outputs and their order
    return {"output": name, **detection_agreement(reference[name], outputs[layout.index], layout, confidence)}


def _detection_map50(
    paths: list[str], inputs: Mapping[str, np.ndarray], reference: Outputs, mode: str, confidence: float
) -> list[float | None]:
    from onnxprune.workers.detection import detection_agreement, find_layout

    found = find_layout(reference, mode)
    if found is None:
        return [None] * len(paths)
    name, layout = found
    scores = []
    for path in paths:
        outputs = list(_model_outputs(_load(path), inputs).values())
        scores.append(detection_agreement(reference[name], outputs[layout.index], layout, confidence)["map50"])
    return scores


def _detection_losses(
    paths: list[str], inputs: Mapping[str, np.ndarray], reference: Outputs, mode: str
) -> list[float | None]:
    import torch

    from onnxprune.roundtrip.objective import detection_loss
    from onnxprune.workers.detection import find_layout

    found = find_layout(reference, mode)
    if found is None:
        return [None] * len(paths)
    name, layout = found
    target = torch.from_numpy(np.asarray(reference[name], np.float32))
    losses: list[float | None] = []
    for path in paths:
        outputs = list(_model_outputs(_load(path), inputs).values())
        student = torch.from_numpy(np.asarray(outputs[layout.index], np.float32))
        losses.append(float(detection_loss(student, target, layout)))
    return losses


def held_out_evaluation(
    original: Path,
    pruned: Path,
    data: Dataset,
    *,
    split: str,
    limits: RunnerLimits = RunnerLimits(),
    detector: str = "none",
    detection_confidence: float = 0.25,
    evaluator: Evaluator | None = None,
) -> HeldOutEvaluation:
    """Before/after scores of ``pruned`` against ``original`` on ``data`` (a report entry); with
    ``detector`` 'auto' or 'yolo', also the agreement of its detections with the original's.
    ``evaluator``: one made from ``original`` on ``data`` already (it holds the original's outputs), so
    that scoring several models of one job runs the original once."""
    from onnxprune.workers.report import DetectionAgreement, HeldOutEvaluation

    evaluator = evaluator or make_evaluator(original, data, limits=limits)
    agreement = evaluator.detections(pruned, detector, detection_confidence)
    return HeldOutEvaluation(
        metric=evaluator.metric,
        source=evaluator.source,
        samples=len(data),
        split=split,
        before=evaluator.baseline,
        after=evaluator.score([pruned])[0],
        detections=None if agreement is None else DetectionAgreement.model_validate(agreement),
    )
