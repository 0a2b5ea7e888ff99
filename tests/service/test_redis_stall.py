"""A Redis that stalls (SIGSTOP, ~12 s) while a worker acks a job: the worker consumes again on its own.

Before the fix, 3 stalls in 4 wedged the worker: ``Couldn't ack ... TimeoutError``, then it never took
another job, while the heartbeat file stayed fresh and the reconciler skipped the jobs (their messages
were still in the broker). Now the worker's broker sockets time out and reconnect, its liveness says
whether it consumes, and the reconciler re-sends queued jobs that no worker has taken.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from onnxprune.jobs.store import JobStatus, JobStore
from onnxprune.service.client import PruneClient
from tests.support.own_redis import OwnRedis
from tests.support.service_processes import wait_until

pytestmark = [pytest.mark.service, pytest.mark.slow]

# Longer than what the fix relies on to notice a stall: the broker socket timeout (5 s) and the health-check
# interval (10 s, jobs/celery_app.py). (It was 20 s, 16 s more of the run over the two tests.)
STALL_S = 12
FAST = {"ratio": 0.5, "benchmark": False, "round_to": 1}


@pytest.fixture
def broker(tmp_path):
    server = OwnRedis(tmp_path / "redis", persistent=False).start()
    yield server
    server.stop()


def _env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    return {
        "ONNXPRUNE_REDIS_URL": redis_url,
        "ONNXPRUNE_REDIS_PREFIX": "onnxprune-stall:",
        "ONNXPRUNE_QUEUE": f"q-{uuid.uuid4().hex[:8]}",
        "ONNXPRUNE_DATA_DIR": str(tmp_path / "data"),
        "ONNXPRUNE_RETRY_DELAY_S": "0",
        "ONNXPRUNE_RECONCILE_INTERVAL_S": "1",
        "ONNXPRUNE_RECONCILE_GRACE_S": "2",
        "ONNXPRUNE_LEASE_TTL_S": "6",
        "ONNXPRUNE_VISIBILITY_TIMEOUT_S": "600",
        "ONNXPRUNE_TIME_LIMIT_S": "300",
        "ONNXPRUNE_SOFT_TIME_LIMIT_S": "290",
    }


def test_jobs_queued_across_a_redis_stall_complete_without_a_restart(
    broker, start_api, start_worker, slow_model_path, model_path, tmp_path
):
    """The stall starts while a job runs: it ends, and the worker acks it, against a stopped Redis."""
    env = _env(tmp_path, broker.url)
    server = start_api(env)
    worker = start_worker(env)
    store = JobStore(Path(env["ONNXPRUNE_DATA_DIR"]) / "jobs.sqlite3")
    with PruneClient(server.url) as client:
        # The first job runs for a few seconds (benchmark runs on a larger input); the others wait behind it.
        first = client.submit(slow_model_path, {"ratio": 0.5, "benchmark_runs": 40, "round_to": 1})["id"]
        queued = [client.submit(model_path, {**FAST, "seed": i})["id"] for i in range(3)]
    wait_until(lambda: store.get(first).status is JobStatus.running, 60, "the first job to start")
    broker.pause()
    try:
        wait_until(lambda: store.get(first).status.terminal, 120, "the first job to end during the stall")
        time.sleep(max(0.0, STALL_S - 5))
    finally:
        broker.resume()
    wait_until(lambda: all(store.get(i).status.terminal for i in queued), 90, "the queued jobs to end")
    assert [store.get(i).status.value for i in [first, *queued]] == ["succeeded"] * 4
    assert worker.process is not None and worker.process.poll() is None  # the same worker, never restarted


def test_jobs_submitted_after_a_stall_of_an_idle_worker_complete(broker, start_api, start_worker, model_path, tmp_path):
    """The stall starts while the worker waits for work; jobs submitted once Redis is back are taken."""
    env = _env(tmp_path, broker.url)
    server = start_api(env)
    worker = start_worker(env)
    store = JobStore(Path(env["ONNXPRUNE_DATA_DIR"]) / "jobs.sqlite3")
    broker.pause()
    try:
        time.sleep(STALL_S)
    finally:
        broker.resume()
    wait_until(lambda: httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200, 30, "readyz")
    with PruneClient(server.url) as client:
        ids = [client.submit(model_path, {**FAST, "seed": i})["id"] for i in range(3)]
    wait_until(lambda: all(store.get(i).status.terminal for i in ids), 90, "the jobs to end")
    assert [store.get(i).status.value for i in ids] == ["succeeded"] * 3
    assert worker.process is not None and worker.process.poll() is None
