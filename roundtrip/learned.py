"""Learned pruning: per-layer try-and-learn agents (Huang et al., WACV 2018).

Layers (channel groups: coupled convs count as one) are pruned one after another. For each, an
agent (``roundtrip.agent``) proposes keep masks; each is tried on validation samples by masking
(the oracle's equivalence: zeroing a channel at every filter that reads it computes what the pruned
model computes, so no surgery per sample) and rewarded with

    R(A) = psi(A, b, p_hat) * phi(A),  psi = (b - (p_hat - p(A))) / b,  phi = ln(C / ||A||_1)

(p_hat: the original network's accuracy or fidelity, p(A): the current network with A applied,
C: the group's channels, ||A||_1: those kept). p_hat stays the original's, so b bounds the drop of
the whole network, not of each layer. Rewards are measured on the validation split
(``roundtrip.data.split_data``), never on the held-out samples the report quotes. The trained
agent's decision (keep probability >= 0.5, or the best pruning it sampled if that earns more;
filters added back by probability while the measured drop exceeds b) is applied by surgery,
verified by the caller's oracle, and the network is fine-tuned briefly before the next layer (kept only
if the drop on the reward samples stays within b, so fine-tuning cannot break the bound).

With ``reconstruct_samples`` (the default whenever the job's recovery reconstructs), the decision is
judged after layer-wise reconstruction of the layers that read the group (``roundtrip.reconstruction``),
which is also what the next layer starts from: the agent ranks the filters on raw masked drops (cheap,
many tries), and the number kept is the fewest, in the agent's order, whose reconstructed drop stays
within b (a binary search), so the bound is checked on what the job will actually deliver.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.graphops.cost import measure_cost
from onnxprune.graphops.dependency import DependencyGraph, analyze
from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.selection import choose_kept, excluded_group_ids, group_step, round_keep
from onnxprune.graphops.surgery import apply_plan
from onnxprune.roundtrip.context import DataContext
from onnxprune.roundtrip.schedule import (
    BN_BATCHES,
    IterationRecord,
    ScheduleError,
    ScheduleResult,
    compose_plans,
    same_structure,
)
from onnxprune.roundtrip.taps import consumer_taps

if TYPE_CHECKING:  # torch is imported inside the search, so importing the criterion stays light
    import torch

    from onnxprune.roundtrip.executor import EdgeHook, OnnxModule
    from onnxprune.roundtrip.objective import Objective

Verify = Callable[[DependencyGraph, PruningPlan, onnx.ModelProto], None]
Progress = Callable[[str, float], None]
# Samples of the validation split that each proposed pruning is tried on (evenly spaced).
REWARD_SAMPLES = 1024
# One batch of reward samples: (inputs by name, labels or None, the original's outputs on them).
RewardBatch = tuple[dict[str, np.ndarray], "np.ndarray | None", list["torch.Tensor"]]


@dataclass(frozen=True)
class SearchSettings:
    max_drop: float = 0.01  # b: the accepted drop of accuracy (labels) or fidelity, as a fraction
    episodes: int = 20
    samples: int = 8  # sampled prunings per episode
    finetune_steps: int = 0  # after each layer
    lr: float = 0.002
    batch_size: int = 32
    round_to: int = 1
    exclude: tuple[str, ...] = ()
    seed: int = 0
    agent_lr: float = 0.1
    initial_keep: float = 0.9  # the agents start by removing about one filter in ten
    reward_samples: int = REWARD_SAMPLES
    reconstruct_samples: int = 0  # > 0: each decision judged after layer-wise reconstruction on these
    # time.monotonic() by which the search ends (--time-budget): each layer's agent gets an equal share
    # of what is left; layers not reached by then stay whole (``LearnedResult.unsearched``).
    deadline: float | None = None


@dataclass
class LayerSearch:
    group: str
    producers: list[str]
    channels: int
    kept: int
    reward: float  # of the applied decision
    drop: float  # p_hat - p on the reward samples, the decision applied (and reconstructed), before fine-tuning
    drop_finetuned: float | None  # the same after this layer's fine-tuning (None: not fine-tuned, or not kept)
    rewards: list[float]  # mean sampled reward per episode
    seconds: float


@dataclass
class LearnedResult:
    recovery: ScheduleResult  # the final model, composed plan, per-layer records: as the schedules give
    layers: list[LayerSearch]
    metric: str  # 'accuracy' or 'fidelity'
    baseline: float  # p_hat on the reward samples
    max_drop: float
    reward_samples: int
    seconds: dict[str, float] = field(default_factory=dict)
    drop: float = 0.0  # p_hat - p of the final model on the reward samples (validation)
    unsearched: list[str] = field(default_factory=list)  # groups left whole: the deadline came first


def reward(drop: float, kept: int, channels: int, bound: float) -> float:
    """Huang et al.'s R = psi * phi: positive only within the bound, larger the more is removed."""
    return (bound - drop) / bound * math.log(channels / max(kept, 1))


