"""The Celery mode against a real Redis and real worker processes: results, crashes, cancellation."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis

from onnxprune.jobs.celery_app import TASK_NAME, make_celery
from onnxprune.jobs.settings import Settings
from onnxprune.jobs.store import JobStore
from onnxprune.service.client import PruneClient
from onnxprune.workers.fileio import file_sha256
from tests.support.service_oracle import assert_matches_masked_original
from tests.support.service_processes import wait_until

pytestmark = pytest.mark.service

FAST = {
    "ratio": 0.5,
    "benchmark": False,
    "round_to": 1,
}  # exact counts: the small test model is narrower than a vector block
# A job that stays running for several seconds on the slow model: many benchmark runs.
SLOW = {"ratio": 0.5, "benchmark": True, "benchmark_runs": 150}


def _job_dir(env: dict[str, str], job_id: str) -> Path:
    return Path(env["ONNXPRUNE_DATA_DIR"]) / "jobs" / job_id


def _wait_running(client: PruneClient, job_id: str) -> dict:
    return wait_until(
        lambda: (j := client.get(job_id))["status"] == "running" and j["stage"] and j,
        60,
        f"job {job_id} to run",
        interval=0.05,
    )


def test_a_worker_runs_the_job_and_the_result_matches_the_masked_original(
    start_api, start_worker, celery_env, model_path, tmp_path
):
    server = start_api(celery_env)
    # Ready means the broker and the store answer; no worker (or only busy ones) is not a reason
    # to take the API out of a load balancer. The queue depth says how far behind the workers are.
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    start_worker(celery_env)

    with PruneClient(server.url) as client:
        job = client.wait(client.submit(model_path, FAST)["id"], poll_s=0.1, timeout=120)
        pruned = client.download_model(job["id"], tmp_path / "pruned.onnx")
        plan = client.plan(job["id"])

    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert httpx.get(f"{server.url}/v1/queue").json() == {"queued": 0, "running": 0, "limit": 200}
    assert_matches_masked_original(model_path, pruned, plan)


def test_a_worker_killed_mid_job_is_redelivered_and_the_job_succeeds_once(
    start_api, start_worker, celery_env, slow_model_path
):
    server = start_api(celery_env)
    worker = start_worker(celery_env)
    with PruneClient(server.url) as client:
        job_id = client.submit(slow_model_path, SLOW)["id"]
        _wait_running(client, job_id)
        worker.kill()
        assert client.get(job_id)["status"] == "running"  # nobody finished it

        start_worker(celery_env)
        job = client.wait(job_id, poll_s=0.2, timeout=90)
        # Same inputs, fresh job: the rerun is deterministic, so it wrote the same bytes.
        twin = client.wait(client.submit(slow_model_path, SLOW)["id"], poll_s=0.2, timeout=90)

    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert sorted(p.name for p in _job_dir(celery_env, job_id).iterdir()) == ["input.onnx", "result"]
    assert sorted(p.name for p in (_job_dir(celery_env, job_id) / "result").iterdir()) == [
        "model.onnx",
        "plan.json",
        "report.html",  # the page, drawn in the job's sandbox
        "report.json",
    ]
    assert twin["output_sha256"] == job["output_sha256"]


def test_cancelling_a_running_job_stops_it_and_removes_its_files(
    start_api, start_worker, celery_env, slow_model_path, model_path
):
    server = start_api(celery_env)
    start_worker(celery_env)
    with PruneClient(server.url) as client:
        job_id = client.submit(slow_model_path, SLOW)["id"]
        _wait_running(client, job_id)
        cancelled = client.cancel(job_id)
        assert cancelled["status"] == "cancelled"
        # The sandbox is killed within a second or so, and whatever it was still writing removed.
        wait_until(lambda: not _job_dir(celery_env, job_id).exists(), 10, "the cancelled job's files to go")
        # The worker notices at its next stage and moves on to the next job.
        after = client.wait(client.submit(model_path, FAST)["id"], poll_s=0.1, timeout=90)
        final = client.get(job_id)

    assert after["status"] == "succeeded"
    assert final["status"] == "cancelled" and final["error"]["code"] == "cancelled"
    assert not _job_dir(celery_env, job_id).exists()
    assert JobStore(Path(celery_env["ONNXPRUNE_DATA_DIR"]) / "jobs.sqlite3").get(job_id).output_sha256 is None


def test_an_api_restart_keeps_records_while_workers_keep_working(start_api, start_worker, celery_env, model_path):
    server = start_api(celery_env)
    start_worker(celery_env)
    key = "restart-test-client-key"  # without server tokens, a client key scopes the job list
    with PruneClient(server.url, token=key) as client:
        job_id = client.submit(model_path, FAST)["id"]
    server.stop()  # the job finishes without any API
    wait_until(
        lambda: JobStore(Path(celery_env["ONNXPRUNE_DATA_DIR"]) / "jobs.sqlite3").get(job_id).status == "succeeded",
        90,
        "the job to finish while the API is down",
    )

    restarted = start_api(celery_env)
    with PruneClient(restarted.url, token=key) as client:
        assert client.get(job_id)["status"] == "succeeded"
        assert client.list()["total"] == 1


@pytest.mark.slow
def test_duplicate_deliveries_to_two_workers_give_one_result_with_the_reported_sha256(
    start_api, start_worker, celery_env, slow_model_path, tmp_path
):
    server = start_api(celery_env)
    start_worker(celery_env)
    start_worker(celery_env)
    broker = make_celery(
        Settings(
            redis_url=celery_env["ONNXPRUNE_REDIS_URL"],
            redis_prefix=celery_env["ONNXPRUNE_REDIS_PREFIX"],
            queue=celery_env["ONNXPRUNE_QUEUE"],
        )
    )
    with PruneClient(server.url) as client:
        job_id = client.submit(slow_model_path, SLOW)["id"]
        _wait_running(client, job_id)
        for _ in range(2):  # while it runs: the idle worker takes these and must do nothing
            broker.send_task(TASK_NAME, args=[job_id])
        job = client.wait(job_id, poll_s=0.2, timeout=120)
        broker.send_task(TASK_NAME, args=[job_id])  # after it finished
        downloaded = client.download_model(job_id, tmp_path / "pruned.onnx")
        queue = f"{celery_env['ONNXPRUNE_REDIS_PREFIX']}{celery_env['ONNXPRUNE_QUEUE']}"
        with redis.Redis.from_url(celery_env["ONNXPRUNE_REDIS_URL"]) as connection:
            wait_until(
                lambda: (
                    connection.llen(queue) == 0
                    and connection.hlen(f"{celery_env['ONNXPRUNE_REDIS_PREFIX']}unacked") == 0
                ),
                75,  # a message a busy worker had reserved comes back after the 60 s visibility timeout
                "the duplicates consumed",
            )
        again = client.get(job_id)
    broker.close()

    job_dir = _job_dir(celery_env, job_id)
    assert job["status"] == again["status"] == "succeeded"
    assert job["attempts"] == again["attempts"] == 1
    assert again["output_sha256"] == job["output_sha256"] == file_sha256(job_dir / "result" / "model.onnx")
    assert file_sha256(downloaded) == job["output_sha256"]
    assert sorted(p.name for p in job_dir.iterdir()) == ["input.onnx", "result"]
