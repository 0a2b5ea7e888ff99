"""One verdict on timing noise everywhere: the HTML page judges by the same bootstrap interval of the
paired ratio as the CLI and the JSON report (``workers.speed``), never by overlapping p10-p90 bands."""

from __future__ import annotations

import re

from onnxprune.workers.html_report import render_report_html
from onnxprune.workers.report import BeforeAfter, Latency, LatencyStats, PruneReport
from onnxprune.workers.speed import compare_timings, noise_warning


def report_with_timings(before_ms: list[float], after_ms: list[float]) -> PruneReport:
    def stats(ms: list[float]) -> LatencyStats:
        ordered = sorted(ms)
        return LatencyStats(
            p50=ordered[len(ms) // 2], p90=ordered[-2], p10=ordered[1], mean=sum(ms) / len(ms), runs=len(ms)
        )

    latency = Latency(
        before=stats(before_ms), after=stats(after_ms), threads=1, warmup=1, change=compare_timings(before_ms, after_ms)
    )
    return PruneReport(
        onnxprune_version="test",
        model_sha256="0" * 64,
        options={"ratio": 0.3, "criterion": "l1"},
        input_shapes={"input": [1, 3, 8, 8]},
        macs=BeforeAfter(before=100, after=70),
        params=BeforeAfter(before=10, after=7),
        latency_ms=latency,
        groups=[],
        frozen=[],
    )


# Interleaved pairs whose after/before ratio is steadily 0.77 while the machine's load swings each
# run's time over a wide range: the p10-p90 bands overlap, the paired interval stays far from 1.
LOAD = [1.0, 1.6, 1.1, 1.9, 1.2, 1.4, 1.0, 1.7, 1.3, 1.5, 1.1, 1.8, 1.2, 1.6, 1.0, 1.9, 1.4, 1.3, 1.1, 1.5]
STEADY = ([10.0 * x for x in LOAD], [7.7 * x for x in LOAD])
# The same pairs with no effect: the interval holds 1.
NO_EFFECT = ([10.0 * x for x in LOAD], [10.0 * x * (1.02 if i % 2 else 0.98) for i, x in enumerate(LOAD)])


def speed_span(page: str) -> str:
    return re.search(r'<span id="speed"[^>]*>(.*?)</span>', page, re.S).group(1)


def test_overlapping_bands_with_an_interval_clear_of_one_are_not_called_noise():
    report = report_with_timings(*STEADY)
    latency = report.latency_ms
    assert latency.after.p90 >= latency.before.p10  # the bands do overlap
    assert not latency.change.within_noise and noise_warning(latency.change) is None  # the CLI's verdict

    page = render_report_html(report)

    assert latency.change.summary in speed_span(page)
    assert "noise" not in page.lower().replace("noise band", "")


def test_an_interval_that_holds_one_is_called_noise_on_the_page_as_in_the_cli():
    report = report_with_timings(*NO_EFFECT)
    assert report.latency_ms.change.within_noise

    assert "within timing noise" in speed_span(render_report_html(report))
