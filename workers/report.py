"""The pruning report: a typed model, serialised the same way by the CLI and the API.

Its keys are a contract (``macs.before``, ``latency_ms.after.p50``, ``groups[]``, ``frozen[]``,
``fidelity``...): later criteria and the service add fields, they never rename these.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class BeforeAfter(BaseModel):
    before: int
    after: int

    @property
    def reduction(self) -> float:
        return 0.0 if self.before == 0 else 1.0 - self.after / self.before


class LatencyStats(BaseModel):
    p50: float
    p90: float
    p10: float | None = Field(None, description="With p90, the run-to-run noise band around the median.")
    mean: float
    runs: int
    min: float | None = Field(None, description="Fastest run: the undisturbed time when a busy machine preempts runs.")


class SpeedChange(BaseModel):
    """The pruned model's latency over the original's, from interleaved runs (``workers.speed``)."""

    ratio: float = Field(description="p50 after / p50 before: below 1 is faster.")
    p90_ratio: float = Field(description="p90 after / p90 before.")
    low: float = Field(description="Lower end of the p50 ratio's bootstrap confidence interval.")
    high: float = Field(description="Upper end of the p50 ratio's bootstrap confidence interval.")
    confidence: float = 0.95
    runs: int = Field(description="Interleaved pairs of runs the ratio comes from.")
    summary: str = Field(description="The ratio in words: '1.32x faster', '4% slower'.")
    band: str = Field(description="The interval in words.")
    within_noise: bool = Field(description="The interval holds 1: the noise is wider than the effect.")
    min_ratio: float | None = Field(
        None,
        description="Fastest run after / fastest run before: robust when a "
        "busy machine preempts runs (then the p50 ratio's interval is wide).",
    )


class Latency(BaseModel):
    before: LatencyStats
    after: LatencyStats | None = None
    threads: int
    warmup: int
    change: SpeedChange | None = Field(None, description="After against before, with its noise band.")
    cleaned: LatencyStats | None = Field(
        None,
        description="The original after the pipeline's graph cleanup alone (initializers out of the graph inputs, "
        "constants folded), timed interleaved with both when the cleanup changed the graph (workers.cleanup).",
    )
    pruning_change: SpeedChange | None = Field(
        None, description="After against 'cleaned': the speed-up of pruning alone ('change' includes the cleanup)."
    )
    cleanup_change: SpeedChange | None = Field(None, description="'cleaned' against before: the cleanup's own part.")


class Fidelity(BaseModel):
    """How close the pruned model's outputs are to the original's, on the benchmark inputs."""

    max_abs_diff: float
    cosine_similarity: float
    outputs: dict[str, dict[str, float]] = Field(default_factory=dict)


class GroupReport(BaseModel):
    id: str
    nodes: list[str]
    producers: list[str] = Field(default_factory=list, description="The filters that write these channels.")
    channels_before: int
    channels_after: int
    pinned: int = Field(0, description="Channels that must stay (they reach an op or output we keep intact).")
    pinned_reasons: list[str] = Field(default_factory=list)
    macs_share: float = Field(0.0, description="Share of the model's MACs in the nodes of this group.")
    unit: int = Field(1, description="Channels per unit: head_dim for attention heads (the counts count heads).")
    kind: str | None = Field(None, description="What a unit is: 'filter', 'head' or 'neuron'.")
    max_removed: int | None = Field(
        None, description="Units the options' per-kind limit let go at most (limited_by names it); None: no limit."
    )
    limited_by: str = Field("", description="The option that limited this group (prune_kinds, max_<kind>_ratio).")


class KindReport(BaseModel):
    """Units of one kind across the prunable groups, before and after, with the limit the options set."""

    kind: str = Field(description="'filter' (conv filters), 'head' (attention heads) or 'neuron' (MLP neurons).")
    groups: int
    pruned_groups: int
    units_before: int
    units_after: int
    limit: str = Field("", description="The per-kind option that applied ('' : none).")


class FrozenReport(BaseModel):
    id: str
    nodes: list[str]
    channels: int
    reason: str


class EvaluationPoint(BaseModel):
    """One model on the validation split (what the strategies choose on), in the PyTorch executor."""

    loss: float = Field(description="The training objective: cross-entropy with labels, else distillation.")
    accuracy: float | None = Field(None, description="Top-1 accuracy (with labels).")
    agreement: float | None = Field(None, description="Top-1 agreement with the original model (classifiers).")
    cosine: float = Field(description="Mean cosine similarity of the outputs to the original's.")


class IterationReport(BaseModel):
    iteration: int
    macs: int
    removed_channels: int
    after_pruning: EvaluationPoint
    after_finetune: EvaluationPoint | None = None
    final_loss: float | None = None
    steps: int | None = Field(None, description="Fine-tuning steps this iteration took.")
    kept_step: int | None = Field(
        None,
        description="The step whose weights were kept (best on the validation split; 0: the weights before training).",
    )
    reconstructed_layers: list[str] = Field(
        default_factory=list, description="Layers refit by layer-wise reconstruction (their refit reduced the error)."
    )
    reconstruction_skipped: dict[str, str] = Field(
        default_factory=dict, description="Layers that lost inputs but were left as pruned, with the reason."
    )
    reconstruction_not_kept: dict[str, str] = Field(
        default_factory=dict,
        description="Layers refit but left as pruned because the refit did not lower the error on the "
        "calibration samples held aside to judge it, with both errors (tried: these and reconstructed_layers).",
    )
    reconstruction_samples: int | None = Field(
        None, description="Calibration samples the refits were fit on and judged on (a fifth held aside to judge)."
    )
    reconstruction_ridges: dict[str, float] = Field(
        default_factory=dict,
        description="Per layer refit (kept or not), its ridge strength relative to the mean diagonal of x^T x: "
        "0.001, or, where the layer fit on fewer samples than it has inputs or overfit at 0.001, the strength "
        "of least error on the calibration samples held aside.",
    )
    reconstruction_seconds: float | None = Field(
        None, description="Wall seconds of layer-wise reconstruction (the runs of both models and every solve)."
    )
    reconstruction_left_by_deadline: list[str] = Field(
        default_factory=list,
        description="Layers to refit left as pruned under --time-budget: before each, the time left was less "
        "than its refit was expected to take (as the layers refit before it took), so it and those after it "
        "were not refit.",
    )


class FinetuneReport(BaseModel):
    """How a data-driven job recovered: the schedule, the objective, each step (roundtrip, torch)."""

    schedule: str = Field(description="'one-shot' or 'iterative'.")
    objective: str = Field(description="'cross-entropy' (labels) or 'distillation' (the original's outputs).")
    steps: int = Field(description="Fine-tuning steps after each pruning step.")
    iterative_steps: int
    lr: float
    batch_size: int
    samples: dict[str, int] = Field(description="Samples trained on (train) and chosen on (validation).")
    iterations: list[IterationReport] = Field(
        default_factory=list, description="Per pruning step, on the validation split, measured in the PyTorch executor."
    )
    losses: list[float] = Field(default_factory=list, description="Training loss at every fine-tuning step.")
    # What the time budget bought (issue 29): a busy machine can leave a budget a few dozen steps.
    total_steps: int | None = Field(None, description="Fine-tuning steps taken in all (every pruning step).")
    epochs: float | None = Field(None, description="Passes over the training split those steps made.")
    samples_per_s: float | None = Field(None, description="Training samples per second of fine-tuning.")
    train_seconds: float | None = Field(None, description="Wall seconds of the fine-tuning loops.")
    cpu_per_second: float | None = Field(
        None, description="CPU seconds the job got per wall second while fine-tuning (at most its threads)."
    )
    threads: int | None = Field(None, description="Intra-op threads of the job (its CPU budget).")


class LatencyGroupReport(BaseModel):
    """One group's latency curve: the whole model with only this group pruned to each count."""

    group: str
    channels: int
    kept: int = Field(description="Channels the chosen plan keeps.")
    measured: bool = Field(description="False: the curve is estimated from MACs (the time budget ran out).")
    counts: list[int]
    ms: list[float] = Field(description="Model latency (ms) at each count: the fitted curve the knapsack used.")
    points: dict[int, float] = Field(default_factory=dict, description="Measured model latency (ms) at grid counts.")
    predicted_ms: float = Field(description="Model latency with only this group at the kept count.")
    predicted_saving_ms: float


