"""Options of a pruning job: one typed model shared by the CLI, the REST config and workers."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from onnxprune.graphops.kinds import KIND_WORDS, KINDS, GroupKind, KindLimits

if TYPE_CHECKING:  # numpy and Pillow's side, imported where photos are read
    from onnxprune.roundtrip.images import ImagePreprocessing

DEFAULT_MAX_DROP = 0.01
# The criterion a job with data gets when it names none: the best in the committed results
# (benchmarks/results/quality.md: at -50% MACs taylor 77.10% held out, l1 76.25%).
DATA_CRITERION = "taylor"
# ... and a transformer's at a MACs target, with MLP neurons first and heads last (workers.default_criterion).
TRANSFORMER_CRITERION = "obs"
# The word a job with data and no criterion gets: resolved to one of the two once the model is analysed.
AUTO_CRITERION = "auto"
_SHAPE_RE = re.compile(r"^(?P<name>.+):(?P<dims>\d+(x\d+)*)$")


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """Parse ``NAME:1x3x224x224`` (the CLI and config spelling) into a name and dims."""
    match = _SHAPE_RE.match(text.strip())
    if not match:
        raise ValueError(f"input shape {text!r} is not NAME:DxDx... (e.g. input:1x3x224x224)")
    dims = [int(d) for d in match.group("dims").split("x")]
    if any(d <= 0 for d in dims):
        raise ValueError(f"input shape {text!r} has a non-positive dimension")
    return match.group("name"), dims


def _about(
    group: str, *, needs_data: bool = False, flag: str | None = None, default: str | None = None
) -> dict[str, Any]:
    """Field metadata the CLI, ``submit`` and the upload page are built from: the group an option is
    shown in, whether it needs a data file, a CLI flag where it is not ``--field-name``, and the default
    in words where it depends on more than the field (``criterion``: on the data)."""
    about: dict[str, Any] = {"group": group, "needs_data": needs_data}
    if flag is not None:
        about["flag"] = flag
    if default is not None:
        about["default"] = default
    return about


def _comma_items(value: object) -> list[Any] | None:
    """A list option as a form or a CLI flag gives it ('a, b' or ['a,b', 'c']) or as JSON does (a list):
    its items, split on commas, stripped, empty ones dropped; None when ``value`` is no list at all."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        return None
    parts = [w for item in items for w in (item.split(",") if isinstance(item, str) else [item])]
    return [w.strip() if isinstance(w, str) else w for w in parts if not (isinstance(w, str) and not w.strip())]


OPTION_GROUPS = {
    "target": "How much to remove",
    "selection": "Which filters",
    "recovery": "Recovery (needs data)",
    "learned": "Learned search (needs data)",
    "quantize": "Quantization",
    "benchmark": "Benchmark",
    "model": "Model inputs",
}


class RatioTarget(BaseModel):
    """Remove this fraction of every prunable group's channels (Li et al.'s uniform setting)."""

    kind: Literal["ratio"] = "ratio"
    ratio: float


class MacsTarget(BaseModel):
    """Remove the globally least important channels until MACs fall by this fraction."""

    kind: Literal["macs"] = "macs"
    fraction: float


class AutoTarget(BaseModel):
    """Per-group ratios from sensitivity curves, the drop within ``max_drop`` (judged on validation samples)."""

    kind: Literal["auto"] = "auto"
    max_drop: float


class LearnedTarget(BaseModel):
    """Per-layer agents decide each layer's count, the drop within ``max_drop`` (Huang et al.)."""

    kind: Literal["learned"] = "learned"
    max_drop: float


class LatencyTarget(BaseModel):
    """Measured latency at most ``ratio`` times the original's (HALP-style knapsack, closed loop)."""

    kind: Literal["latency"] = "latency"
    ratio: float


