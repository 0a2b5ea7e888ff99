"""Schedule: layer by layer, a per-layer agent trained with REINFORCE decides which filters to keep
within the accuracy bound ``--max-drop`` on the validation split (Huang et al., WACV 2018), each
layer's surgery checked by the oracle, judged after layer-wise reconstruction (with ``--recovery``
auto or reconstruct) and fine-tuned before the next (``roundtrip.learned``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.report import LearnedLayerReport, LearnedReport
from onnxprune.workers.strategies.base import Job, Outcome, Selection
from onnxprune.workers.strategies.finetune import RECOVERY_SHARE
from onnxprune.workers.strategies.judge import JUDGE_SAMPLES
from onnxprune.workers.strategies.recovery import Recovered
from onnxprune.workers.strategies.stepwise import finetune_report
from onnxprune.workers.verification import verify_against_oracle, verify_write_back

if TYPE_CHECKING:
    from onnxprune.roundtrip.learned import LearnedResult


@dataclass
class LearnedSearch:
    max_drop: float

    def run(self, job: Job) -> Outcome:
        from onnxprune.roundtrip.learned import SearchSettings, search

        options = job.options
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
            deadline=job.deadline(RECOVERY_SHARE),  # --time-budget bounds the search like any recovery
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
        with job.stages.stage("finetune"):
            verify_write_back(recovery.model, recovery.check_inputs, recovery.check_outputs, limits=job.limits)
        steps = [Recovered(recovery.model, record) for record in recovery.iterations]
        if steps:
            steps[0].losses = list(recovery.losses)
        report = finetune_report(job, steps).model_copy(update={"schedule": "layer-by-layer (learned)"})
        return Outcome(
            recovery.plan,
            recovery.model,
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