class LatencyIteration(BaseModel):
    asked: float = Field(description="Latency ratio asked of the latency model in this pass.")
    predicted: float = Field(description="Ratio the latency model predicts for the plan it chose.")
    measured: SpeedChange = Field(description="The plan's model timed against the original.")
    held_whole: str = Field(
        "", description="Kinds this pass left whole to cut last ('attention heads'; '' : none held)."
    )


class LatencyTargetReport(BaseModel):
    """``latency_target``: the latency model, what it predicted, and what was measured."""

    target: float = Field(description="Asked: pruned latency at most this times the original's.")
    applies_to: str = Field(
        "float",
        description="The model the target was measured on: 'float' (the pruned model), or the --quantize "
        "mode ('int8', 'dynamic'): the pruned model quantized, the one written, timed against the float original.",
    )
    met: bool
    measured: SpeedChange = Field(
        description="The chosen plan timed against the original (p50, p90, interval): by the job's closing "
        "benchmark, or without one by the pass that chose it (each pass's timing is in 'iterations')."
    )
    achieved: float | None = Field(
        None,
        description="The ratio acted on: p50, or the fastest runs' when the p50's "
        "interval is wider than half of it (workers.speed.decisive_ratio).",
    )
    predicted: float = Field(description="The latency model's ratio for the chosen plan.")
    missed_by: float | None = Field(None, description="Measured ratio minus the target, when missed.")
    iterations: list[LatencyIteration]
    step: int = Field(description="Channel counts were multiples of this.")
    step_measured: int
    step_source: str
    baseline_ms: float = Field(
        description="The original's latency in the table (fastest run); quantized when 'applies_to' is."
    )
    float_original_ms: float | None = Field(
        None, description="With --quantize: the float original's latency in the table, the reference of the target."
    )
    noise_ms: float
    table_seconds: float
    measured_groups: int
    table_key: str = Field(description="Cache key: model hash, onnxruntime version, settings, CPU.")
    groups: list[LatencyGroupReport]
    held_whole: str = Field(
        "",
        description="Kinds the chosen plan left whole because they are cut last, only once the other kinds "
        "as deep as they go were measured to miss the target ('attention heads'; '' : none held).",
    )


