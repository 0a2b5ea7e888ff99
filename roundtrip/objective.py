"""What fine-tuning and the Taylor criterion optimise: the task loss and the original model.

Recovery always distils the original model (Hinton et al. 2015): KL divergence between
temperature-softened class scores (scaled by T^2 so its gradients keep their size) for classifier
outputs, variance-normalised MSE for any other output. With labels, cross-entropy on the class
scores is added: the labels anchor the task, the teacher's soft targets carry what a few thousand
samples cannot (which wrong classes are close). The original's outputs ("targets") are computed once
per dataset where they fit in memory, or per batch when the inputs are augmented.

A detector's raw head (``roundtrip.detector_outputs``: YOLO boxes and class scores per anchor) is
distilled for its detections, not its numbers: a plain MSE on ``[batch, 4 + classes, anchors]`` is
ruled by box coordinates in pixels, across thousands of background anchors whose boxes nobody
keeps. ``detection_loss`` fits boxes only where the teacher is confident, weighted by its score,
and class scores everywhere (a background anchor that starts scoring is a false detection), in logit
space too where the teacher detects; ``sampled_detection_loss`` is its counterpart for the Taylor
criterion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from onnxprune.graphops.errors import ModelRejected
from onnxprune.roundtrip.data import Batch, Dataset
from onnxprune.roundtrip.detector_outputs import BOX_VALUES, YoloLayout, find_yolo_layout
from onnxprune.roundtrip.executor import OnnxModule

# Targets of a whole dataset are cached when they take less than this.
TARGET_CACHE_BYTES = 512 << 20
# Distillation temperature and, with labels, the weight of the hard-label cross-entropy.
TEMPERATURE = 4.0
LABEL_WEIGHT = 0.5
# Detectors: box regression counts at anchors whose best teacher class score exceeds this.
BOX_CONFIDENCE = 0.05
# Weight of intermediate-feature matching (``FeatureMatch``) beside the output objective.
FEATURE_WEIGHT = 1.0
_EPS = 1e-12
_PROBABILITY_EPS = 1e-6
# How close an inference runtime's teacher outputs must be to the executor's to stand in for them
# (relative to the output's largest magnitude: fused kernels sum in another order).
RUNNER_TOLERANCE = 1e-3

# The teacher's ``tensors`` on a batch's inputs, computed by an inference runtime (numpy in and out).
TeacherRunner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]

# Detectors: weight of the class-logit error at the anchors where the teacher detects, and how close
# to 0 a score may come before its logit is taken (logit -27.6; 1 / score stays far inside float32).
LOGIT_WEIGHT = 1.0
_LOGIT_EPS = 1e-12


def _logit_tensors(model: onnx.ModelProto) -> list[str]:
    """For each graph output, the tensor to train on: the input of a final Softmax (its logits)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    names = []
    for output in model.graph.output:
        node = producer.get(output.name)
        names.append(node.input[0] if node is not None and node.op_type == "Softmax" else output.name)
    return names


def _anchor_major(out: torch.Tensor, target: torch.Tensor, layout: YoloLayout) -> tuple[torch.Tensor, torch.Tensor]:
    return (out.transpose(1, 2), target.transpose(1, 2)) if layout.anchors_last else (out, target)


def score_logits(scores: torch.Tensor) -> torch.Tensor:
    """The inverse sigmoid of a head's class scores: the logits the exported graph turned into scores.

    A pruned model whose scores slid from 0.2 to 1e-5 is 10 logits off; the Bernoulli KL's gradient on
    that logit is only the score difference (0.2), and none once the score falls under the KL's clamp.
    An error on the logits keeps its size. Autograd through ``sigmoid -> logit`` is the identity, so the
    student's gradient reaches its pre-sigmoid logits unscaled.
    """
    clamped = scores.clamp(_LOGIT_EPS, 1 - torch.finfo(scores.dtype).eps)
    return torch.log(clamped) - torch.log1p(-clamped)


