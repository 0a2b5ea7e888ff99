"""Schedule: layer by layer, a per-layer agent trained with REINFORCE decides which filters to keep
within the accuracy bound ``--max-drop`` on the validation split (Huang et al., WACV 2018), each
layer's surgery checked by the oracle, judged after layer-wise reconstruction (with ``--recovery``
auto or reconstruct) and fine-tuned before the next (``roundtrip.learned``). Under ``--time-budget``
the model the search built is then fine-tuned for what the search left, as the paper retrains after
pruning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import onnx

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.options import DEFAULT_MAX_DROP, PruneOptions
from onnxprune.workers.report import LearnedLayerReport, LearnedReport
from onnxprune.workers.strategies.base import Job, Outcome, Selection, Selector, Step
from onnxprune.workers.strategies.finetune import RECOVERY_SHARE, FineTune, FineTuneRecipe
from onnxprune.workers.strategies.judge import JUDGE_SAMPLES
from onnxprune.workers.strategies.needs import Given, Needs
from onnxprune.workers.strategies.reconstruct import Reconstruct
from onnxprune.workers.strategies.recovery import Recovered, Recovery
from onnxprune.workers.strategies.registry import Requires, own, register
from onnxprune.workers.strategies.stepwise import finetune_report
from onnxprune.workers.verification import verify_against_oracle, verify_write_back

if TYPE_CHECKING:
    from onnxprune.roundtrip.learned import LearnedResult

# Under --time-budget with fine-tuning to follow, the search ends by this share of the budget and the
# final fine-tune has the rest. Searching until the recovery share (95%) left no time to recover: the
# benchmark's ResNet-20 (-28% MACs) ended 6.15 points down on held-out images against a bound of 3.
SEARCH_SHARE = 0.6


class LearnedOptions(FineTuneRecipe):
    """The search's own options, and fine-tuning's: each layer is fine-tuned before the next."""

    criterion: str = own("criterion")
    max_drop: float | None = own("max_drop")
    learned_episodes: int = own("learned_episodes")
    learned_samples: int = own("learned_samples")
    batch_size: int = own("batch_size")
    reconstruct_samples: int = own("reconstruct_samples")


@register(
    "schedule",
    "learned",
    options=LearnedOptions,
    requires=Requires(data=True, torch=True),
    report="learned",
    position=10,
)
@dataclass
class LearnedSearch:
    max_drop: float
    options: LearnedOptions = field(default_factory=LearnedOptions)

    @classmethod
    def wanted(cls, options: PruneOptions, given: Given) -> bool:
        """Criterion 'learned' chooses every layer's count itself (a saved plan is applied as it is)."""
        return options.target.kind == "learned" and not given.plan

    @classmethod
    def build(cls, options: PruneOptions, selector: Selector | None, recovery: Recovery) -> LearnedSearch:
        own_options = LearnedOptions.of(options)
        return cls(own_options.max_drop or DEFAULT_MAX_DROP, own_options)

    def needs(self, options: PruneOptions, given: Given) -> Needs:
        """Agents trained on validation samples, layers refit and fine-tuned in PyTorch."""
        return Needs(data="criterion 'learned' needs data", torch="criterion 'learned'")

    def run(self, job: Job) -> Outcome:
        from onnxprune.roundtrip.learned import SearchSettings, search

        mine = self.options
        then = FineTune.from_options(job.options, budgeted=True)
        budgeted = mine.time_budget is not None and mine.recovery != "reconstruct"
        settings = SearchSettings(
            max_drop=self.max_drop,
            episodes=mine.learned_episodes,
            samples=mine.learned_samples,
            finetune_steps=mine.finetune_steps,
            lr=mine.lr,
            batch_size=mine.batch_size,
            round_to=job.round_to,
            exclude=tuple(job.options.exclude),
            seed=job.options.seed,
            # Decisions judged (and carried forward) after layer-wise reconstruction when the job reconstructs.
            reconstruct_samples=min(mine.reconstruct_samples, JUDGE_SAMPLES)
            if Reconstruct.wanted(job.options, Given(data=True))
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
            learned=_learned_report(learned, mine),
            seconds=dict(learned.seconds),
        )


def _budget_notes(learned: LearnedResult) -> list[str]:
    if not learned.unsearched:
        return []
    return [
        f"the time budget ran out before the learned search reached {len(learned.unsearched)} layer(s); they were "
        "left whole: give it a larger --time-budget or fewer --learned-episodes"
    ]


def _learned_report(learned: LearnedResult, options: LearnedOptions) -> LearnedReport:
    return LearnedReport(
        metric=learned.metric,
        max_drop=learned.max_drop,
        baseline=learned.baseline,
        reward_samples=learned.reward_samples,
        episodes=options.learned_episodes,
        samples=options.learned_samples,
        layers=[LearnedLayerReport(**layer.__dict__) for layer in learned.layers],
        unsearched=learned.unsearched,
    )