class CutCandidateReport(BaseModel):
    name: str = Field(description="'importance' (the cut made without a table) or 'weight w' (graphops.fastest_cut).")
    weight: float | None = Field(None, description="Weight of predicted time against MACs in the knapsack.")
    macs: int = Field(description="The model's MACs after this cut.")
    importance_removed: float = Field(description="Layer-normalised scores of the removed channels, summed.")
    predicted_ms: float
    predicted_ratio: float = Field(description="Predicted latency over the original's, from the latency table.")
    eligible: bool = Field(description="Within the importance tolerance and at equal MACs (see 'rule').")


class FastestCutReport(BaseModel):
    """``flops_target`` with a latency table: the cuts that reach the MACs goal and the one chosen."""

    chosen: str = Field(description="Name of the candidate kept.")
    predicted_ms: float = Field(description="The chosen cut's latency, predicted by the table.")
    predicted_ratio: float
    baseline_ms: float = Field(description="The original's latency in the table (fastest run).")
    noise_ms: float
    step: int = Field(description="Channel counts were multiples of this.")
    goal_macs: int
    rule: str
    table_key: str = Field(description="Cache key: model hash, onnxruntime version, settings, CPU.")
    candidates: list[CutCandidateReport]


class PruneReport(BaseModel):
    onnxprune_version: str
    model_sha256: str
    output_sha256: str | None = None
    options: dict[str, Any] = Field(
        description="The options the job ran with, nested by strategy: under 'strategies' each strategy the job "
        "ran (kind, name) with the options it read; flat beside it the job-wide ones and any value no strategy of "
        "this job read. A valid config that gives the same options (earlier reports: all flat, also valid)."
    )
    input_shapes: dict[str, list[int]]
    macs: BeforeAfter
    params: BeforeAfter
    latency_ms: Latency | None = None
    fidelity: Fidelity | None = None
    groups: list[GroupReport]
    frozen: list[FrozenReport]
    kinds: list[KindReport] = Field(
        default_factory=list, description="Per kind of unit (filters, heads, neurons): groups and units kept."
    )
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    layers: list[LayerReport] = Field(default_factory=list, description="MACs and filters per Conv/Gemm node.")
    evaluation: HeldOutEvaluation | None = Field(None, description="Accuracy or fidelity on held-out data.")
    data_splits: list[DataSplit] = Field(
        default_factory=list, description="With data: how the data file was split and what used each part."
    )
    sensitivity: SensitivityReport | None = Field(None, description="Per-group curves behind ratio 'auto'.")
    group_ratios: dict[str, float] = Field(
        default_factory=dict,
        description="Ratio chosen per group (ratio 'auto', or a detector's MACs target with data).",
    )
    learned: LearnedReport | None = Field(None, description="Criterion 'learned': the per-layer agents' search.")
    quantization: QuantizationReport | None = Field(
        None,
        description="--quantize: how the pruned model was quantized; 'latency_ms' and 'evaluation' are then "
        "of the quantized model, and this section holds the float pruned model's figures.",
    )
    round_to: int | None = Field(None, description="Channel counts were kept multiples of this.")
    round_to_source: str | None = Field(None, description="Why: given, or how 'auto' chose it.")
    latency_target: LatencyTargetReport | None = Field(None, description="latency_target: predicted and measured.")
    fastest_cut: FastestCutReport | None = Field(
        None, description="flops_target with a latency table: the equal-MACs cuts compared and the fastest chosen."
    )
    interface_changes: list[str] = Field(
        default_factory=list,
        description="How the written model's graph inputs or outputs differ from the original's (workers.cleanup).",
    )
    latency_table_cache: str | None = Field(
        None,
        description="The latency table cached on this machine by an earlier latency_target run that this job "
        "used without measuring (round_to 'auto' took its step, a MACs target compared cuts on it): the same "
        "command without that file (another machine, an emptied cache) can prune differently.",
    )


