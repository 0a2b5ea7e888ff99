"""The embedded mode (no Redis): a real uvicorn process runs jobs in-process, same API, same runner."""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from onnxprune.service.cli_service import register
from onnxprune.service.client import PruneClient, ServiceError
from tests.support.service_models import convnet, no_conv_model, save
from tests.support.service_oracle import assert_matches_masked_original
from tests.support.service_processes import wait_until

FAST = {
    "ratio": 0.5,
    "benchmark": False,
    "round_to": 1,
}  # exact counts: the small test model is narrower than a vector block


def test_upload_poll_download_gives_a_model_that_matches_the_masked_original(
    start_api, embedded_env, model_path, tmp_path
):
    server = start_api(embedded_env)
    seen: list[tuple[str, float]] = []

    with PruneClient(server.url) as client:
        job = client.submit(model_path, FAST)
        job = client.wait(
            job["id"], on_progress=lambda j: seen.append((j["status"], j["progress"])), poll_s=0.05, timeout=120
        )
        pruned = client.download_model(job["id"], tmp_path / "pruned.onnx")
        plan = client.plan(job["id"])
        report = client.report(job["id"])

    assert job["status"] == "succeeded" and job["progress"] == 1.0
    assert [p for _, p in seen] == sorted(p for _, p in seen), "progress never goes back"
    assert job["report"] == report
    assert report["macs"]["after"] < report["macs"]["before"]
    assert_matches_masked_original(model_path, pruned, plan)
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready", "mode": "embedded", "detail": None}


def test_cli_submit_writes_the_model_and_report_and_fails_with_the_server_message(
    start_api, embedded_env, model_path, tmp_path
):
    server = start_api(embedded_env)
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # typer runs a lone command without its name; keep names explicit
    runner = CliRunner()

    ok = runner.invoke(
        app,
        [
            "submit",
            str(model_path),
            "--server",
            server.url,
            "--ratio",
            "0.25",
            "--no-benchmark",
            "-o",
            str(tmp_path / "out.onnx"),
            "--report",
            str(tmp_path / "r.json"),
        ],
    )
    bad_model = save(no_conv_model(), tmp_path / "noconv.onnx")
    refused = runner.invoke(app, ["submit", str(bad_model), "--server", server.url, "-o", str(tmp_path / "x.onnx")])

    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "out.onnx").stat().st_size > 0
    assert json.loads((tmp_path / "r.json").read_text())["options"]["strategies"]["selector"]["ratio"]["ratio"] == 0.25
    assert refused.exit_code == 3  # the server refused the input (README: exit codes)
    assert "model has no Conv, ConvTranspose, Gemm or MatMul to prune" in refused.output
    assert not (tmp_path / "x.onnx").exists()


def test_concurrent_uploads_beyond_the_workers_all_succeed(start_api, embedded_env, tmp_path):
    """Six uploads at once, three per embedded worker: every one is queued, runs once and is listed, in pages."""
    server = start_api(embedded_env)
    count = 3 * int(embedded_env["ONNXPRUNE_EMBEDDED_WORKERS"])
    models = [save(convnet(seed=i), tmp_path / f"m{i}.onnx") for i in range(count)]

    key = "concurrent-uploads-client-key"  # without server tokens, a client key scopes the job list

    def submit_and_wait(path: Path) -> dict:
        with PruneClient(server.url, token=key) as client:
            job = client.submit(path, FAST)
            return client.wait(job["id"], poll_s=0.25, timeout=180)

    with ThreadPoolExecutor(count) as pool:
        jobs = list(pool.map(submit_and_wait, models))

    assert [j["status"] for j in jobs] == ["succeeded"] * count
    assert len({j["id"] for j in jobs}) == count
    with PruneClient(server.url, token=key) as client:
        first_page = client.list(limit=4)
        second_page = client.list(limit=4, offset=first_page["next_offset"])
    assert first_page["total"] == count and len(first_page["jobs"]) == 4 and first_page["next_offset"] == 4
    assert len(second_page["jobs"]) == count - 4 and second_page["next_offset"] is None
    assert {j["id"] for j in first_page["jobs"] + second_page["jobs"]} == {j["id"] for j in jobs}


def test_an_api_restart_keeps_job_records_and_results(start_api, embedded_env, model_path):
    server = start_api(embedded_env)
    with PruneClient(server.url) as client:
        job = client.wait(client.submit(model_path, FAST)["id"], timeout=120)
    server.stop()

    restarted = start_api(embedded_env)
    with PruneClient(restarted.url) as client:
        again = client.get(job["id"])
        model = httpx.get(f"{restarted.url}/v1/jobs/{job['id']}/model")

    assert again["status"] == "succeeded" and again["report"] == job["report"]
    assert model.headers["X-Content-SHA256"] == job["output_sha256"]


def test_client_raises_the_server_message_for_a_refused_upload(start_api, embedded_env, model_path):
    server = start_api(embedded_env)

    with PruneClient(server.url) as client, pytest.raises(ServiceError) as refused:
        client.submit(model_path, {"ratio": 1.5})

    assert refused.value.status == 422
    assert str(refused.value).startswith("config.ratio: ratio must be in [0, 1)")


def test_client_sends_options_nested_by_strategy_and_the_job_echoes_them_nested(start_api, embedded_env, model_path):
    server = start_api(embedded_env)
    nested = {"strategies": {"selector": {"ratio": {"ratio": 0.25, "criterion": "l2"}}}, "benchmark": False}

    with PruneClient(server.url) as client:
        job = client.wait(client.submit(model_path, nested)["id"], poll_s=0.1, timeout=120)
        with pytest.raises(ServiceError) as refused:
            client.submit(model_path, nested | {"ratio": 0.5})

    assert job["status"] == "succeeded"
    assert job["options"]["strategies"]["selector"] == nested["strategies"]["selector"]
    assert job["report"]["options"] == job["options"]
    assert refused.value.status == 422
    assert str(refused.value).startswith("config: ratio is given twice with different values: 0.5 at ratio and 0.25")


@pytest.mark.slow
def test_a_job_running_when_the_api_is_killed_is_taken_up_again_after_a_restart(
    start_api, embedded_env, slow_model_path
):
    env = {
        **embedded_env,
        "ONNXPRUNE_LEASE_TTL_S": "3",
        "ONNXPRUNE_RECONCILE_INTERVAL_S": "0.5",
        "ONNXPRUNE_RECONCILE_GRACE_S": "1",
    }
    server = start_api(env)
    with PruneClient(server.url) as client:
        job_id = client.submit(slow_model_path, {"ratio": 0.5, "benchmark": True, "benchmark_runs": 150})["id"]
        wait_until(lambda: client.get(job_id)["status"] == "running", 60, "the job to run", interval=0.05)
    os.killpg(server.process.pid, signal.SIGKILL)  # the API and its job threads die at once
    server.process.wait(10)
    server.process = None

    restarted = start_api(env)
    with PruneClient(restarted.url) as client:
        job = client.wait(job_id, poll_s=0.2, timeout=120)

    assert job["status"] == "succeeded" and job["attempts"] == 2
