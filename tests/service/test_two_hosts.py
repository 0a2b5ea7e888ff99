"""Many hosts: an API and two Celery workers, each process with a private data directory, sharing only
Redis, PostgreSQL and an S3 endpoint (moto's server), as separate machines would.

Roundtrip, ranged and byte-identical download, a worker killed with SIGKILL whose job another
worker finishes, and a cancel whose objects are removed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from onnxprune.jobs.job_store import JobRecord
from onnxprune.service.client import PruneClient
from tests.support.cluster_servers import S3_ENV, fresh_database, s3_server  # noqa: F401
from tests.support.service_oracle import assert_matches_masked_original
from tests.support.service_processes import wait_until

pytestmark = pytest.mark.service

FAST = {"ratio": 0.5, "benchmark": False, "round_to": 1}
SLOW = {"ratio": 0.5, "benchmark": True, "benchmark_runs": 150}


class Cluster:
    def __init__(self, env: dict[str, str], hosts: Path, bucket: str, endpoint: str) -> None:
        self.env, self.hosts, self.bucket, self.endpoint = env, hosts, bucket, endpoint

    def host_env(self, name: str) -> dict[str, str]:
        """The environment of one "host": the shared services, and a data directory of its own."""
        return {**self.env, "ONNXPRUNE_DATA_DIR": str(self.hosts / name)}

    def record(self, job_id: str) -> JobRecord:
        from onnxprune.jobs.pg_store import PostgresJobStore

        store = PostgresJobStore(self.env["ONNXPRUNE_DATABASE_URL"])
        try:
            found = store.get(job_id)
        finally:
            store.close()
        assert found is not None
        return found

    def s3(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=S3_ENV["AWS_DEFAULT_REGION"])

    def object_keys(self, job_id: str) -> list[str]:
        listing = self.s3().list_objects_v2(Bucket=self.bucket, Prefix=f"deploy/jobs/{job_id}/")
        return sorted(item["Key"].split(f"{job_id}/", 1)[1] for item in listing.get("Contents", []))


@pytest.fixture
def cluster(celery_env, s3_server, tmp_path, monkeypatch) -> Iterator[Cluster]:  # noqa: F811
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.create_bucket()
    with fresh_database() as database_url:
        env = {
            **celery_env,
            **S3_ENV,
            "ONNXPRUNE_DATABASE_URL": database_url,
            "ONNXPRUNE_ARTIFACTS_URL": f"s3://{bucket}/deploy",
            "ONNXPRUNE_S3_ENDPOINT_URL": s3_server.url,
        }
        env.pop("ONNXPRUNE_DATA_DIR")
        yield Cluster(env, tmp_path / "hosts", bucket, s3_server.url)


def _wait_running(client: PruneClient, job_id: str) -> dict:
    return wait_until(
        lambda: (j := client.get(job_id))["status"] == "running" and j["stage"] and j,
        60,
        f"job {job_id} to run",
        interval=0.05,
    )


def test_two_workers_on_their_own_disks_run_jobs_and_the_download_is_what_the_worker_wrote(
    cluster, start_api, start_worker, model_path, tmp_path
):
    api = start_api(cluster.host_env("api"))
    start_worker(cluster.host_env("worker0"))
    start_worker(cluster.host_env("worker1"))
    with PruneClient(api.url) as client:
        ids = [client.submit(model_path, FAST)["id"] for _ in range(4)]
        jobs = [client.wait(job_id, poll_s=0.1, timeout=180) for job_id in ids]
        pruned = client.download_model(ids[0], tmp_path / "pruned.onnx")
        plan = client.plan(ids[0])
        ranged = httpx.get(f"{api.url}/v1/jobs/{ids[0]}/model", headers={"Range": "bytes=10-109"})
        page = httpx.get(f"{api.url}/v1/jobs/{ids[0]}/report.html")  # the page the worker drew, read from S3

    assert [j["status"] for j in jobs] == ["succeeded"] * 4
    record = cluster.record(ids[0])
    assert record.result_key is not None and record.result_key.startswith("attempts/")
    written = cluster.s3().get_object(Bucket=cluster.bucket, Key=f"deploy/jobs/{ids[0]}/{record.result_key}/model.onnx")
    written_bytes = written["Body"].read()
    assert pruned.read_bytes() == written_bytes
    assert hashlib.sha256(written_bytes).hexdigest() == jobs[0]["output_sha256"] == record.output_sha256
    assert ranged.status_code == 206 and ranged.content == written_bytes[10:110]
    assert ranged.headers["Content-Range"] == f"bytes 10-109/{len(written_bytes)}"
    page_written = cluster.s3().get_object(
        Bucket=cluster.bucket, Key=f"deploy/jobs/{ids[0]}/{record.result_key}/report.html"
    )
    assert page.status_code == 200 and page.content == page_written["Body"].read()
    assert_matches_masked_original(model_path, pruned, plan)
    # Nothing of the jobs is on any host's disk: no database file, no job directory, no scratch left.
    for host in ("api", "worker0", "worker1"):
        left = sorted(
            str(p.relative_to(cluster.hosts / host)) for p in (cluster.hosts / host).rglob("*") if p.is_file()
        )
        assert not [p for p in left if "jobs" in p or p.endswith(".sqlite3") or p.endswith(".onnx")], (host, left)


def test_a_worker_killed_mid_job_is_redelivered_to_the_other_host(cluster, start_api, start_worker, slow_model_path):
    api = start_api(cluster.host_env("api"))
    workers = [start_worker(cluster.host_env(f"worker{i}")) for i in range(2)]
    with PruneClient(api.url) as client:
        job_id = client.submit(slow_model_path, SLOW)["id"]
        _wait_running(client, job_id)
        holder = cluster.record(job_id).lease_owner or ""
        victim = next(w for w in workers if w.process is not None and f":{w.process.pid}:" in holder)
        victim.kill()
        job = client.wait(job_id, poll_s=0.2, timeout=150)

    assert job["status"] == "succeeded" and job["attempts"] == 2
    record = cluster.record(job_id)
    assert record.lease_owner != holder
    # The dead attempt published nothing; the counted result is the survivor's.
    assert cluster.object_keys(job_id) == sorted(
        [
            "input.onnx",
            *(f"{record.result_key}/{name}" for name in ("model.onnx", "plan.json", "report.html", "report.json")),
        ]
    )


def test_cancelling_a_running_job_removes_its_objects(cluster, start_api, start_worker, slow_model_path, model_path):
    api = start_api(cluster.host_env("api"))
    start_worker(cluster.host_env("worker0"))
    with PruneClient(api.url) as client:
        job_id = client.submit(slow_model_path, SLOW)["id"]
        _wait_running(client, job_id)
        assert client.cancel(job_id)["status"] == "cancelled"
        wait_until(lambda: cluster.object_keys(job_id) == [], 20, "the cancelled job's objects to go")
        after = client.wait(client.submit(model_path, FAST)["id"], poll_s=0.1, timeout=120)
        final = client.get(job_id)
    assert after["status"] == "succeeded"
    assert final["status"] == "cancelled" and cluster.object_keys(job_id) == []


def test_uploads_answer_503_and_keep_nothing_while_the_object_store_is_down(cluster, start_api, model_path, tmp_path):
    env = {**cluster.host_env("api"), "ONNXPRUNE_S3_ENDPOINT_URL": "http://127.0.0.1:9"}  # nothing listens
    api = start_api(env)
    answer = httpx.post(
        f"{api.url}/v1/jobs", files={"model": ("m.onnx", model_path.read_bytes())}, data={"config": "{}"}, timeout=60
    )
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert answer.json()["error"]["code"] == "storage_unavailable"
    assert httpx.get(f"{api.url}/v1/queue").json()["queued"] == 0
    staged = cluster.hosts / "api" / "scratch" / "incoming"
    assert not staged.exists() or os.listdir(staged) == []


@pytest.mark.slow
def test_jobs_queued_when_the_broker_is_lost_all_end_once_it_returns(
    cluster, start_api, start_worker, model_path, tmp_path
):
    """Redis without persistence dies with jobs queued: the reconciler (reading PostgreSQL) re-sends
    them, and workers on other hosts run each once."""
    from tests.support.own_redis import OwnRedis

    broker = OwnRedis(tmp_path / "redis", persistent=False).start()
    try:
        env = {**cluster.env, "ONNXPRUNE_REDIS_URL": broker.url, "ONNXPRUNE_RECONCILE_INTERVAL_S": "0.5"}
        api = start_api({**env, "ONNXPRUNE_DATA_DIR": str(cluster.hosts / "api")})
        with PruneClient(api.url) as client:
            ids = [client.submit(model_path, {**FAST, "seed": i})["id"] for i in range(3)]  # no worker yet
        broker.kill()
        wait_until(lambda: httpx.get(f"{api.url}/readyz", timeout=5).status_code == 503, 10, "readyz to see it")
        broker.start()  # empty: the queued messages are gone
        for i in range(2):
            start_worker({**env, "ONNXPRUNE_DATA_DIR": str(cluster.hosts / f"worker{i}")})
        wait_until(lambda: all(cluster.record(i).status.terminal for i in ids), 150, "every job to end")
        jobs = [cluster.record(i) for i in ids]
    finally:
        broker.stop()
    assert [j.status.value for j in jobs] == ["succeeded"] * 3
    assert [j.attempts for j in jobs] == [1, 1, 1] and all(j.resends >= 1 for j in jobs)


def test_readyz_names_the_object_store_when_it_is_down_and_only_it(cluster, start_api):
    up = start_api(cluster.host_env("api"))
    assert httpx.get(f"{up.url}/readyz", timeout=10).json()["status"] == "ready"
    down = start_api({**cluster.host_env("api2"), "ONNXPRUNE_S3_ENDPOINT_URL": "http://127.0.0.1:9"})  # nothing listens
    answer = httpx.get(f"{down.url}/readyz", timeout=10)
    assert answer.status_code == 503
    detail = answer.json()["detail"]
    assert detail.startswith("artifact store: ") and "unreachable" in detail
    assert "job store" not in detail and "broker" not in detail  # PostgreSQL and Redis answered