# ---- sensitivity analysis and held-out evaluation (workers.sensitivity, workers.evaluation) ----

SENSITIVITY_FORMAT = "onnxprune.sensitivity/1"


class LayerReport(BaseModel):
    name: str
    op_type: str
    macs_before: int
    macs_after: int
    filters_before: int | None = None
    filters_after: int | None = None


class HeldOutEvaluation(BaseModel):
    metric: str = Field(description="'accuracy' (top-1, with labels) or 'fidelity' (cosine to the original).")
    source: str = Field(description="'labels', 'original outputs' or 'synthetic inputs'.")
    samples: int
    split: str = Field(description="Which samples of the data file were used.")
    before: float
    after: float
    after_pruning: float | None = Field(
        None,
        description="Data-driven jobs that fine-tune: the pruned original weights, before fine-tuning "
        "('after' is the written, fine-tuned model).",
    )
    finetune: FinetuneReport | None = None
    max_drop: float | None = Field(
        None, description="--ratio auto / --criterion learned: the drop the plan was chosen to stay within."
    )
    validation_drop: float | None = Field(
        None, description="The drop the strategy measured on the validation split when it chose the plan."
    )
    missed_by: float | None = Field(
        None, description="With max_drop: how far the held-out drop (before - after) exceeds it; 0 when within."
    )
    detections: DetectionAgreement | None = Field(
        None, description="A detector (--detector): its detections against the original's on these samples."
    )


class DetectionClass(BaseModel):
    boxes: int = Field(description="The original's boxes of this class (the ground truth).")
    detections: int = Field(description="The pruned model's boxes of this class at the same confidence.")
    ap50: float
    ap50_95: float


