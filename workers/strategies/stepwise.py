"""Schedule: select, prune, verify and recover in ``steps`` equal steps (one-shot when 1).

Li et al. prune once and retrain; Molchanov et al. alternate small pruning steps with short
fine-tuning. Every step, the first included, runs here: the current model is analysed, the
selector chooses this step's share of the target, the surgery is checked by the oracle, and the
recovery strategy restores it. The steps' plans compose into one plan on the original model, so
``--plan-out`` still describes the result.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxprune.graphops.dependency import analyze
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.surgery import apply_plan
from onnxprune.workers.job_threads import current as current_budget
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.report import FinetuneReport
from onnxprune.workers.strategies.base import Job, Outcome, Selection, Selector, Step
from onnxprune.workers.strategies.needs import NOTHING, Given, Needs
from onnxprune.workers.strategies.recovery import Recovered, Recovery
from onnxprune.workers.strategies.registry import Requires, StrategyOptions, own, register
from onnxprune.workers.verification import verify_write_back


class StepwiseOptions(StrategyOptions):
    iterative_steps: int = own("iterative_steps")


@register(
    "schedule",
    "stepwise",
    options=StepwiseOptions,
    requires=Requires(data=True),  # iterative: recovered between the steps
    report="evaluation.finetune",
    position=100,  # every job no other schedule wants
)
@dataclass
class Stepwise:
    selector: Selector
    recovery: Recovery
    steps: int = 1

    @classmethod
    def wanted(cls, options: PruneOptions, given: Given) -> bool:
        return True

    @classmethod
    def build(cls, options: PruneOptions, selector: Selector | None, recovery: Recovery) -> Stepwise:
        if selector is None:
            raise ValueError("a stepwise schedule needs a selector")
        return cls(selector, recovery, steps=StepwiseOptions.of(options).iterative_steps)

    def needs(self, options: PruneOptions, given: Given) -> Needs:
        # Iterative pruning recovers between its steps: without data there is nothing to recover on.
        iterative = Needs(data="fine-tuning needs data") if self.steps > 1 else NOTHING
        return self.selector.needs(options, given) | iterative | self.recovery.needs(options, given)

    def run(self, job: Job) -> Outcome:
        from onnxprune.roundtrip.schedule import ScheduleError, compose_plans, same_structure

        dep, model = job.dep, job.dep.model
        composed: dict[str, list[int]] = {}
        selections: list[Selection] = []
        recovered: list[Recovered] = []
        for index in range(self.steps):
            step = Step(index, self.steps)
            if index > 0:
                with job.stages.stage("analyze"):
                    dep = job.as_job_sees(analyze(model, job.analysis.input_shapes))
            selection = self.selector.select(job, dep, step)
            pruned = job.apply_verified(dep, selection.plan)
            composed = compose_plans(composed, job.dep, dep, selection.plan)
            result = self.recovery.recover(job, dep, selection.plan, pruned, step)
            selections.append(selection)
            recovered.append(result)
            model = result.model
        last = recovered[-1]
        if last.check_inputs is None:  # weights as surgery left them: the oracle has checked them
            return Outcome(selections[0].plan, model, selections[0])
        plan = PruningPlan.from_keep(
            job.dep, {gid: keep for gid, keep in composed.items() if len(keep) < job.dep.group(gid).channels}
        )
        pruned_only = apply_plan(job.dep, plan)
        if not same_structure(pruned_only, model):
            raise ScheduleError("the composed plan does not reproduce the structure the pruning steps built")
        with job.stages.stage("finetune"):
            verify_write_back(
                model, last.check_inputs, last.check_outputs or {}, limits=job.limits, original=job.dep.model
            )
        return Outcome(plan, model, selections[0], pruned_only=pruned_only, finetune=finetune_report(job, recovered))


def finetune_report(job: Job, recovered: list[Recovered]) -> FinetuneReport:
    """The report's account of recovery: the objective, the losses, and each step's validation metrics."""
    from onnxprune.workers.report import EvaluationPoint, IterationReport

    def point(metrics: object) -> EvaluationPoint:
        return EvaluationPoint(**vars(metrics))

    def iteration(step: Recovered) -> IterationReport:
        r = step.record
        return IterationReport(
            iteration=r.iteration,
            macs=r.macs,
            removed_channels=r.removed_channels,
            after_pruning=point(r.after_pruning),
            after_finetune=None if r.after_finetune is None else point(r.after_finetune),
            final_loss=r.final_loss,
            steps=len(step.losses),
            kept_step=r.kept_step,
            reconstructed_layers=step.reconstructed or [],
            reconstruction_skipped=step.reconstruction_skipped,
            reconstruction_not_kept=step.reconstruction_not_kept,
            reconstruction_samples=step.reconstruction_samples if step.reconstructed is not None else None,
            reconstruction_ridges=step.reconstruction_ridges,
            reconstruction_left_by_deadline=step.reconstruction_left_by_deadline,
            reconstruction_seconds=step.reconstruction_seconds if step.reconstructed is not None else None,
        )

    options, data = job.options, job.data
    schedule = "iterative" if options.iterative_steps > 1 else "one-shot"
    if any(step.reconstructed is not None for step in recovered):
        schedule += " + layer-wise reconstruction"
    total_steps = sum(len(step.losses) for step in recovered)
    seconds = sum(step.finetune_seconds for step in recovered)
    cpu_seconds = sum(step.finetune_cpu_seconds for step in recovered)
    trained = total_steps * min(data.batch_size, data.samples.get("train", 0))
    budget = current_budget()
    return FinetuneReport(
        schedule=schedule,
        objective=data.objective.kind,
        steps=max((len(step.losses) for step in recovered), default=0),
        iterative_steps=options.iterative_steps,
        lr=options.lr,
        batch_size=options.batch_size,
        samples=data.samples,
        losses=[round(v, 6) for step in recovered for v in step.losses],
        iterations=[iteration(step) for step in recovered if step.record is not None],
        total_steps=total_steps,
        epochs=round(trained / data.samples["train"], 2) if data.samples.get("train") else None,
        samples_per_s=round(trained / seconds, 1) if seconds > 0 else None,
        train_seconds=round(seconds, 1) if seconds > 0 else None,
        cpu_per_second=round(cpu_seconds / seconds, 2) if seconds > 0 else None,
        threads=budget.threads if budget is not None else None,
    )