class MaskedEvaluator:
    """p(A) of one model with a group's channels masked at every filter that reads them."""

    def __init__(
        self, model: onnx.ModelProto, dep: DependencyGraph, batches: list[RewardBatch], objective: Objective
    ) -> None:
        from onnxprune.roundtrip.executor import OnnxModule

        self.module = OnnxModule(model).eval()
        self.dep, self.batches, self.objective = dep, batches, objective

    def metric(self, group_id: str | None = None, keep: np.ndarray | None = None) -> float:
        import torch

        hooks: dict[tuple[str, int], EdgeHook] = {}
        if group_id is not None and keep is not None and not keep.all():
            index = self.dep.group_index(group_id)
            for tap in consumer_taps(self.dep, {group_id}):
                on = np.ones(len(tap.groups), dtype=np.float32)
                here = tap.groups == index
                on[here] = keep[tap.classes[here]]
                hooks[(tap.node, tap.input_index)] = _scaler(torch.from_numpy(on), tap.axis)
        total, value = 0, 0.0
        with torch.no_grad():
            for inputs, labels, targets in self.batches:
                outputs = self.module.run(inputs, outputs=self.objective.tensors, edge_hooks=hooks)
                value += _batch_metric(outputs, labels, targets, self.objective)
                total += len(next(iter(inputs.values())))
        return value / total


def _scaler(on: torch.Tensor, axis: int) -> EdgeHook:
    """Zero the masked positions of one filter's data input: the oracle's zeroed weights, in effect."""

    def hook(tensor: torch.Tensor) -> torch.Tensor:
        view = [1] * tensor.dim()
        view[axis] = -1
        return tensor * on.reshape(view)

    return hook


def _batch_metric(
    outputs: list[torch.Tensor], labels: np.ndarray | None, targets: list[torch.Tensor], objective: Objective
) -> float:
    """Summed over the batch: correct predictions with labels, else cosine to the original's outputs."""
    import torch

    if objective.use_labels:
        index = objective.classifier.index(True)
        return float((outputs[index].argmax(1).numpy() == labels).sum())
    cosines = []
    for out, target in zip(outputs, targets):
        a, b = out.reshape(out.shape[0], -1).double(), target.reshape(target.shape[0], -1).double()
        cosines.append((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30))
    return float(torch.stack(cosines).mean(0).sum())


def _reward_batches(context: DataContext, count: int) -> list[RewardBatch]:
    held = context.validation
    indices = np.unique(np.linspace(0, len(held) - 1, min(count, len(held))).round().astype(int))
    batches = []
    for start in range(0, len(indices), 256):
        chosen = indices[start : start + 256]
        batch = held.subset(chosen)
        one = next(batch.batches(len(chosen)))
        targets = context.objective.teacher_outputs(one)
        batches.append((one.inputs, one.labels, targets))
    return batches


def layer_order(dep: DependencyGraph, exclude: tuple[str, ...]) -> list[str]:
    """Prunable groups not excluded (by name or by ``prune_kinds``), in the order their first producer
    runs (input to output)."""
    position = {node.name: i for i, node in enumerate(dep.model.graph.node)}
    protected = excluded_group_ids(dep, exclude)
    groups = [g for g in dep.prunable if g.id not in protected and g.max_removed != 0]  # prune_kinds
    return [
        g.id
        for g in sorted(groups, key=lambda g: min(position.get(p, 0) for p in g.filter_producers or g.linear_producers))
    ]


