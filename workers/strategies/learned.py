"""Schedule: layer by layer, a per-layer agent trained with REINFORCE decides which filters to keep
within the accuracy bound ``--max-drop`` on the validation split (Huang et al., WACV 2018), each
layer's surgery checked by the oracle, judged after layer-wise reconstruction (with ``--recovery``
auto or reconstruct) and fine-tuned before the next (``roundtrip.learned``). Under ``--time-budget``
the model the search built is then fine-tuned for what the search left, as the paper retrains after
pruning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.report import LearnedLayerReport, LearnedReport
from onnxprune.workers.strategies.base import Job, Outcome, Selection, Step
from onnxprune.workers.strategies.finetune import RECOVERY_SHARE, FineTune
from onnxprune.workers.strategies.judge import JUDGE_SAMPLES
from onnxprune.workers.strategies.needs import Given, Needs
from onnxprune.workers.strategies.recovery import Recovered
from onnxprune.workers.strategies.stepwise import finetune_report
from onnxprune.workers.verification import verify_against_oracle, verify_write_back

if TYPE_CHECKING:
    from onnxprune.roundtrip.learned import LearnedResult

# Under --time-budget with fine-tuning to follow, the search ends by this share of the budget and the
# final fine-tune has the rest. Searching until the recovery share (95%) left no time to recover: the
# benchmark's ResNet-20 (-28% MACs) ended 6.15 points down on held-out images against a bound of 3.
SEARCH_SHARE = 0.6


@dataclass
class LearnedSearch:
    max_drop: float

    def needs(self, options: PruneOptions, given: Given) -> Needs:
        """Agents trained on validation samples, layers refit and fine-tuned in PyTorch."""
        return Needs(data="criterion 'learned' needs data", torch="criterion 'learned'")

    def run(self, job: Job) -> Outcome:
        from onnxprune.roundtrip.learned import SearchSettings, search

        options = job.options
        then = FineTune.from_options(options, budgeted=True)
        budgeted = options.time_budget is not None and options.recovery != "reconstruct"
        settings = SearchSettings(
            max_drop=self.max_drop,
            episodes=options.learned_episodes,
            samples=options.learned_samples,
            finetune_steps=options.finetune_steps,
            lr=options.lr,
            batch_size=options.batch_size,
            round_to=job.round_to,
            exclude=tuple(options.exclude),
            seed=options.seed,
            # Decisions judged (and carried forward) after layer-wise reconstruction when the job reconstructs.
            reconstruct_samples=min(options.reconstruct_samples, JUDGE_SAMPLES)
            if options.recovery in ("auto", "reconstruct")
            else 0,
            deadline=job.deadline(SEARCH_SHARE if budgeted else RECOVERY_SHARE),
        )

        def verify(step_dep: DependencyGraph, step_plan: PruningPlan, step_model: onnx.ModelProto) -> None:
            verify_against_oracle(step_dep, step_plan, step_model, job.workdir, job.check_inputs, limits=job.limits)

        with job.stages.stage("select"):
            learned = search(
                job.dep,
                settings,
                job.data,
                verify=verify,
                progress=lambda label, fraction: job.stages.within("select", fraction, label),
            )
        recovery = learned.recovery
        steps = [Recovered(recovery.model, record) for record in recovery.iterations]
        if steps:
            steps[0].losses = list(recovery.losses)
        model, inputs, outputs = recovery.model, recovery.check_inputs, recovery.check_outputs
        if budgeted and recovery.plan.groups:
            tuned = then.recover(job, job.dep, recovery.plan, recovery.model, Step(len(steps), len(steps) + 1))
            steps.append(tuned)
            model, inputs, outputs = tuned.model, tuned.check_inputs or inputs, tuned.check_outputs or outputs
        with job.stages.stage("finetune"):
            verify_write_back(model, inputs, outputs, limits=job.limits, original=job.dep.model)
        report = finetune_report(job, steps).model_copy(update={"schedule": "layer-by-layer (learned)"})
        return Outcome(
            recovery.plan,
            model,
            Selection(recovery.plan, validation_drop=learned.drop, notes=_budget_notes(learned)),
            pruned_only=recovery.pruned_only,
            finetune=report,
            learned=_learned_report(learned, job),
            seconds=dict(learned.seconds),
        )


def _budget_notes(learned: LearnedResult) -> list[str]:
    if not learned.unsearched:
        return []
    return [
        f"the time budget ran out before the learned search reached {len(learned.unsearched)} layer(s); they were "
        "left whole: give it a larger --time-budget or fewer --learned-episodes"
    ]


def _learned_report(learned: LearnedResult, job: Job) -> LearnedReport:

    return LearnedReport(
        metric=learned.metric,
        max_drop=learned.max_drop,
        baseline=learned.baseline,
        reward_samples=learned.reward_samples,
        episodes=job.options.learned_episodes,
        samples=job.options.learned_samples,
        layers=[LearnedLayerReport(**layer.__dict__) for layer in learned.layers],
        unsearched=learned.unsearched,
    )
