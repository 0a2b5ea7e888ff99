"""``onnxprune submit`` shows what ``prune`` shows: the summary table and the warnings of the job's
report, ``--json`` (the job's report itself), ``--report``, ``--report-html``, ``--plan-out`` and
``--plan-in`` (the plan is sent with the job and applied instead of scoring). Run as a user runs it:
the CLI as a process, against a real API server (embedded mode)."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from onnxprune.graphops.plan import PruningPlan
from onnxprune.service.client import PruneClient
from tests.support.cli import onnxprune as run_cli

pytestmark = pytest.mark.service

KEY = "submit-like-prune-client-key"  # without server tokens, a client key of one's own lists one's jobs


def onnxprune(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, module="onnxprune", env={"ONNXPRUNE_TOKEN": KEY})


def test_submit_json_prints_the_jobs_report(start_api, embedded_env, model_path, tmp_path):
    server = start_api(embedded_env)

    done = onnxprune(
        "submit", model_path, "--server", server.url, "--ratio", "0.5", "--round-to", "1", "--runs", "3", "-o",
        "out.onnx", "--json", cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    with PruneClient(server.url, token=KEY) as client:
        (job,) = client.list()["jobs"]
        assert json.loads(done.stdout) == client.report(job["id"])
    assert "wrote" not in done.stdout  # stdout is the report alone


def test_submit_shows_the_summary_and_warnings_and_writes_what_prune_writes(
    start_api, embedded_env, model_path, tmp_path
):
    server = start_api(embedded_env)

    # ratio 0.1 on groups of 8 and 16 channels, counts on a grid of 16: nothing can go (a warning says why)
    done = onnxprune(
        "submit", model_path, "--server", server.url, "--ratio", "0.1", "--round-to", "16", "--no-benchmark", "-o",
        "out.onnx", "--report", "r.json", "--report-html", "r.html", "--plan-out", "plan.json", cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert "prunable groups pruned" in done.stdout and "MACs" in done.stdout  # the summary table, as prune's
    assert report["warnings"] and all(f"warning: {w}" in " ".join(done.stderr.split()) for w in report["warnings"])
    assert any(w.startswith("nothing pruned: ") for w in report["warnings"])
    assert "<html" in (tmp_path / "r.html").read_text()
    assert PruningPlan.from_json((tmp_path / "plan.json").read_text()).groups == {}
    for name in ("out.onnx", "r.json", "r.html", "plan.json"):  # readable like the model (umask 022: 0644)
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == stat.S_IMODE((tmp_path / "out.onnx").stat().st_mode)


def test_submit_names_the_options_a_job_without_data_ignores_as_prune_does(
    start_api, embedded_env, model_path, tmp_path
):
    server = start_api(embedded_env)
    tuned = ["--lr", "0.01", "--image-channels", "bgr", "--no-benchmark", "--report", "r.json"]

    submitted = onnxprune("submit", model_path, "--server", server.url, "-o", "a.onnx", *tuned, cwd=tmp_path)
    pruned = onnxprune("prune", model_path, "-o", "b.onnx", *tuned[:-1], "p.json", cwd=tmp_path)
    refused = onnxprune(
        "submit", model_path, "--server", server.url, "-o", "c.onnx", "--recovery", "finetune", cwd=tmp_path
    )

    assert submitted.returncode == 0 and pruned.returncode == 0, submitted.stderr + pruned.stderr
    warnings = [
        [w for w in json.loads((tmp_path / name).read_text())["warnings"] if "without data" in w]
        for name in ("r.json", "p.json")
    ]
    assert warnings[0] == warnings[1] and warnings[0][0].startswith(
        "without data these options change nothing: --image-channels bgr, --lr 0.01 "
    )
    assert refused.returncode == 3 and "recovery 'finetune' needs data" in refused.stderr  # the server refused it (422)


def test_submit_plan_in_applies_the_plan_instead_of_scoring(start_api, embedded_env, model_path, tmp_path):
    server = start_api(embedded_env)
    first = onnxprune(
        "submit", model_path, "--server", server.url, "--ratio", "0.5", "--round-to", "1", "--no-benchmark", "-o",
        "a.onnx", "--plan-out", "plan.json", cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    saved = PruningPlan.from_json((tmp_path / "plan.json").read_text())
    assert saved.groups  # something was pruned

    # Another ratio, the plan wins: the same channels are kept.
    second = onnxprune(
        "submit", model_path, "--server", server.url, "--ratio", "0.25", "--no-benchmark", "-o", "b.onnx",
        "--plan-in", "plan.json", "--plan-out", "again.json", cwd=tmp_path,
    )  # fmt: skip

    assert second.returncode == 0, second.stderr
    assert PruningPlan.from_json((tmp_path / "again.json").read_text()).keep == saved.keep
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b'{"format": "something else"}'], ids=["bytes", "json"])
def test_a_bad_plan_in_is_the_users_input_before_any_upload(content, tmp_path, model_path):
    (tmp_path / "plan.json").write_bytes(content)

    for command in (["prune"], ["submit", "--server", "http://127.0.0.1:9"]):
        done = onnxprune(*command, model_path, "-o", "out.onnx", "--plan-in", "plan.json", cwd=tmp_path)

        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.startswith("error: ") and "plan" in done.stderr and "Traceback" not in done.stderr


# Refusals that depend on the model's groups come from its analysis, which folds constants (it evaluates
# parts of the user's graph) and so runs only in the job's sandbox, never at upload: the job fails as the
# user's (model_rejected, not retried) with prune's one line, and submit exits 3 as for a 422.
MODEL_DEPENDENT_CASES = [
    # (id, flags, the start of prune's and the job's message)
    ("a kind limit on a kind the model lacks", ["--max-head-ratio", "0.25"],
     "max_head_ratio: the model has no prunable attention heads"),
    ("a MACs target the limits put out of reach", ["--flops-target", "0.8", "--max-filter-ratio", "0.1"],
     "flops_target 0.8 cannot be met under"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "words"), [c[1:] for c in MODEL_DEPENDENT_CASES], ids=[c[0] for c in MODEL_DEPENDENT_CASES]
)
def test_a_model_dependent_refusal_is_the_users_error_in_submit_as_in_prune(
    start_api, embedded_env, model_path, tmp_path, flags, words
):
    server = start_api(embedded_env)

    submitted = onnxprune("submit", model_path, "--server", server.url, "-o", "a.onnx", *flags, cwd=tmp_path)
    pruned = onnxprune("prune", model_path, "-o", "b.onnx", *flags, cwd=tmp_path)

    assert pruned.returncode == 2 and submitted.returncode == 3, submitted.stderr
    line = pruned.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {words}")
    assert line.removeprefix("error: ") in " ".join(submitted.stderr.split())
    with PruneClient(server.url, token=KEY) as client:
        (job,) = client.list()["jobs"]
        job = client.get(job["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "model_rejected", job
    assert job["attempts"] == 1  # the user's error: not retried
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()
