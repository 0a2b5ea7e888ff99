"""Broker outages against a Redis of the test's own: a down or stalled Redis at submit answers 503 at
once and keeps nothing; jobs queued when a Redis dies all end once it returns (the reconciler)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from onnxprune.jobs.store import JobStore
from onnxprune.service.client import PruneClient
from tests.support.own_redis import OwnRedis
from tests.support.service_processes import wait_until

pytestmark = pytest.mark.service

FAST = {
    "ratio": 0.5,
    "benchmark": False,
    "round_to": 1,
}  # exact counts: the small test model is narrower than a vector block


@pytest.fixture
def own_redis(tmp_path):
    servers: list[OwnRedis] = []

    def start(persistent: bool) -> OwnRedis:
        server = OwnRedis(tmp_path / f"redis{len(servers)}", persistent=persistent).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    return {
        "ONNXPRUNE_REDIS_URL": redis_url,
        "ONNXPRUNE_REDIS_PREFIX": "onnxprune-outage:",
        "ONNXPRUNE_QUEUE": f"q-{uuid.uuid4().hex[:8]}",
        "ONNXPRUNE_DATA_DIR": str(tmp_path / "data"),
        "ONNXPRUNE_RECONCILE_INTERVAL_S": "0.5",
        "ONNXPRUNE_RECONCILE_GRACE_S": "2",
        "ONNXPRUNE_LEASE_TTL_S": "4",
        "ONNXPRUNE_VISIBILITY_TIMEOUT_S": "20",
        "ONNXPRUNE_TIME_LIMIT_S": "18",
        "ONNXPRUNE_SOFT_TIME_LIMIT_S": "16",
    }


def _store(env: dict[str, str]) -> JobStore:
    return JobStore(Path(env["ONNXPRUNE_DATA_DIR"]) / "jobs.sqlite3")


def _submit_during_outage(outage, own_redis, start_api, model_path, tmp_path):
    """A submit while Redis is down (killed) or stalled (SIGSTOP), with /healthz probed throughout.
    Gives the env, the POST's response and seconds, each probe's seconds, and /readyz after."""
    broker = own_redis(persistent=False)
    env = _env(tmp_path, broker.url)
    server = start_api(env)
    wait_until(lambda: httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200, 30, "readyz")
    broker.kill() if outage == "stopped" else broker.pause()

    answers: dict[str, object] = {}

    def submit() -> None:
        started = time.monotonic()
        with open(model_path, "rb") as model:
            answers["post"] = httpx.post(
                f"{server.url}/v1/jobs",
                files={"model": ("m.onnx", model)},
                data={"config": '{"benchmark": false}'},
                timeout=30,
            )
        answers["post_s"] = time.monotonic() - started

    posting = threading.Thread(target=submit)
    posting.start()
    health_s = []
    with httpx.Client(base_url=server.url, timeout=5) as probe:
        while posting.is_alive():  # the API keeps answering while the publish waits on the broker
            started = time.monotonic()
            assert probe.get("/healthz").status_code == 200
            health_s.append(time.monotonic() - started)
            time.sleep(0.05)
    posting.join()
    ready = httpx.get(f"{server.url}/readyz", timeout=10)
    return env, answers["post"], answers["post_s"], health_s, ready


@pytest.mark.parametrize("outage", ["stopped", "paused"])
def test_a_submit_while_redis_is_down_answers_503_and_keeps_nothing(outage, own_redis, start_api, model_path, tmp_path):
    env, response, _, _, ready = _submit_during_outage(outage, own_redis, start_api, model_path, tmp_path)

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "broker_unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert ready.status_code == 503 and "broker" in ready.json()["detail"]
    assert _store(env).counts() == {"queued": 0, "running": 0}
    assert _store(env).list("", limit=10, offset=0)[1] == 0
    assert list((Path(env["ONNXPRUNE_DATA_DIR"]) / "jobs").iterdir()) == []


@pytest.mark.timing
@pytest.mark.parametrize("outage", ["stopped", "paused"])
def test_a_submit_while_redis_is_down_answers_at_once(outage, own_redis, start_api, model_path, tmp_path):
    """Wall clock (pytest -m timing): the 503 comes within the 1 s publish timeout (plus slack), and
    /healthz answers within 1 s throughout."""
    _, response, post_s, health_s, _ = _submit_during_outage(outage, own_redis, start_api, model_path, tmp_path)
    assert response.status_code == 503
    assert post_s < 2.0
    assert max(health_s) < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [False, True], ids=["no-persistence", "aof-always"])
def test_jobs_queued_when_redis_is_killed_all_end_once_it_returns(
    persistent, own_redis, start_api, start_worker, model_path, tmp_path
):
    broker = own_redis(persistent=persistent)
    env = _env(tmp_path, broker.url)
    server = start_api(env)
    with PruneClient(server.url) as client:
        ids = [client.submit(model_path, {**FAST, "seed": i})["id"] for i in range(3)]  # no worker yet
    queue_key = f"{env['ONNXPRUNE_REDIS_PREFIX']}{env['ONNXPRUNE_QUEUE']}"
    assert broker.client().llen(queue_key) == 3

    broker.kill()
    wait_until(lambda: httpx.get(f"{server.url}/readyz", timeout=5).status_code == 503, 10, "readyz to see it")
    broker.start()  # same port, same folder: only what was persisted comes back
    queued = broker.client().llen(queue_key)
    if persistent:
        assert queued == 3
    else:  # nothing came back: whatever is queued already, the API's reconciler (every 0.5 s) sent again
        # (it counts a re-send just after sending it, hence a short wait)
        wait_until(lambda: sum(_store(env).get(i).resends for i in ids) >= queued, 5, "the queued to be re-sends")
    wait_until(lambda: httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200, 10, "readyz, no worker")
    start_worker(env)

    store = _store(env)
    wait_until(lambda: all(store.get(i).status.terminal for i in ids), 120, "every job to end")
    jobs = [store.get(i) for i in ids]
    assert [j.status.value for j in jobs] == ["succeeded"] * 3
    assert [j.attempts for j in jobs] == [1, 1, 1]  # re-sent, maybe twice, but run once
    if not persistent:
        assert all(j.resends >= 1 for j in jobs)  # the reconciler sent them again