# Criterion words that choose a search, not a channel ranking: accepted as ``criterion`` but not in
# graphops' ranking registry (``graphops.scoring``), since nothing there could rank channels for them.
SEARCH_CRITERIA = {"learned": "per-layer agents choose each layer's count from max_drop (workers.strategies.learned)"}
# Criterion words resolved to a ranking once the model is analysed (workers.default_criterion).
RESOLVED_CRITERIA = {
    AUTO_CRITERION: f"with data: {TRANSFORMER_CRITERION} for a transformer at a MACs target, else {DATA_CRITERION}"
}


def known_criteria() -> list[str]:
    """Every ``criterion`` word: the rankings registered with graphops, then the searches."""
    from onnxprune.graphops.scoring import available_criteria

    return sorted(available_criteria() | SEARCH_CRITERIA.keys() | RESOLVED_CRITERIA.keys())


def criterion_needs_data(name: str) -> bool:
    """Whether criterion ``name`` scores on data (the searches always do)."""
    from onnxprune.graphops.scoring import criterion_needs_data as ranking_needs_data

    return name in SEARCH_CRITERIA or name in RESOLVED_CRITERIA or ranking_needs_data(name)


# The fields ``PruneOptions.image_preprocessing`` reads: how photos given as data are preprocessed.
IMAGE_OPTIONS = ("image_channels", "image_resize", "image_scale", "image_mean", "image_std")

# The words of ``recovery`` (the strategies they choose: ``workers.strategies.choose_recovery``).
RecoveryChoice = Literal["auto", "none", "reconstruct", "finetune"]

Target = Annotated[RatioTarget | MacsTarget | AutoTarget | LearnedTarget | LatencyTarget, Field(discriminator="kind")]


