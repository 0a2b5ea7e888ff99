"""Recovery: re-estimate BatchNorm statistics and fine-tune through the ONNX->PyTorch executor
(Li et al.'s retraining; Molchanov et al.'s short fine-tune between steps), then write the weights
back into the same graph by name. Labels give cross-entropy; without them the original's outputs
are distilled (``roundtrip.objective``)."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from graphops.cost import measure_cost
from graphops.dependency import DependencyGraph
from graphops.plan import PruningPlan
from workers.strategies.base import Job, Step
from workers.strategies.recovery import Recovered


@dataclass
class FineTune:
    steps: int  # optimizer steps per pruning step (0: BatchNorm re-estimation only)
    lr: float

    def recover(self, job: Job, dep: DependencyGraph, plan: PruningPlan, pruned: onnx.ModelProto,
                step: Step) -> Recovered:
        from roundtrip.executor import OnnxModule
        from roundtrip.schedule import BN_BATCHES, IterationRecord
        from roundtrip.training import evaluate, finetune, outputs_on, recalibrate_batchnorm
        from roundtrip.writeback import write_back

        data, seed = job.data, job.options.seed + step.index
        label = f"step {step.index + 1}/{step.total}: " if step.total > 1 else ""
        with job.stages.stage("finetune"):
            student = OnnxModule(pruned)
            recalibrated = recalibrate_batchnorm(student, data.train, data.batch_size, BN_BATCHES, seed)
            after_pruning = evaluate(student, data.objective, data.holdout, data.batch_size)
            after_finetune, losses = None, []
            if self.steps > 0:

                def show(done: int, total: int, loss: float) -> None:
                    if done == total or done % max(1, total // 20) == 0:
                        job.stages.within("finetune", (step.index + done / total) / step.total,
                                          f"{label}finetune {done}/{total}, loss {loss:.4g}")

                losses = finetune(student, data.objective, data.train, steps=self.steps, lr=self.lr,
                                  batch_size=data.batch_size, seed=seed, progress=show)
                if recalibrated:
                    recalibrate_batchnorm(student, data.train, data.batch_size, BN_BATCHES, seed)
                after_finetune = evaluate(student, data.objective, data.holdout, data.batch_size)
            model = write_back(pruned, student)
            record = IterationRecord(step.index + 1, measure_cost(model, job.analysis.input_shapes).macs,
                                     plan.removed_channels, after_pruning, after_finetune,
                                     losses[-1] if losses else None)
            check_inputs = next(data.holdout.batches(min(len(data.holdout), student.static_batch or 4))).inputs
            return Recovered(model, record, losses, check_inputs, outputs_on(student, check_inputs))
