"""A latency model of one model: per channel group, latency as a function of its channel count.

Measured elsewhere (``workers.latency``, onnxruntime in the sandbox); here it is plain data and
the pure functions that read it. Each curve holds the whole model's latency with only that group
pruned, on every multiple of the CPU's vector width (the group's own count is the baseline).
Between those counts the model is a staircase: a count costs what the next count above it costs,
because onnxruntime's blocked (NCHWc) conv kernels pad channels up to their block. Savings of
different groups are taken as additive; the closed loop (``workers.latency_target``) corrects what
that misses.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

TABLE_FORMAT = "onnxprune.latency/1"


@dataclass(frozen=True)
class LatencyCurve:
    """Model latency (ms, p50 of interleaved runs) with only ``group`` pruned to each count."""

    group: str
    channels: int
    counts: tuple[int, ...]  # ascending: every multiple of the vector width below ``channels``, and ``channels``
    ms: tuple[float, ...]  # monotone: never more for fewer channels (see ``monotone``)
    measured: bool = True  # False: estimated from MACs (the time budget ran out first)
    probes: dict[int, float] = field(default_factory=dict)  # off-step counts -> ms, for the staircase
    points: dict[int, float] = field(default_factory=dict)  # the raw measurements the curve was fitted to

    def at(self, keep: int) -> float:
        """Latency with the group at ``keep`` channels: the measured count at or above it."""
        index = bisect.bisect_left(self.counts, keep)
        return self.ms[min(index, len(self.ms) - 1)]


@dataclass(frozen=True)
class LatencyTable:
    """The latency model of one model under one set of deploy settings."""

    key: str  # what it was measured for: model hash, onnxruntime version, settings, CPU
    baseline_ms: float
    noise_ms: float  # half-width of the baseline's interval: differences below it are not real
    step: int  # channel counts where latency drops are multiples of this
    step_source: str  # "measured" or why not ("CPU vector width: AVX-512 fp32")
    curves: dict[str, LatencyCurve]
    seconds: float = 0.0
    settings: dict[str, object] = field(default_factory=dict)
    # "int8" or "dynamic": every latency above is of the model as quantized for deployment, and
    # ``float_original_ms`` is the float original's, the reference a latency target is a ratio of.
    quantize: str = "none"
    float_original_ms: float | None = None

    @property
    def reference_ms(self) -> float:
        """The latency a target ratio is a ratio of: the float original's (the unpruned model the user has)."""
        return self.float_original_ms if self.float_original_ms is not None else self.baseline_ms

    def goal_ms(self, ratio: float) -> float:
        """Milliseconds to save so that the model runs at ``ratio`` times the reference; 0 when the
        baseline already does (quantization alone can meet a target)."""
        return max(0.0, self.baseline_ms - ratio * self.reference_ms)

    def predict_ratio(self, keeps: Mapping[str, int]) -> float:
        return self.predict(keeps) / self.reference_ms

    def saving(self, group: str, keep: int) -> float | None:
        """Milliseconds saved by pruning ``group`` alone to ``keep`` channels (None: not in the table)."""
        curve = self.curves.get(group)
        return None if curve is None else max(0.0, self.baseline_ms - curve.at(keep))

    def predict(self, keeps: Mapping[str, int]) -> float:
        """Latency of the model with each named group at its count (savings add up)."""
        return max(0.0, self.baseline_ms - sum(self.saving(group, keep) or 0.0 for group, keep in keeps.items()))

    def to_json(self) -> str:
        data = asdict(self)
        data["format"] = TABLE_FORMAT
        for curve in data["curves"].values():
            curve["probes"] = {str(k): v for k, v in curve["probes"].items()}
            curve["points"] = {str(k): v for k, v in curve["points"].items()}
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> LatencyTable:
        data = json.loads(text)
        if data.pop("format", None) != TABLE_FORMAT:
            raise ValueError(f"not an {TABLE_FORMAT} table")
        curves = {
            gid: LatencyCurve(
                group=c["group"],
                channels=c["channels"],
                counts=tuple(c["counts"]),
                ms=tuple(c["ms"]),
                measured=c["measured"],
                probes={int(k): v for k, v in c["probes"].items()},
                points={int(k): v for k, v in c["points"].items()},
            )
            for gid, c in data.pop("curves").items()
        }
        return cls(curves=curves, **data)


def monotone(counts: Sequence[int], ms: Sequence[float]) -> tuple[float, ...]:
    """Latencies that never grow as channels are removed and never exceed the whole group's (the
    largest count's): a running minimum from the most channels down. On the step grid fewer
    channels never add work, so a rise is timing noise, not signal."""
    order = sorted(range(len(counts)), key=lambda i: -counts[i])
    result = [0.0] * len(counts)
    running = float("inf")
    for i in order:
        running = min(running, float(ms[i]))
        result[i] = running
    return tuple(result)


def grid_counts(channels: int, step: int, fractions: Sequence[float], floor: int = 0) -> list[int]:
    """The counts a group is measured at: each fraction of the way from ``floor`` (the channels that
    cannot go: pinned) to ``channels``, rounded up to ``step``, below ``channels``, without
    duplicates (ascending). Below the floor a group cannot be cut, so a count there would time
    the floor again and be fitted as if it had removed more."""
    counts = set()
    for fraction in fractions:
        exact = int(round(floor + (channels - floor) * fraction))
        count = min(channels, max(step, -(-exact // step) * step))
        if count < channels:
            counts.add(count)
    return sorted(counts)


def staircase_step(probes: Sequence[tuple[int, float, Mapping[int, float]]], prior: int, noise_ms: float) -> int:
    """The step of the staircase: ``prior`` (the CPU's vector width) unless probes show finer stairs.

    Each probe is (count ``m``, latency at ``m``, {offset ``d``: latency at ``m - d``}), ``m`` a
    multiple of ``prior``. Blocked kernels pad ``m - d`` up to ``m`` (or drop the blocked kernel
    and run slower), so with stairs of width ``prior`` no ``m - d`` runs faster than ``m``. A finer
    step ``d`` is adopted only when every probe at an offset that is a multiple of ``d`` runs
    faster than ``m`` by more than the noise: a busy machine cannot talk us into a worse step."""
    offsets = sorted({d for _, _, off in probes for d in off if 0 < d < prior and prior % d == 0})
    for step in offsets:
        drops = [ms_m - off[d] for _, ms_m, off in probes for d in off if d % step == 0 and d < prior]
        if drops and all(drop > noise_ms for drop in drops):
            return step
    return prior


def probe_slowdowns(probes: Sequence[tuple[int, float, Mapping[int, float]]]) -> list[float]:
    """How much slower each off-step count ran than the multiple above it (ratios; >1: slower)."""
    return [off[d] / ms_m for _, ms_m, off in probes for d in off if ms_m > 0]