def _within_bound(
    dep: DependencyGraph,
    index: int,
    order: np.ndarray,
    count: int,
    settings: SearchSettings,
    drop_of: Callable[[np.ndarray], float],
    *,
    fewer: bool = False,
) -> np.ndarray:
    """A valid keep mask of about ``count`` filters ranked by ``order`` (higher: kept first), with
    filters added back in that order while the drop exceeds b (a binary search on the count).
    ``fewer``: when ``count`` is within b, the fewest filters within b instead (the drop is judged
    after recovery, which the agent's raw rewards did not see)."""
    group = dep.groups[index]
    channels = group.channels  # units: heads count as one each

    def mask_for(kept_count: int) -> np.ndarray:
        step = group_step(group, settings.round_to)
        kept = choose_kept(dep, index, order, round_keep(kept_count, channels, step), round_to=settings.round_to)
        mask = np.zeros(channels, dtype=bool)
        mask[kept] = True
        return mask

    def within(kept_count: int) -> bool:
        return drop_of(mask_for(kept_count)) <= settings.max_drop

    start = max(1, count)
    if within(start):
        if not fewer:
            return mask_for(start)
        low, high = 0, start  # high is within b; low is not (0: keeping nothing is never tried)
    else:
        low, high = start, channels  # keeping everything: within b, since every earlier layer stayed within b
    while high - low > 1:
        middle = (low + high) // 2
        if within(middle):
            high = middle
        else:
            low = middle
    return mask_for(high)


def _decide(
    dep: DependencyGraph,
    group_id: str,
    probabilities: np.ndarray,
    best_sample: np.ndarray,
    settings: SearchSettings,
    drop_of: Callable[[np.ndarray], float],
    *,
    fewer: bool = False,
) -> np.ndarray:
    """The trained agent's decision: keep probability >= 0.5, or the best pruning it sampled if that
    earns more reward (short searches leave probabilities short of 0.5 that samples already beat);
    each made valid for the group's constraints and brought within b. ``fewer`` (the count is
    searched anyway, each try a reconstruction): the agent's probabilities order the filters, with
    the best sample's filters first, and the fewest within b are kept."""
    index = dep.group_index(group_id)
    channels = dep.groups[index].channels
    if fewer:
        order = best_sample + 0.5 * probabilities
        return _within_bound(dep, index, order, int(best_sample.sum()), settings, drop_of, fewer=True)
    candidates = [
        _within_bound(dep, index, probabilities, int((probabilities >= 0.5).sum()), settings, drop_of),
        _within_bound(dep, index, best_sample + 0.5 * probabilities, int(best_sample.sum()), settings, drop_of),
    ]
    return max(candidates, key=lambda mask: reward(drop_of(mask), int(mask.sum()), channels, settings.max_drop))


class _ReconstructedDrops:
    """p_hat - p of a layer's candidate masks after surgery and layer-wise reconstruction of the layers
    that read the group, on the reward samples; each candidate's model is kept, so the decision goes
    forward exactly as it was judged."""

    def __init__(
        self,
        dep: DependencyGraph,
        group_id: str,
        batches: list[RewardBatch],
        context: DataContext,
        settings: SearchSettings,
        baseline: float,
        *,
        seed: int,
    ) -> None:
        self.dep, self.group_id, self.batches, self.context = dep, group_id, batches, context
        self.settings, self.baseline, self.seed = settings, baseline, seed
        self._judged: dict[bytes, tuple[onnx.ModelProto, float]] = {}
        self._teacher: OnnxModule | None = None  # the layer's current model, built on first use

    def _judge(self, mask: np.ndarray) -> tuple[onnx.ModelProto, float]:
        from onnxprune.roundtrip.reconstruction import reconstruct

        key = mask.tobytes()
        if key not in self._judged:
            if self._teacher is None:
                from onnxprune.roundtrip.executor import OnnxModule

                self._teacher = OnnxModule(self.dep.model).eval()
            plan = PruningPlan.from_keep(self.dep, {self.group_id: np.flatnonzero(mask).tolist()})
            refit = reconstruct(
                self.dep,
                plan,
                apply_plan(self.dep, plan),
                self.context.train,
                samples=self.settings.reconstruct_samples,
                seed=self.seed,
                teacher=self._teacher,
            ).model
            metric = MaskedEvaluator(refit, self.dep, self.batches, self.context.objective).metric()
            self._judged[key] = (refit, self.baseline - metric)
        return self._judged[key]

    def __call__(self, mask: np.ndarray) -> float:
        return self._judge(mask)[1]

    def model(self, mask: np.ndarray) -> onnx.ModelProto:
        return self._judge(mask)[0]


