"""onnxprune.jobs.logs.RateLimit: a flood of one message becomes a few lines and a count."""

from __future__ import annotations

import logging

from onnxprune.jobs.logs import RateLimit


def test_a_flood_of_one_warning_is_cut_to_a_burst_and_the_next_window_counts_the_rest():
    now = [0.0]
    limit = RateLimit(burst=3, window_s=60, clock=lambda: now[0])
    records = [logging.LogRecord("onnx", logging.WARNING, __file__, 1, "odd node %s", (i,), None) for i in range(4900)]

    passed = [r for r in records if limit.filter(r)]
    other = logging.LogRecord("onnx", logging.WARNING, __file__, 1, "another message", (), None)
    now[0] = 61.0
    later = logging.LogRecord("onnx", logging.WARNING, __file__, 1, "odd node %s", (5000,), None)

    assert len(passed) == 3
    assert limit.filter(other)
    assert limit.filter(later)
    assert later.getMessage() == "odd node 5000 (4897 similar messages suppressed)"
