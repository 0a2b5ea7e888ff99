"""How much faster (or slower) one model runs than another, with the timing noise around it.

Timings come in interleaved pairs (A, B, A, B, ...), so run ``i`` of both models saw the same
machine load. The ratio is ``median(B) / median(A)`` (p50, and p90 alike); its confidence interval
is a percentile bootstrap over the *pairs* (resampling whole pairs keeps the shared drift), so
a busy neighbour widens the band instead of faking a speed-up. Pure numpy, no onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxprune.workers.report import Latency, SpeedChange

CONFIDENCE = 0.95
RESAMPLES = 2000


def describe_ratio(ratio: float) -> str:
    """``after / before`` latency in words: "1.32x faster", "4% slower", "no change"."""
    if not np.isfinite(ratio) or ratio <= 0.0:
        return "not measured"
    if abs(ratio - 1.0) < 0.005:
        return "no change"
    if ratio < 1.0:
        return f"{1.0 / ratio:.2f}x faster"
    return f"{100.0 * (ratio - 1.0):.0f}% slower"


def compare_timings(
    before_ms: Sequence[float],
    after_ms: Sequence[float],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> SpeedChange:
    """The p50 and p90 latency ratios of interleaved runs, the p50 ratio's bootstrap interval,
    and whether that interval is wider than the effect (then the change is within noise)."""
    before, after = np.asarray(before_ms, np.float64), np.asarray(after_ms, np.float64)
    if before.shape != after.shape or before.ndim != 1 or before.size == 0:
        raise ValueError(
            f"need two equal, non-empty series of interleaved timings, got {before.shape} and {after.shape}"
        )
    ratio, low, high = ratio_interval(before, after, confidence=confidence, resamples=resamples, seed=seed)
    before, after = np.asarray(before_ms, np.float64), np.asarray(after_ms, np.float64)
    p90_ratio = float(np.percentile(after, 90) / np.percentile(before, 90))
    within_noise = bool(low <= 1.0 <= high)
    return SpeedChange(
        ratio=round(ratio, 5),
        p90_ratio=round(p90_ratio, 5),
        low=round(low, 5),
        high=round(high, 5),
        confidence=confidence,
        runs=int(before.size),
        summary=describe_ratio(ratio),
        band=_describe_band(low, high, confidence),
        within_noise=within_noise,
        min_ratio=round(float(after.min() / before.min()), 5),
    )


def decisive_ratio(change: SpeedChange) -> float:
    """The ratio to act on: the p50 ratio, unless its interval is wider than half of it (a machine so
    busy that medians are mostly preemption), then the ratio of the fastest runs."""
    if change.min_ratio is not None and change.high - change.low > 0.5 * change.ratio:
        return change.min_ratio
    return change.ratio


def ratio_interval(
    before_ms: Sequence[float] | np.ndarray,
    after_ms: Sequence[float] | np.ndarray,
    *,
    quantile: float = 50.0,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``quantile(after) / quantile(before)`` of interleaved pairs and its percentile-bootstrap interval
    (pairs resampled whole). A low quantile (20) estimates undisturbed run time on a busy machine,
    where a neighbour's preemption turns some runs of a 1 ms model into 10 ms ones."""
    before, after = np.asarray(before_ms, np.float64), np.asarray(after_ms, np.float64)
    if before.shape != after.shape or before.ndim != 1 or before.size == 0:
        raise ValueError(
            f"need two equal, non-empty series of interleaved timings, got {before.shape} and {after.shape}"
        )
    ratio = float(np.percentile(after, quantile) / np.percentile(before, quantile))
    index = np.random.default_rng(seed).integers(0, before.size, size=(resamples, before.size))
    boot = np.percentile(after[index], quantile, axis=1) / np.percentile(before[index], quantile, axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = (float(v) for v in np.percentile(boot, [tail, 100.0 - tail]))
    return ratio, low, high


def noise_warning(change: SpeedChange) -> str | None:
    """One sentence for the report and the CLI when the noise band is wider than the effect."""
    if not change.within_noise:
        return None
    return (
        f"latency: {change.summary} is within the timing noise ({change.band}, {change.runs} interleaved runs); "
        "time more runs (--runs) on a quieter machine before trusting it"
    )


def _describe_band(low: float, high: float, confidence: float) -> str:
    return f"{confidence:.0%} interval: between {describe_ratio(high)} and {describe_ratio(low)}"


def speed_notes(latency: Latency | None) -> list[str]:
    """Report warnings: the pruned model runs slower beyond the noise, or the noise hides the change."""
    if latency is None or latency.change is None:
        return []
    change = latency.change
    if change.low > 1.0:  # slower beyond the noise: say so plainly
        return [
            f"the pruned model is slower than the original: {change.summary} ({change.band}); channel counts off "
            "the kernels' step can cost more than the MACs saved (try --round-to auto or a multiple of 8)"
        ]
    warning = noise_warning(change)
    if warning is not None:  # the whole change is noise already: one line says so
        return [warning]
    return _pruning_alone_notes(latency.pruning_change)


def _pruning_alone_notes(change: SpeedChange | None) -> list[str]:
    """The gain of pruning alone (against the original after the same graph cleanup, ``workers.cleanup``),
    when it is slower or lost in the noise while the whole change may look like a speed-up."""
    if change is None:
        return []
    if change.low > 1.0:
        return [
            f"pruning alone made the model slower: {change.summary} against the original after the same graph "
            f"cleanup ({change.band}); the speed-up comes from the cleanup"
        ]
    if change.within_noise:
        return [
            f"latency: pruning alone gives {change.summary}, within the timing noise ({change.band}, "
            f"{change.runs} interleaved runs) against the original after the same graph cleanup"
        ]
    return []
