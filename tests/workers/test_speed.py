"""Speed in words with its noise band (workers.speed): interleaved pairs, medians, a bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.workers.speed import compare_timings, describe_ratio, noise_warning


@pytest.mark.parametrize(
    ("ratio", "words"),
    [
        (1 / 1.32, "1.32x faster"),
        (1.04, "4% slower"),
        (1.0, "no change"),
        (0.5, "2.00x faster"),
        (2.46, "146% slower"),
    ],
)
def test_ratios_read_as_faster_or_slower(ratio, words):
    assert describe_ratio(ratio) == words


def test_a_clear_speedup_has_a_tight_band_and_no_warning():
    rng = np.random.default_rng(0)
    before = 10.0 + rng.normal(0, 0.1, 40)
    after = 5.0 + rng.normal(0, 0.05, 40)
    change = compare_timings(before, after)
    assert change.ratio == pytest.approx(0.5, rel=0.02) and change.summary.endswith("x faster")
    assert change.low < change.ratio < change.high < 1.0
    assert not change.within_noise and noise_warning(change) is None


def test_noise_wider_than_the_effect_is_flagged():
    rng = np.random.default_rng(1)
    before = 10.0 * rng.lognormal(0, 0.3, 30)
    after = 9.9 * rng.lognormal(0, 0.3, 30)
    change = compare_timings(before, after)
    assert change.low < 1.0 < change.high and change.within_noise
    assert "within the timing noise" in noise_warning(change)


def test_shared_drift_cancels_in_pairs():
    """Both models slowed by the same neighbour in the same runs: the pairs keep the ratio at 0.8."""
    load = np.concatenate([np.ones(20), 3 * np.ones(20)])
    change = compare_timings(10.0 * load, 8.0 * load)
    assert change.ratio == pytest.approx(0.8) and change.summary == "1.25x faster"


def test_unpaired_series_are_refused():
    with pytest.raises(ValueError, match="interleaved"):
        compare_timings([1.0, 2.0], [1.0])


def test_a_ratio_too_noisy_to_act_on_falls_back_to_the_fastest_runs():
    from onnxprune.workers.speed import decisive_ratio

    quiet = compare_timings([10.0, 10.1, 9.9, 10.0] * 5, [5.0, 5.1, 4.9, 5.0] * 5)
    assert decisive_ratio(quiet) == quiet.ratio
    # a neighbour preempts most runs of both models, at random: medians say nothing
    rng = np.random.default_rng(3)
    before = 10.0 + rng.choice([0.0, 30.0], 20, p=[0.4, 0.6]) + rng.random(20)
    after = 6.0 + rng.choice([0.0, 30.0], 20, p=[0.4, 0.6]) + rng.random(20)
    busy = compare_timings(before, after)
    assert busy.min_ratio == pytest.approx(after.min() / before.min(), abs=1e-5)
    if busy.high - busy.low > 0.5 * busy.ratio:
        assert decisive_ratio(busy) == busy.min_ratio
    assert decisive_ratio(busy) < 0.7
