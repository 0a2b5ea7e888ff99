"""Fixtures of the service tests: a data dir per test, a private Redis namespace, real processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from onnxprune.jobs.settings import Settings
from onnxprune.service.api import create_app
from tests.support.needs import unavailable
from tests.support.service_models import convnet, save
from tests.support.service_processes import REDIS_URL, ApiServer, Worker


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return save(convnet(), tmp_path / "convnet.onnx")


@pytest.fixture
def slow_model_path(tmp_path: Path) -> Path:
    """Big enough input that a job with many benchmark runs stays running for seconds."""
    return save(convnet(c1=32, c2=64, size=160), tmp_path / "slow.onnx")


@pytest.fixture
def embedded_settings(tmp_path: Path) -> Settings:
    return Settings(redis_url=None, data_dir=tmp_path / "data", max_upload_mb=1, retry_delay_s=0)


@pytest.fixture
def client(embedded_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(embedded_settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def redis_namespace() -> Iterator[str]:
    """A key prefix of our own in a test DB; without Redis the tests skip locally and fail in CI."""
    connection = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        connection.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis not reachable at {REDIS_URL} ({exc}); start redis-server to run service tests")
    prefix = f"onnxprune-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    for key in connection.scan_iter(match=f"{prefix}*", count=500):
        connection.delete(key)
    connection.close()


@pytest.fixture
def celery_env(tmp_path: Path, redis_namespace: str) -> dict[str, str]:
    """Env of API and worker processes in Celery mode; each test gets its own queue and data dir.

    A short lease and a quick reconciler let a killed worker's job come back in seconds (the
    visibility timeout, and the time limits below it, leave room for slow runs on a loaded machine).
    """
    return {
        "ONNXPRUNE_REDIS_URL": REDIS_URL,
        "ONNXPRUNE_REDIS_PREFIX": redis_namespace,
        "ONNXPRUNE_QUEUE": f"q-{uuid.uuid4().hex[:8]}",
        "ONNXPRUNE_DATA_DIR": str(tmp_path / "data"),
        "ONNXPRUNE_VISIBILITY_TIMEOUT_S": "60",
        "ONNXPRUNE_TIME_LIMIT_S": "55",
        "ONNXPRUNE_SOFT_TIME_LIMIT_S": "50",
        "ONNXPRUNE_RETRY_DELAY_S": "0",
        "ONNXPRUNE_LEASE_TTL_S": "4",
        "ONNXPRUNE_RECONCILE_INTERVAL_S": "1",
        "ONNXPRUNE_RECONCILE_GRACE_S": "2",
    }


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    return {"ONNXPRUNE_DATA_DIR": str(tmp_path / "data"), "ONNXPRUNE_REDIS_URL": "", "ONNXPRUNE_EMBEDDED_WORKERS": "2"}


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator:
    servers: list[ApiServer] = []

    def start(env: dict[str, str]) -> ApiServer:
        server = ApiServer(env, tmp_path / f"api{len(servers)}.log").start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator:
    workers: list[Worker] = []

    def start(env: dict[str, str]) -> Worker:
        worker = Worker(env, tmp_path / f"worker{len(workers)}.log").start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