class DetectionAgreement(BaseModel):
    """mAP of the pruned model with the original's detections as ground truth (``workers.detection``):
    1.0 when it finds every box the original finds, at the same place and class."""

    output: str
    layout: str = Field(description="How the output was read: 'YOLO [batch, 4 + classes, anchors], ...'.")
    classes: int
    images: int
    confidence: float = Field(description="The original's boxes scoring at least this are the ground truth.")
    nms_iou: float
    reference_boxes: int = Field(description="Boxes the original made on these images (after NMS).")
    candidate_boxes: int = Field(description="Boxes the pruned model made at the same confidence.")
    map50: float | None = Field(description="Mean over the classes the original detected of AP at IoU 0.5.")
    map50_95: float | None = Field(description="The same, AP averaged over IoU 0.5:0.95 (COCO).")
    per_class: dict[str, DetectionClass] = Field(default_factory=dict, description="By class index.")
    after_pruning_map50: float | None = Field(
        None, description="Jobs that recover: mAP50 of the pruned weights before recovery ('map50' is after)."
    )


class DataSplit(BaseModel):
    """One part of the data file (``roundtrip.data.split_data``): which samples, and what used them."""

    name: str = Field(description="'train', 'validation' or 'held_out'.")
    samples: int
    rule: str = Field(description="Which samples of the data file, by index.")
    used_for: str


class QuantizationReport(BaseModel):
    """Post-training quantization of the pruned model (``workers.quantize``), with the pruned float
    model's figures beside it so each step's cost and gain can be read off."""

    mode: str = Field(description="'int8' (static QDQ, calibrated) or 'dynamic' (weights only).")
    format: str = "QDQ"
    per_channel: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"
    reduce_range: bool = Field(description="7-bit weights, against saturation on CPUs without VNNI.")
    calibration_method: str | None = None
    calibration_samples: int = 0
    calibration_source: str | None = Field(None, description="'data' (training split) or 'generated inputs'.")
    quantize_nodes: int = 0
    dequantize_nodes: int = 0
    fidelity_to_float: Fidelity | None = Field(None, description="Quantized vs float pruned model, on data.")
    float_output_sha256: str | None = None
    float_latency_ms: LatencyStats | None = Field(None, description="The float pruned model, same settings.")
    float_held_out: float | None = Field(None, description="The float pruned model's held-out metric.")


class SensitivityCurve(BaseModel):
    """One group pruned alone at each ratio, everything else intact (Li et al., Figure 2)."""

    group: str
    producers: list[str]
    channels: int
    ratios: list[float]
    channels_removed: list[int]
    values: list[float] = Field(description="The metric with this group pruned at each ratio.")
    macs_after: list[int] = Field(description="Model MACs with only this group pruned at each ratio.")


class SensitivityReport(BaseModel):
    format: str = SENSITIVITY_FORMAT
    model_sha256: str
    criterion: str
    metric: str
    source: str
    samples: int
    baseline: float = Field(description="The metric of the unpruned model.")
    macs: int = Field(description="MACs of the unpruned model.")
    ratios: list[float]
    curves: list[SensitivityCurve]
    frozen: list[FrozenReport] = Field(default_factory=list)
    seconds: float = 0.0


class LearnedLayerReport(BaseModel):
    """One layer (channel group) of the learned search (roundtrip.learned)."""

    group: str
    producers: list[str]
    channels: int
    kept: int = Field(description="Filters the trained agent kept.")
    reward: float = Field(description="R = psi * phi of the applied decision.")
    drop: float = Field(description="p_hat - p on the reward samples with this layer pruned, before its fine-tuning.")
    drop_finetuned: float | None = Field(None, description="The same after this layer's fine-tuning (if kept).")
    rewards: list[float] = Field(description="Mean sampled reward per episode: the agent's learning curve.")
    seconds: float


class LearnedReport(BaseModel):
    metric: str = Field(description="'accuracy' (labels) or 'fidelity' (cosine to the original's outputs).")
    max_drop: float = Field(description="b: the accepted drop, as a fraction.")
    baseline: float = Field(description="p_hat: the original's metric on the reward samples.")
    reward_samples: int = Field(description="Held-out samples each proposed pruning is tried on.")
    episodes: int
    samples: int = Field(description="Prunings sampled per episode.")
    layers: list[LearnedLayerReport]
    unsearched: list[str] = Field(
        default_factory=list,
        description="Groups left whole because --time-budget ran out before the search reached them.",
    )


PruneReport.model_rebuild()