class PruneOptions(BaseModel):
    """What to prune and how: the one options schema. Field names are the REST config keys; the CLI
    flags (``--field-name``), ``submit`` and the upload page's form are derived from the fields and
    their ``json_schema_extra`` (see ``_about``). A config may also give them nested by strategy under
    ``strategies`` (``workers.strategies.nesting``). :attr:`target` gives the typed target."""

    model_config = ConfigDict(extra="forbid")

    criterion: str = Field(
        "l1",
        description="Filter ranking: l1, l2, random, bn-gamma; with data: taylor, "
        "mean-activation, apoz, contribution, obs (forward passes only: what a head or neuron adds to the "
        "layers reading it, and what a least-squares refit of them cannot rebuild), learned (max_drop), "
        f"auto ({RESOLVED_CRITERIA[AUTO_CRITERION]}).",
        json_schema_extra=_about(
            "selection", default=f"{AUTO_CRITERION} with data (l1 without PyTorch or with recovery 'none'), else l1"
        ),
    )
    ratio: float | Literal["auto"] | None = Field(
        None,
        description="Fraction of channels removed from every prunable group (Li et al.), or 'auto': "
        "per-group ratios from sensitivity curves within max_drop (needs data; docs/SENSITIVITY.md).",
        json_schema_extra=_about("target"),
    )
    max_drop: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        None,
        description="With ratio 'auto' or criterion 'learned': tolerated drop of accuracy (or fidelity), as a "
        "fraction; plans are judged on the validation split after reconstruction, and the report checks the "
        "held-out drop against it; default 0.01.",
        json_schema_extra=_about("target"),
    )
    flops_target: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        None,
        description="Fraction of MACs to remove, by global ranking of layer-normalised scores.",
        json_schema_extra=_about("target"),
    )
    round_to: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = Field(
        "auto",
        description="Keep channel counts multiples of this number; 'auto': where onnxruntime's kernels run "
        "faster: conv filters on the blocked conv kernels' step (the measured latency staircase, else the CPU's "
        "vector width: 16 with AVX-512, 8 with AVX2; 16 on x86 for a model that runs int8, QDQ or quantized), MLP widths and attention heads on the 16 columns of its "
        "SGEMM kernel (widths 16k+1 to 16k+16 take the same time; a head of 32 or 64 channels is on it, so any "
        "head count is: benchmarks/results/transformer_widths.md); 1: exact counts.",
        json_schema_extra=_about("selection"),
    )
    latency_target: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        None,
        description="Keep the measured onnxruntime latency at most this times the original's (importance per "
        "millisecond from a measured latency table, HALP; the result is timed and refined).",
        json_schema_extra=_about("target"),
    )
    latency_budget_s: Annotated[float, Field(gt=0.0, le=3600.0)] = Field(
        60.0,
        description="latency_target: seconds the latency table may take to measure (largest groups first; "
        "the rest estimated from MACs). Tables are cached per model, onnxruntime version, settings and CPU.",
        json_schema_extra=_about("target", flag="--latency-budget"),
    )
    latency_iterations: Annotated[int, Field(ge=1, le=10)] = Field(
        4,
        description="latency_target: at most this many prune-and-measure passes to meet the target (one may find "
        "that MLP neurons alone cannot, before heads are cut).",
        json_schema_extra=_about("target"),
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Node names or globs whose channels are never pruned (repeatable).",
        json_schema_extra=_about("selection"),
    )
    prune_kinds: list[GroupKind] = Field(
        default_factory=lambda: list(KINDS),
        description="Which units may be removed: filter (conv filters), head (attention heads), neuron (MLP / "
        "fully connected widths); the others stay whole (e.g. 'neuron' alone; 'filter,neuron' leaves heads "
        "alone). Every target meets its cut with the kinds named (repeatable or comma-separated).",
        json_schema_extra=_about("selection"),
    )
    max_filter_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] | None = Field(
        None,
        description="At most this fraction of each conv filter group's channels is removed, whatever the "
        "target (a MACs or latency target takes the rest from other groups); 0 leaves filters whole.",
        json_schema_extra=_about("selection"),
    )
    max_head_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] | None = Field(
        None,
        description="At most this fraction of each attention layer's heads is removed, whatever the target "
        "(e.g. 0.25: at most 3 of 12 heads); 0 leaves heads whole.",
        json_schema_extra=_about("selection"),
    )
    max_neuron_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] | None = Field(
        None,
        description="At most this fraction of each MLP's (fully connected layer's) neurons is removed, "
        "whatever the target; 0 leaves neurons whole.",
        json_schema_extra=_about("selection"),
    )
    input_shapes: dict[str, list[int]] = Field(
        default_factory=dict,
        description="Concrete shapes for inputs with symbolic dims, NAME:1x3x224x224 (repeatable; in JSON "
        '{"input": [1, 3, 224, 224]}).',
        json_schema_extra=_about("model", flag="--input-shape"),
    )
    detector: Literal["auto", "yolo", "none"] = Field(
        "auto",
        description="Judge and recover a detector by its detections: 'yolo' declares a YOLO output [batch, 4 + "
        "classes, anchors] (or [batch, anchors, 4 + classes]), boxes cx, cy, w, h; 'auto' recognises one (class "
        "scores in [0, 1]); 'none' treats every output alike. With data, the report gives mAP against the "
        "original's detections and recovery weights the anchors the original is confident about.",
        json_schema_extra=_about("model"),
    )
    detection_confidence: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        0.25,
        description="Detectors: the original's boxes scoring at least this are the ground truth of the mAP.",
        json_schema_extra=_about("model"),
    )
    image_channels: Literal["rgb", "bgr"] = Field(
        "rgb",
        description="Photos as data (a folder, or uint8 [N, h, w, 3] images in the .npz): the channel order the "
        "model was trained on ('bgr': YOLOX and other OpenCV-trained exports).",
        json_schema_extra=_about("model", needs_data=True),
    )
    image_resize: Literal["letterbox", "stretch", "crop"] = Field(
        "letterbox",
        description="Photos as data: 'letterbox' scales each to fit the input, aspect kept, on grey "
        "(Ultralytics); 'stretch' resizes it to the input; 'crop' scales its shorter side to the input / 0.875 "
        "and takes the centre (ImageNet classifiers).",
        json_schema_extra=_about("model", needs_data=True),
    )
    image_scale: Annotated[float, Field(gt=0.0, le=65535.0)] = Field(
        255.0,
        description="Photos as data: pixel values (0-255) are divided by this; 1 keeps them 0-255 (YOLOX).",
        json_schema_extra=_about("model", needs_data=True),
    )
    image_mean: list[float] | None = Field(
        None,
        description="Photos as data: three values (per channel, in the model's order) subtracted after "
        "--image-scale, e.g. 0.485,0.456,0.406 for ImageNet classifiers.",
        json_schema_extra=_about("model", needs_data=True),
    )
    image_std: list[float] | None = Field(
        None,
        description="Photos as data: three values (per channel) the pixels are divided by after --image-mean, "
        "e.g. 0.229,0.224,0.225 for ImageNet classifiers.",
        json_schema_extra=_about("model", needs_data=True),
    )
    benchmark: bool = Field(
        True, description="Measure onnxruntime latency before and after.", json_schema_extra=_about("benchmark")
    )
    benchmark_runs: Annotated[int, Field(ge=1, le=1000)] = Field(
        30, description="Timed runs per model.", json_schema_extra=_about("benchmark", flag="--runs")
    )
    threads: Annotated[int, Field(ge=1, le=64)] = Field(
        1,
        description="onnxruntime intra-op threads of the latency benchmark and output checks, as deployed; "
        "training and evaluation use the job's share of the CPU (ONNXPRUNE_JOB_THREADS sets it).",
        json_schema_extra=_about("benchmark"),
    )
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(
        0, description="Seed of the random criterion and of benchmark inputs.", json_schema_extra=_about("selection")
    )
    # Data-driven pruning (the data file itself comes with the job, never as a path in the config).
    finetune_steps: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        0,
        description="Fine-tuning steps after each pruning step (needs data); 0: no fine-tuning.",
        json_schema_extra=_about("recovery", needs_data=True),
    )
    iterative_steps: Annotated[int, Field(ge=1, le=1000)] = Field(
        1,
        description="Reach the target in this many prune-then-fine-tune steps (Molchanov et al.); 1: one-shot.",
        json_schema_extra=_about("recovery", needs_data=True),
    )
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = Field(
        0.002,
        description="Fine-tuning learning rate (SGD, Nesterov momentum 0.9, warm-up, cosine decay). Recovery "
        "starts from weights that distillation only has to nudge: on ResNet-20 at -30% MACs with a 300 s "
        "budget, 0.002 held out 78.6% against 78.4% at 0.001, 77.75% at 0.005 and 75.05% at 0.02 "
        "(benchmarks/results/quality.md). The weights before training compete for the checkpoint kept.",
        json_schema_extra=_about("recovery", needs_data=True),
    )
    time_budget: Annotated[float, Field(ge=5.0, le=7 * 24 * 3600.0)] | None = Field(
        None,
        description="Seconds the whole job may take: data-driven scoring stops by 30% of it (after one batch), "
        "layer-wise reconstruction fits on the calibration samples the time left allows, and fine-tuning gets "
        "what is left (its step count is planned from the measured step time; --finetune-steps then caps it; "
        "no step when one does not fit). The report says what the budget cut short.",
        json_schema_extra=_about("recovery", needs_data=True),  # it budgets recovery: without data, nothing
    )
    augment: bool = Field(
        True,
        description="Recovery: random crops and flips of image-like (4-D float) inputs; off for inputs "
        "where a flip changes the meaning.",
        json_schema_extra=_about("recovery", needs_data=True),
    )
    match_features: bool = Field(
        False,
        description="Fine-tuning also matches the original's intermediate features (the outputs of the "
        "layers that lost inputs, on the kept channels), not only its outputs: more signal per sample. "
        "Off by default: on ResNet-20 at -50% MACs with 1,200 training images and 600 s it held "
        "out 76.75% against 77.30% without (each step is slower); with 300 images and 120 s, 67.10% against 66.00%.",
        json_schema_extra=_about("recovery", needs_data=True),
    )
    recovery: RecoveryChoice = Field(
        "auto",
        description="With data: 'reconstruct' refits each layer that lost inputs by least squares to the "
        "original's outputs (He et al. 2017; no labels, seconds); 'finetune' fine-tunes only; 'auto' reconstructs, "
        "then fine-tunes when asked (steps or a time budget); 'none' keeps the pruned weights.",
        json_schema_extra=_about("recovery", needs_data=True),
    )
    reconstruct_samples: Annotated[int, Field(ge=8, le=100_000)] = Field(
        1024,
        description="Calibration samples layer-wise reconstruction fits on (fewer where one sample's activations are "
        "big: token ids of a long sequence, large images; judging "
        "--max-drop candidates uses at most 256).",
        json_schema_extra=_about("recovery", needs_data=True),
    )
    batch_size: Annotated[int, Field(ge=1, le=4096)] = Field(
        32,
        description="Batch size for scoring, fine-tuning and evaluation.",
        json_schema_extra=_about("recovery", needs_data=True),
    )
    score_batches: Annotated[int, Field(ge=1, le=10_000)] = Field(
        8,
        description="Batches of data the data-driven criteria look at.",
        json_schema_extra=_about("selection", needs_data=True),
    )
    learned_episodes: Annotated[int, Field(ge=1, le=10_000)] = Field(
        20,
        description="Criterion 'learned': agent training episodes per layer (docs/LEARNED.md).",
        json_schema_extra=_about("learned", needs_data=True),
    )
    learned_samples: Annotated[int, Field(ge=2, le=1000)] = Field(
        8,
        description="Criterion 'learned': prunings sampled and tried on held-out data per episode.",
        json_schema_extra=_about("learned", needs_data=True),
    )
    flops_regularization: Annotated[float, Field(ge=0.0, le=1e6)] = Field(
        0.0,
        description="Taylor only: subtract this times each layer's relative MACs per channel (Molchanov et al.).",
        json_schema_extra=_about("selection", needs_data=True),
    )
    quantize: Literal["none", "int8", "dynamic"] = Field(
        "none",
        description="After pruning and recovery, quantize with onnxruntime: 'int8' (static QDQ, per-channel "
        "weights, calibrated on the data or, without data, on generated inputs) or 'dynamic' (weights only). The "
        "float pruned model is kept too (NAME.float.onnx).",
        json_schema_extra=_about("quantize"),
    )
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax",
        description="quantize int8: how activation ranges are calibrated.",
        json_schema_extra=_about("quantize"),
    )

    @property
    def target(self) -> RatioTarget | MacsTarget | AutoTarget | LearnedTarget | LatencyTarget:
        """The typed target the flat fields spell (the validators below guarantee exactly one)."""
        if self.latency_target is not None:
            return LatencyTarget(ratio=self.latency_target)
        if self.criterion == "learned":
            return LearnedTarget(max_drop=self.max_drop or DEFAULT_MAX_DROP)
        if self.ratio == "auto":
            return AutoTarget(max_drop=self.max_drop or DEFAULT_MAX_DROP)
        if self.flops_target is not None:
            return MacsTarget(fraction=self.flops_target)
        return RatioTarget(ratio=float(self.ratio or 0.0))

    @model_validator(mode="before")
    @classmethod
    def _flatten_nested(cls, data: Any) -> Any:
        """A config may nest options by strategy (``{"strategies": {"recovery": {"finetune": {"lr": 0.01}}}}``,
        ``workers.strategies.nesting``): the same fields, so flattened here, before anything else."""
        if isinstance(data, dict) and "strategies" in data:
            from onnxprune.workers.strategies.nesting import flatten_config

            return flatten_config(data)
        return data

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, value: str) -> str:
        if value not in known_criteria():
            raise ValueError(f"unknown criterion {value!r}; choose one of: {', '.join(known_criteria())}")
        return value

    def data_requirement(self, *, sensitivity_given: bool = False, plan_given: bool = False) -> str | None:
        """Why this job needs a data file, or None when it runs without one: what its strategies
        declare (``workers.strategies.needs.job_needs``, the one place that says it)."""
        from onnxprune.workers.strategies.needs import job_needs

        return job_needs(self, has_data=False, plan_given=plan_given, sensitivity_given=sensitivity_given).data

    @field_validator("ratio", mode="before")
    @classmethod
    def _ratio_in_range(cls, value: object) -> object:
        # Checked here rather than by Field bounds: with the "auto" alternative, pydantic would
        # report the bound per union member ("ratio.constrained-float ... (and 1 more)").
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"ratio must be a number in [0, 1) or 'auto', got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"ratio must be a number in [0, 1) or 'auto', got {value!r}") from None
        if not 0.0 <= number < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {number:g}")
        return number

    @field_validator("round_to", mode="before")
    @classmethod
    def _round_to_word_or_step(cls, value: object) -> object:
        # One message for both alternatives (pydantic would name the union members).
        if value == "auto":
            return value
        try:
            number = int(str(value)) if isinstance(value, str) else value
        except ValueError:
            number = None
        if (
            isinstance(number, bool)
            or not isinstance(number, (int, float))
            or number != int(number)
            or not 1 <= number <= 1024
        ):
            raise ValueError(f"must be 'auto' or a whole number from 1 to 1024, got {value!r}")
        return int(number)

    @field_validator("prune_kinds", mode="before")
    @classmethod
    def _kinds_listed(cls, value: object) -> object:
        # 'filter,neuron' (a form's text, a CLI flag) as well as a list; plurals accepted as typed.
        words = _comma_items(value)
        if words is None:
            return value
        words = [w[:-1] if isinstance(w, str) and w[:-1] in KINDS else w for w in words]
        if not words:
            raise ValueError(f"name at least one kind to prune: {', '.join(KINDS)}")
        return list(dict.fromkeys(words))

    @field_validator("image_mean", "image_std", mode="before")
    @classmethod
    def _three_channel_values(cls, value: object) -> object:
        # '0.485,0.456,0.406' (a form's text, a CLI flag given once) as well as a list of numbers.
        numbers = _comma_items(value)
        if numbers is None:
            return value
        if len(numbers) != 3:
            raise ValueError(f"give three values, one per colour channel (got {len(numbers)})")
        return numbers

    @field_validator("image_std")
    @classmethod
    def _positive_std(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and min(value) <= 0:
            raise ValueError("image_std values must be above 0 (pixels are divided by them)")
        return value

    @property
    def image_preprocessing(self) -> ImagePreprocessing:
        """How photos given as data become the model's input (``roundtrip.images``): the fields of
        ``IMAGE_OPTIONS``, which every command that reads photos takes (prune, submit, sensitivity)."""
        from onnxprune.roundtrip.images import ImagePreprocessing

        mean, std = self.image_mean or [0.0, 0.0, 0.0], self.image_std or [1.0, 1.0, 1.0]
        return ImagePreprocessing(
            self.image_channels,
            self.image_resize,
            self.image_scale,
            (mean[0], mean[1], mean[2]),
            (std[0], std[1], std[2]),
        )

    @property
    def kind_limits(self) -> KindLimits:
        """The per-kind control the options spell (``graphops.kinds``)."""
        ratios = {kind: getattr(self, f"max_{kind}_ratio") for kind in KINDS}
        return KindLimits(frozenset(self.prune_kinds), {k: r for k, r in ratios.items() if r is not None})

    @field_validator("input_shapes")
    @classmethod
    def _positive_dims(cls, value: dict[str, list[int]]) -> dict[str, list[int]]:
        for name, dims in value.items():
            if not dims or any(d <= 0 for d in dims):
                raise ValueError(f"input shape for {name!r} must be positive dims, got {dims}")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> PruneOptions:
        for kind in KINDS:
            if getattr(self, f"max_{kind}_ratio") is not None and kind not in self.prune_kinds:
                raise ValueError(
                    f"max_{kind}_ratio limits {KIND_WORDS[kind]}, which prune_kinds "
                    f"({', '.join(self.prune_kinds)}) leaves whole; drop one of the two"
                )
        if all(getattr(self, f"max_{kind}_ratio") == 0.0 for kind in self.prune_kinds):
            raise ValueError(
                f"every kind prune_kinds names ({', '.join(self.prune_kinds)}) has a max ratio of 0: nothing may be "
                "removed"
            )
        if self.recovery == "none" and self.finetune_steps > 0:
            raise ValueError(
                "recovery 'none' keeps the pruned weights; drop finetune_steps or choose recovery 'finetune' or 'auto'"
            )
        if self.ratio is not None and self.flops_target is not None:
            raise ValueError("give either ratio or flops_target, not both")
        if self.latency_target is not None:
            if (
                self.ratio is not None
                or self.flops_target is not None
                or self.criterion == "learned"
                or self.max_drop is not None
            ):
                raise ValueError(
                    "latency_target chooses every group's count itself; drop ratio, flops_target, "
                    "max_drop and criterion 'learned'"
                )
            if self.iterative_steps > 1:
                raise ValueError("latency_target prunes in one step; drop iterative_steps")
            return self
        if self.criterion == "learned":
            return self._learned()
        if self.ratio is None and self.flops_target is None:
            self.ratio = 0.5
        if self.max_drop is not None and self.ratio != "auto":
            raise ValueError("max_drop applies only to ratio 'auto' or criterion 'learned'")
        if self.ratio == "auto" and self.max_drop is None:
            self.max_drop = DEFAULT_MAX_DROP
        if self.iterative_steps > 1 and self.ratio == "auto":
            raise ValueError("iterative_steps needs a numeric ratio or a flops_target, not ratio 'auto'")
        return self

    def _learned(self) -> PruneOptions:
        """The learned criterion chooses every layer's count from max_drop: no ratio, no MACs target."""
        capped = [f"max_{kind}_ratio" for kind in KINDS if getattr(self, f"max_{kind}_ratio")]
        if capped:
            raise ValueError(
                f"criterion 'learned' lets each layer's agent choose its count and takes no {', '.join(capped)}; "
                "use prune_kinds to leave a kind whole, or ratio 'auto' with the limit"
            )
        if self.ratio is not None or self.flops_target is not None:
            raise ValueError(
                "criterion 'learned' chooses how many filters each layer keeps from max_drop; "
                "drop ratio and flops_target"
            )
        if self.iterative_steps > 1:
            raise ValueError(
                "criterion 'learned' prunes layer by layer with fine_tuning after each; drop iterative_steps"
            )
        if self.max_drop is None:
            self.max_drop = DEFAULT_MAX_DROP
        return self


def with_data_defaults(
    options: PruneOptions, *, data_given: bool, torch_available: bool, quantized: bool = False
) -> tuple[PruneOptions, str | None]:
    """The options a job with data runs with when they name no criterion: ``AUTO_CRITERION`` (taylor, or
    obs for a transformer at a MACs target: ``workers.default_criterion``), which needs PyTorch (without
    it, l1 and a note saying so). Unchanged when the criterion was chosen, without data, with recovery
    'none' (the weight-only path a quantized model takes), or for a ``quantized`` (QDQ) model, which
    PyTorch cannot run: it is then refused, or not, for what the user asked. Called where a job is
    accepted (the CLI, the service), the only places that know which options the user set."""
    if not data_given or "criterion" in options.model_fields_set or options.recovery == "none" or quantized:
        return options, None
    if not torch_available:
        return options, f"criterion l1: {DATA_CRITERION}, the default with data, needs PyTorch, which is not installed"
    return options.model_copy(update={"criterion": AUTO_CRITERION}), None


def option_flag(name: str) -> str:
    """The CLI flag of schema field ``name`` (``--field-name``, or the field's own ``flag``)."""
    field = PruneOptions.model_fields[name]
    about = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return str(about.get("flag") or "--" + name.replace("_", "-"))


def data_options_set(options: PruneOptions) -> list[str]:
    """The fields the schema marks ``needs_data`` whose value is not the default: what the options ask of
    work on data. Compared with the default, not with what was typed, so that the API's stored config (every
    field set) and the CLI's flags answer alike; a default given explicitly changes nothing either way."""
    return [
        name
        for name, field in PruneOptions.model_fields.items()
        if isinstance(field.json_schema_extra, dict)
        and field.json_schema_extra.get("needs_data")
        and getattr(options, name) != field.get_default(call_default_factory=True)
    ]
