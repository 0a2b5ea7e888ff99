"""Recovery: layer-wise reconstruction (He et al. 2017; ThiNet, Luo et al. 2017), then whatever
recovery follows it (fine-tuning, or nothing).

Every layer that lost input channels is refit in closed form, by ridge least squares, so that its output
matches the original model's on calibration samples (``roundtrip.reconstruction``): no labels, no
backpropagation, seconds on a CPU. It is the default recovery whenever data is given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx

from onnxprune.graphops.cost import measure_cost
from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.options import PruneOptions, RecoveryChoice
from onnxprune.workers.strategies.base import Job, Step
from onnxprune.workers.strategies.needs import Given, Needs
from onnxprune.workers.strategies.recovery import NoRecovery, Recovered, Recovery
from onnxprune.workers.strategies.registry import Requires, StrategyOptions, own, register

if TYPE_CHECKING:
    from onnxprune.roundtrip.reconstruction import ReconstructionResult

# With --time-budget, reconstruction ends by this share of the budget when fine-tuning follows (which plans
# its steps in what is left), by the larger share when nothing follows but the checks and the held-out
# evaluation; the calibration batch is cut to fit (``roundtrip.reconstruction``).
SHARE_BEFORE_FINETUNING = 0.6
SHARE_ALONE = 0.8
# What follows reconstruction in the budget, in passes of the original over one sample per validation and
# held-out sample: the validation evaluations, the write-back checks, the held-out evaluations (original,
# pruned, recovered) in onnxruntime. ViT-S with data took 150 s after reconstruction on 50 + 50 samples
# (load 5.6) and overran a 300 s budget by 10 s, its reconstruction having ended on time.
AFTER_PASSES = 4


def budget_note_left(result: ReconstructionResult) -> str:
    """The report's warning when the deadline came before every layer was refit."""
    left, refit = len(result.left_by_deadline), len(result.layers)
    pace = "" if result.seconds_per_layer is None else f", {result.seconds_per_layer:.1f} s a layer"
    return (
        f"--time-budget: layer-wise reconstruction left {left} of {left + refit} layers as pruned, "
        f"not refit (the deadline would have come during their refit: {refit} refit on {result.samples} "
        f"samples{pace}); evaluation.finetune.iterations[].reconstruction_left_by_deadline names them; "
        "a larger --time-budget refits them"
    )


class ReconstructOptions(StrategyOptions):
    recovery: RecoveryChoice = own("recovery")
    reconstruct_samples: int = own("reconstruct_samples")


@register(
    "recovery",
    "reconstruct",
    options=ReconstructOptions,
    requires=Requires(data=True, torch=True),
    report="evaluation.finetune",
    position=10,  # runs first; whatever recovery follows starts from its refit weights
)
@dataclass
class Reconstruct:
    then: Recovery
    samples: int = 1024

    @classmethod
    def wanted(cls, options: PruneOptions, given: Given) -> bool:
        """Layer-wise reconstruction first, by default, whenever data is given."""
        return given.data and ReconstructOptions.of(options).recovery in ("auto", "reconstruct")

    @classmethod
    def build(cls, options: PruneOptions, given: Given, then: Recovery) -> Reconstruct:
        return cls(then, samples=ReconstructOptions.of(options).reconstruct_samples)

    def needs(self, options: PruneOptions, given: Given) -> Needs:
        """Layers refit on calibration samples in the PyTorch executor; then what follows needs. (When
        reconstruction is only the default, what the user asked for, such as fine-tuning, is named first.)"""
        named = ReconstructOptions.of(options).recovery == "reconstruct"
        why = "layer-wise reconstruction" + ("" if named else " (the default recovery when data is given)")
        own, then = Needs(data=f"{why} needs data", torch=why), self.then.needs(options, given)
        return own | then if named else then | own

    def recover(
        self, job: Job, dep: DependencyGraph, plan: PruningPlan, pruned: onnx.ModelProto, step: Step
    ) -> Recovered:
        from onnxprune.roundtrip.executor import OnnxModule
        from onnxprune.roundtrip.reconstruction import (
            DETECTOR_SAMPLES,
            drifted_sequence_layers,
            head_layers,
            reconstruct,
            score_layers,
        )
        from onnxprune.roundtrip.schedule import IterationRecord
        from onnxprune.roundtrip.training import evaluate, outputs_on

        data = job.data
        objective = data.objective
        label = f"step {step.index + 1}/{step.total}: " if step.total > 1 else ""
        # Progress only: entering the stage here and again in the recovery that follows would report
        # the stage's end before its fine-tuning steps.
        job.stages.within("finetune", step.index / step.total, f"{label}layer-wise reconstruction")
        started = time.monotonic()
        # The first step's teacher is the original, already built for the objective.
        teacher = objective.teacher if step.index == 0 else None
        detector = objective.detector
        head = head_layers(dep.model, dep.model.graph.output[detector.index].name) if detector else set()
        share = SHARE_ALONE if isinstance(self.then, NoRecovery) else SHARE_BEFORE_FINETUNING
        result = reconstruct(
            dep,
            plan,
            pruned,
            data.train,
            samples=self.samples,
            seed=job.options.seed + step.index,
            teacher=teacher,
            also=head or drifted_sequence_layers(dep, pruned),
            at_least=DETECTOR_SAMPLES if detector else 0,
            scores=score_layers(dep.model, head, detector.classes) if detector else (),
            deadline=job.deadline(share * (step.index + 1) / step.total),
            end=job.deadline((step.index + 1) / step.total),
            # (The held-out split is as large as validation's, a fifth each; strategies never read it.)
            reserve=AFTER_PASSES * 2 * len(data.validation) if step.index + 1 == step.total else 0,
        )
        seconds = time.monotonic() - started
        if result.samples < result.affordable:
            job.budget_notes.append(
                f"--time-budget: layer-wise reconstruction fit on {result.samples} calibration samples of "
                f"{result.affordable} (the time left allowed no more); a larger --time-budget fits on more"
            )
        if result.left_by_deadline:
            job.budget_notes.append(budget_note_left(result))
        recovered = self.then.recover(job, dep, plan, result.model, step)
        recovered.reconstructed = [fit.node for fit in result.layers if fit.kept]
        recovered.reconstruction_skipped = dict(result.skipped)
        recovered.reconstruction_not_kept = {
            fit.node: f"the refit's error on the {result.check_samples} calibration sample(s) held aside was "
            f"{fit.refit_error:.4g}, not below {fit.error_before:.4g} as pruned"
            for fit in result.layers
            if not fit.kept
        }
        recovered.reconstruction_samples = result.samples
        recovered.reconstruction_ridges = {fit.node: fit.ridge for fit in result.layers if fit.ridge is not None}
        recovered.reconstruction_left_by_deadline = list(result.left_by_deadline)
        recovered.reconstruction_seconds = round(seconds, 3)
        if recovered.check_inputs is not None or not isinstance(self.then, NoRecovery):
            return recovered
        # Reconstruction alone changed the weights: the write-back check and the report need what the
        # executor computes, and the validation metrics of the reconstructed model.
        with job.stages.stage("finetune"):
            student = OnnxModule(result.model)
            metrics = evaluate(student, objective, data.validation, data.batch_size)
            check_inputs = next(data.validation.batches(min(len(data.validation), student.static_batch or 4))).inputs
            record = IterationRecord(
                step.index + 1,
                measure_cost(result.model, job.analysis.input_shapes).macs,
                plan.removed_channels,
                metrics,
                None,
                None,
            )
            recovered.record = record
            recovered.check_inputs, recovered.check_outputs = check_inputs, outputs_on(student, check_inputs)
        return recovered