def detection_loss(out: torch.Tensor, target: torch.Tensor, layout: YoloLayout) -> torch.Tensor:
    """Box error where the teacher detects (weighted by its confidence) plus class-score error everywhere.

    Boxes: L1 of (cx, cy, w, h) relative to the teacher box's size, averaged with weight ``conf``
    over anchors with ``conf > BOX_CONFIDENCE`` (``conf``: the teacher's best class score); zero
    when the teacher detects nothing in the batch. Scores: Bernoulli KL divergence from the
    teacher's to the student's sigmoid score of every class at every anchor, per unit of the
    teacher's total score (so a batch with few objects weighs as much as one with many), plus the
    Huber error (smooth L1: gradients bounded, so a collapsed score cannot blow fine-tuning up) of the
    class logits (``score_logits``) at those same anchors, weighted by the teacher's confidence: the KL
    alone pulls a collapsed score back weakly, and not at all under its clamp.
    """
    out, target = _anchor_major(out, target, layout)
    student_box, teacher_box = out[..., :BOX_VALUES], target[..., :BOX_VALUES]
    student_score = out[..., BOX_VALUES:].clamp(_PROBABILITY_EPS, 1 - _PROBABILITY_EPS)
    teacher_score = target[..., BOX_VALUES:].clamp(_PROBABILITY_EPS, 1 - _PROBABILITY_EPS)
    confidence = target[..., BOX_VALUES:].amax(dim=-1)
    weight = torch.where(confidence > BOX_CONFIDENCE, confidence, torch.zeros_like(confidence))
    total_weight = weight.sum().clamp_min(_EPS)
    size = teacher_box[..., 2:].mean(dim=-1, keepdim=True).clamp_min(1.0)
    box_error = ((student_box - teacher_box).abs() / size).sum(dim=-1)
    box = (weight * box_error).sum() / total_weight
    divergence = teacher_score * torch.log(teacher_score / student_score) + (1 - teacher_score) * torch.log(
        (1 - teacher_score) / (1 - student_score)
    )
    scores = divergence.sum() / target[..., BOX_VALUES:].sum().clamp_min(1.0)
    logit_error = F.smooth_l1_loss(
        score_logits(out[..., BOX_VALUES:]), score_logits(target[..., BOX_VALUES:]), reduction="none"
    ).mean(-1)
    logits = LOGIT_WEIGHT * (weight * logit_error).sum() / total_weight
    return box + scores + logits


def sampled_detection_loss(
    out: torch.Tensor, target: torch.Tensor, layout: YoloLayout, generator: torch.Generator
) -> torch.Tensor:
    """``detection_loss``'s counterpart for the Taylor criterion, summed over samples.

    Each class score is a Bernoulli variable: a label is drawn from the teacher's score and the
    student's logit is scored by binary cross-entropy (its gradient, student score minus label, has
    the distillation gradient as expectation and the Bernoulli variance p(1 - p) as spread, so the
    anchors the teacher is unsure or confident about weigh, not the thousands it calls background).
    Boxes get Gaussian noise of the teacher box's size where the teacher detects, weighted by its
    confidence. A noise of the whole output's scale, as for other outputs, would be ruled by box
    pixels and rank the class-score path as unimportant: pruning it first collapses every score.
    """
    out, target = _anchor_major(out, target, layout)
    teacher_score = target[..., BOX_VALUES:].clamp(0.0, 1.0)
    drawn = torch.bernoulli(teacher_score.double(), generator=generator).to(out.dtype)
    scores = F.binary_cross_entropy_with_logits(score_logits(out[..., BOX_VALUES:]), drawn, reduction="sum")
    confidence = target[..., BOX_VALUES:].amax(dim=-1)
    weight = torch.where(confidence > BOX_CONFIDENCE, confidence, torch.zeros_like(confidence))
    size = target[..., 2:BOX_VALUES].mean(dim=-1, keepdim=True).clamp_min(1.0)
    teacher_box = target[..., :BOX_VALUES]
    noisy = teacher_box + size * torch.randn(teacher_box.shape, generator=generator, dtype=teacher_box.dtype)
    box = 0.5 * (weight[..., None] * ((out[..., :BOX_VALUES] - noisy) / size).pow(2)).sum()
    return scores + box


def _is_classifier(tensor: torch.Tensor) -> bool:
    return tensor.dim() == 2 and tensor.shape[1] > 1 and tensor.is_floating_point()


class _Cached:
    """The teacher's outputs on a dataset, per sample, and which samples hold them already."""

    def __init__(self, outputs: list[np.ndarray], samples: int) -> None:
        self.outputs, self.filled = outputs, np.zeros(samples, dtype=bool)