def _finetune_layer(
    pruned: onnx.ModelProto, student: OnnxModule, context: DataContext, settings: SearchSettings, *, seed: int
) -> tuple[onnx.ModelProto, list[float]]:
    """Re-estimate BatchNorm statistics, fine-tune, re-estimate again; the weights written back."""
    from onnxprune.roundtrip.training import finetune, recalibrate_batchnorm
    from onnxprune.roundtrip.writeback import write_back

    recalibrate_batchnorm(student, context.train, context.batch_size, BN_BATCHES, seed)
    step_losses = finetune(
        student,
        context.objective,
        context.train,
        steps=settings.finetune_steps,
        lr=settings.lr,
        batch_size=context.batch_size,
        seed=seed,
    ).losses
    recalibrate_batchnorm(student, context.train, context.batch_size, BN_BATCHES, seed)
    return write_back(pruned, student), step_losses


def search(
    dep: DependencyGraph,
    settings: SearchSettings,
    context: DataContext,
    *,
    verify: Verify,
    progress: Progress | None = None,
) -> LearnedResult:
    """Prune every layer in turn with a trained agent; see the module docstring."""
    from onnxprune.roundtrip.agent import PruningAgent, filter_features, train_agent
    from onnxprune.roundtrip.executor import OnnxModule
    from onnxprune.roundtrip.training import evaluate, outputs_on

    if context.objective.use_labels and not any(context.objective.classifier):
        raise ModelRejected("data has labels, but no model output holds class scores (batch x classes)")
    report = progress or (lambda label, fraction: None)
    seconds: dict[str, float] = {}
    started_all = time.perf_counter()
    batches = _reward_batches(context, settings.reward_samples)
    reward_count = sum(len(b[0][next(iter(b[0]))]) for b in batches)
    baseline = MaskedEvaluator(dep.model, dep, batches, context.objective).metric()
    order = layer_order(dep, settings.exclude)
    composed: dict[str, list[int]] = {}
    current, current_dep = dep.model, dep
    layers: list[LayerSearch] = []
    iterations: list[IterationRecord] = []
    losses: list[float] = []
    student: OnnxModule | None = None
    unsearched: list[str] = []
    for number, group_id in enumerate(order):
        started = time.perf_counter()
        low, high = number / len(order), (number + 1) / len(order)
        label = f"layer {number + 1}/{len(order)} ({group_id})"
        if settings.deadline is not None and time.monotonic() > settings.deadline:
            unsearched = order[number:]
            report(f"time budget spent: {len(unsearched)} layer(s) left whole", 1.0)
            break
        layer_deadline = (
            None
            if settings.deadline is None
            else time.monotonic() + (settings.deadline - time.monotonic()) / (len(order) - number)
        )
        if number > 0:
            current_dep = analyze(current, dep.input_shapes)
        group = current_dep.group(group_id)
        evaluator = MaskedEvaluator(current, current_dep, batches, context.objective)
        pinned = np.zeros(group.channels, dtype=bool)
        pinned[list(group.pinned)] = True

        def drop_of(mask: np.ndarray, evaluator: MaskedEvaluator = evaluator, group_id: str = group_id) -> float:
            return baseline - evaluator.metric(group_id, mask)

        def reward_of(
            mask: np.ndarray, drop_of: Callable[[np.ndarray], float] = drop_of, channels: int = group.channels
        ) -> float:
            return reward(drop_of(mask), int(mask.sum()), channels, settings.max_drop)

        def episode_progress(
            episode: int, episodes: int, mean: float, label: str = label, low: float = low, high: float = high
        ) -> None:
            report(
                f"{label}: episode {episode}/{episodes}, reward {mean:.3g}",
                low + 0.8 * (high - low) * episode / episodes,
            )

        agent = PruningAgent(
            filter_features(current_dep, group_id), initial_keep=settings.initial_keep, seed=settings.seed + number
        )
        training = train_agent(
            agent,
            reward_of,
            episodes=settings.episodes,
            samples=settings.samples,
            pinned=pinned,
            lr=settings.agent_lr,
            seed=settings.seed + number,
            progress=episode_progress,
            deadline=layer_deadline,
        )
        judged = (
            _ReconstructedDrops(
                current_dep, group_id, batches, context, settings, baseline, seed=settings.seed + number
            )
            if settings.reconstruct_samples > 0
            else None
        )
        judge = judged or drop_of
        mask = _decide(
            current_dep,
            group_id,
            agent.keep_probabilities(),
            training.best_mask,
            settings,
            judge,
            fewer=judged is not None,
        )
        drop = judge(mask)
        record = LayerSearch(
            group_id,
            list(group.producers),
            group.channels,
            int(mask.sum()),
            reward(drop, int(mask.sum()), group.channels, settings.max_drop),
            drop,
            None,
            [round(r, 6) for r in training.rewards],
            0.0,
        )
        seconds["search"] = seconds.get("search", 0.0) + time.perf_counter() - started
        if mask.all():
            record.seconds = round(time.perf_counter() - started, 3)
            layers.append(record)
            continue
        report(f"{label}: apply {int(mask.sum())}/{group.channels}", low + 0.8 * (high - low))
        plan = PruningPlan.from_keep(current_dep, {group_id: np.flatnonzero(mask).tolist()})
        pruned = apply_plan(current_dep, plan)
        verify(current_dep, plan, pruned)
        composed = compose_plans(composed, dep, current_dep, plan)
        if judged is not None:  # carried forward as judged: the reconstructed weights
            pruned = judged.model(mask)
        student = OnnxModule(pruned)
        after_pruning = evaluate(student, context.objective, context.validation, context.batch_size)
        after_finetune, final_loss, current = None, None, pruned
        if settings.finetune_steps > 0:
            tuned_started = time.perf_counter()
            tuned, step_losses = _finetune_layer(pruned, student, context, settings, seed=settings.seed + number)
            losses += step_losses
            final_loss = step_losses[-1]
            drop_tuned = baseline - MaskedEvaluator(tuned, current_dep, batches, context.objective).metric()
            if drop_tuned <= max(drop, settings.max_drop):  # fine-tuning that breaks the bound is not kept
                current, record.drop_finetuned = tuned, drop_tuned
                after_finetune = evaluate(student, context.objective, context.validation, context.batch_size)
            seconds["finetune"] = seconds.get("finetune", 0.0) + time.perf_counter() - tuned_started
        if dep.input_shapes is None:
            raise ModelRejected(
                "the learned search measures each step's MACs: it needs concrete input shapes (--input-shape)"
            )
        iterations.append(
            IterationRecord(
                number + 1,
                measure_cost(current, dep.input_shapes).macs,
                plan.removed_channels,
                after_pruning,
                after_finetune,
                final_loss,
            )
        )
        record.seconds = round(time.perf_counter() - started, 3)
        layers.append(record)
    final_plan = PruningPlan.from_keep(
        dep, {gid: keep for gid, keep in composed.items() if len(keep) < dep.group(gid).channels}
    )
    pruned_only = apply_plan(dep, final_plan)
    if not same_structure(pruned_only, current):
        raise ScheduleError("the composed plan does not reproduce the structure the layer-by-layer search built")
    student = OnnxModule(current)
    check_inputs = next(context.validation.batches(min(len(context.validation), student.static_batch or 4))).inputs
    recovery = ScheduleResult(
        model=current,
        plan=final_plan,
        pruned_only=pruned_only,
        iterations=iterations,
        losses=losses,
        check_inputs=check_inputs,
        check_outputs=outputs_on(student, check_inputs),
        seconds={k: round(v, 4) for k, v in seconds.items()},
    )
    final_drop = baseline - MaskedEvaluator(current, dep, batches, context.objective).metric()
    seconds["total"] = time.perf_counter() - started_all
    metric = "accuracy" if context.objective.use_labels else "fidelity"
    return LearnedResult(
        recovery,
        layers,
        metric,
        baseline,
        settings.max_drop,
        reward_count,
        {k: round(v, 4) for k, v in seconds.items()},
        final_drop,
        unsearched,
    )
