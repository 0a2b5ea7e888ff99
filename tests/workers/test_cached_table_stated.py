"""A latency table cached on this machine by an earlier --latency-target run changes what a later
command does (round_to 'auto' takes its step, a MACs target compares cuts on it): the report and
the CLI summary say so, with the file, so two runs that print different lines are explained."""

from __future__ import annotations

import pytest

from onnxprune.service.cli import _print_summary
from onnxprune.workers.html_report import render_report_html
from tests.support.latency_tables import prune

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")


def test_a_run_that_used_a_cached_table_names_it(tmp_path, monkeypatch, capsys):
    _, _, report = prune(tmp_path, monkeypatch, round_to="auto", cached=True)

    (cached,) = (tmp_path / "cache" / "latency").iterdir()  # the file the helper wrote
    assert report.latency_table_cache == str(cached)
    _print_summary(report)
    printed = " ".join(capsys.readouterr().out.split())
    assert "used the latency table an earlier --latency-target run cached on this machine" in printed
    assert 'id="cached-table"' in render_report_html(report)


@pytest.mark.parametrize(("round_to", "cached"), [(1, True), ("auto", False)])
def test_a_run_that_used_none_says_nothing_of_it(tmp_path, monkeypatch, round_to, cached):
    _, _, report = prune(tmp_path, monkeypatch, round_to=round_to, cached=cached)

    assert report.latency_table_cache is None