@dataclass
class Objective:
    """The loss of a student module's ``tensors`` against labels or the teacher's same tensors."""

    teacher: OnnxModule
    tensors: list[str]
    use_labels: bool
    classifier: list[bool] = field(default_factory=list)
    detector: YoloLayout | None = None  # the output distilled by ``detection_loss``
    # Computes the teacher's ``tensors`` where no cache holds them (augmented batches: once per step);
    # None: the executor does. Set by ``use_runner`` once it matched the executor.
    runner: TeacherRunner | None = field(default=None, repr=False)
    _cache: dict[int, _Cached] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        return "cross-entropy + distillation" if self.use_labels else "distillation"

    def teacher_outputs(
        self, batch: Batch, dataset: Dataset | None = None, also: Sequence[str] = ()
    ) -> list[torch.Tensor]:
        """The teacher's ``tensors`` on ``batch`` (cached per sample of ``dataset`` when it was
        cached), followed by its tensors ``also`` (never cached: features of augmented batches)."""
        cached = self._cache.get(id(dataset)) if dataset is not None and not also else None
        if cached is not None:
            missing = ~cached.filled[batch.indices]
            if missing.any():  # computed once, when a batch first asks for them
                part = {name: array[missing] for name, array in batch.inputs.items()}
                fresh = self.teacher_outputs(Batch(part, None, batch.indices[missing]))
                for array, tensor in zip(cached.outputs, fresh):
                    array[batch.indices[missing]] = tensor.numpy()
                cached.filled[batch.indices[missing]] = True
            return [torch.from_numpy(a[batch.indices]) for a in cached.outputs]
        if self.runner is not None and not also:
            return [torch.from_numpy(a) for a in self.runner(batch.inputs)]
        with torch.no_grad():
            return [t.detach() for t in self.teacher.run(batch.inputs, outputs=[*self.tensors, *also])]

    def use_runner(self, runner: TeacherRunner, probes: Sequence[Batch]) -> str | None:
        """Let ``runner`` compute the teacher's outputs if it gives the executor's on every probe batch
        (which should differ in size: a Reshape that fixes the batch fails one). An inference runtime
        runs the teacher in a fraction of the executor's CPU time (ResNet-20, batch 32: 0.026 against
        0.064 CPU-seconds on 2 threads), and with augmentation the teacher runs at every step.
        Returns why it was refused, None when it is used."""
        for batch in probes:
            with torch.no_grad():
                expected = [t.detach().numpy() for t in self.teacher.run(batch.inputs, outputs=self.tensors)]
            try:
                got = runner(batch.inputs)
            except Exception as exc:  # noqa: BLE001 - the runtime's own error classes; the executor stays
                return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            for name, want, have in zip(self.tensors, expected, got):
                scale = float(np.abs(want).max()) if want.size and want.dtype.kind == "f" else 1.0
                if want.shape != have.shape or not np.allclose(have, want, rtol=0, atol=RUNNER_TOLERANCE * scale):
                    return f"its '{name}' differs from the executor's on a batch of {len(batch.indices)}"
        self.runner = runner
        return None

    def cache_targets(self, dataset: Dataset, batch_size: int) -> None:
        """Keep the teacher's outputs on ``dataset``, if they fit in TARGET_CACHE_BYTES, each sample's
        computed when a batch first asks for it: a job whose budget allows one scoring batch and no
        fine-tuning never runs the teacher on the rest (ViT-S at 224: about 20 s of a 300 s budget on a
        busy 2-core machine). ``batch_size``: kept for callers; batches come from the askers."""
        probe = next(dataset.batches(1))
        first = self.teacher_outputs(probe)
        per_sample = sum(t[0].numel() * t.element_size() for t in first)
        if per_sample * len(dataset) > TARGET_CACHE_BYTES:
            return
        cached = _Cached([np.empty((len(dataset), *t.shape[1:]), dtype=t.numpy().dtype) for t in first], len(dataset))
        for array, tensor in zip(cached.outputs, first):
            array[probe.indices] = tensor.numpy()
        cached.filled[probe.indices] = True
        self._cache[id(dataset)] = cached

    def _label_output(self, outputs: list[torch.Tensor]) -> int:
        for index, flag in enumerate(self.classifier):
            if flag:
                return index
        raise ModelRejected("data has labels, but no model output holds class scores (batch x classes)")

    def _check_labels(self, scores: torch.Tensor, labels: np.ndarray | None) -> torch.Tensor:
        if labels is None:  # use_labels comes from the dataset, so every batch of it has labels
            raise RuntimeError("the objective trains on labels, but this batch has none")
        target = torch.from_numpy(labels)
        if int(target.max()) >= scores.shape[1]:
            raise ModelRejected(
                f"data 'labels' holds class {int(target.max())}, the model scores {scores.shape[1]} classes"
            )
        return target

    def loss(self, outputs: list[torch.Tensor], batch: Batch, targets: list[torch.Tensor]) -> torch.Tensor:
        """Mean over the batch: distillation summed over outputs, plus cross-entropy with labels."""
        total = _zero(outputs)
        for index, (out, target, classifier) in enumerate(zip(outputs, targets, self.classifier)):
            if not out.is_floating_point():
                continue  # an integer output (token ids passed through) carries no gradient
            if self.detector is not None and index == self.detector.index:
                total = total + detection_loss(out, target, self.detector)
            elif classifier:
                soft = F.kl_div(
                    F.log_softmax(out / TEMPERATURE, 1),
                    F.log_softmax(target / TEMPERATURE, 1),
                    log_target=True,
                    reduction="batchmean",
                )
                total = total + soft * TEMPERATURE**2
            else:
                total = total + F.mse_loss(out, target) / (target.pow(2).mean() + _EPS)
        if self.use_labels and batch.labels is not None:
            index = self._label_output(outputs)
            hard = F.cross_entropy(outputs[index], self._check_labels(outputs[index], batch.labels))
            total = (1 - LABEL_WEIGHT) * total + LABEL_WEIGHT * hard
        return total

    def sampled_loss(
        self, outputs: list[torch.Tensor], batch: Batch, targets: list[torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        """Summed over samples, so each sample's gradient is its own (for the Taylor criterion).

        Without labels the distillation loss is at its minimum on the unpruned model and every
        gradient is zero; targets are therefore sampled from the original's predictive
        distribution (a class drawn from its softmax, Gaussian noise of the output's scale), whose
        expected gradient is the distillation gradient and whose spread carries the curvature.
        """
        if self.use_labels:
            index = self._label_output(outputs)
            labels = self._check_labels(outputs[index], batch.labels)
            return F.cross_entropy(outputs[index], labels, reduction="sum")
        total = _zero(outputs)
        for index, (out, target, classifier) in enumerate(zip(outputs, targets, self.classifier)):
            if not out.is_floating_point():
                continue
            if self.detector is not None and index == self.detector.index:
                total = total + sampled_detection_loss(out, target, self.detector, generator)
            elif classifier:
                drawn = torch.multinomial(torch.softmax(target.double(), 1), 1, generator=generator).squeeze(1)
                total = total + F.cross_entropy(out, drawn, reduction="sum")
            else:
                scale = target.pow(2).mean().sqrt() + _EPS
                noisy = target + scale * torch.randn(target.shape, generator=generator, dtype=target.dtype)
                total = total + 0.5 * ((out - noisy) / scale).pow(2).sum() / max(1, out[0].numel())
        return total


def _zero(outputs: list[torch.Tensor]) -> torch.Tensor:
    """A zero of the first floating-point output's dtype and device (the sum's start)."""
    floating = next((out for out in outputs if out.is_floating_point()), None)
    if floating is None:
        raise ModelRejected("the model has no floating-point output to distil from")
    return floating.new_zeros(())


@dataclass(frozen=True)
class FeatureMatch:
    """Intermediate tensors a pruned student is also trained to reproduce: the outputs of the layers
    that lost input channels, the same targets layer-wise reconstruction fits in closed form, here
    learnt jointly with the outputs. Few samples carry far more signal per sample in feature maps
    than in ten class scores (Wang et al. 2022, "Compressing Models with Few Samples: Mimicking then
    Replacing"; Bai et al. 2020, "Few Shot Network Compression via Cross Distillation").

    ``kept[i]``: the teacher's positions on axis 1 that the student's ``tensors[i]`` still has (None:
    all of them; the layer's own filters were not pruned).
    """

    tensors: list[str]
    kept: list[np.ndarray | None]
    weight: float = FEATURE_WEIGHT

    def loss(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        """Mean over tensors of the squared error relative to the teacher's mean square."""
        total = student[0].new_zeros(())
        for out, target, kept in zip(student, teacher, self.kept):
            if kept is not None:
                target = target.index_select(1, torch.from_numpy(kept))
            total = total + F.mse_loss(out, target) / (target.pow(2).mean() + _EPS)
        return self.weight * total / max(1, len(self.tensors))


def make_objective(original: onnx.ModelProto, sample: Batch, *, use_labels: bool, detector: str = "none") -> Objective:
    """The objective for ``original`` (the teacher); ``sample`` tells which outputs are class scores
    and, with ``detector`` 'auto' or 'yolo', which one is a detector's (``roundtrip.detector_outputs``)."""
    teacher = OnnxModule(original).eval()
    objective = Objective(teacher, _logit_tensors(original), use_labels)
    outputs = objective.teacher_outputs(sample)
    objective.classifier = [_is_classifier(t) for t in outputs]
    objective.detector = find_yolo_layout([t.numpy() for t in outputs], detector)
    return objective
