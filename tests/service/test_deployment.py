"""The compose file and the container healthchecks: private by default, and steady under load."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from onnxprune.workers.heartbeat import is_alive, main, start_heartbeat

ROOT = Path(__file__).resolve().parents[2]


def test_compose_publishes_the_api_on_127_0_0_1_unless_told_otherwise():
    compose = (ROOT / "docker-compose.yml").read_text()

    ports = re.findall(r'^\s*-\s*"([^"]*:8000)"\s*$', compose, re.M)
    assert ports == ["${ONNXPRUNE_BIND:-127.0.0.1}:8000:8000"]
    assert "ONNXPRUNE_API_TOKENS" in compose.split("ports:")[0].rsplit("api:", 1)[1], "the comment says why"


def test_no_healthcheck_depends_on_a_busy_worker_answering():
    """/readyz and `celery inspect ping` need an idle worker: under load they failed and containers flapped."""
    for path in ("docker-compose.yml", "docker/Dockerfile.api", "docker/Dockerfile.worker"):
        text = (ROOT / path).read_text()
        checks = [line for line in text.splitlines() if "test:" in line or line.strip().startswith("CMD python")]
        assert checks, path
        assert not any("readyz" in line or "inspect ping" in line for line in checks), path


def test_the_heartbeat_is_fresh_while_the_worker_lives_and_stale_after(tmp_path):
    beat = tmp_path / "heartbeat"

    start_heartbeat(beat, interval_s=0.05)
    time.sleep(0.2)

    assert is_alive(beat, max_age_s=1) and main(["--file", str(beat), "--max-age", "1"]) == 0
    dead = tmp_path / "dead"
    dead.touch()
    os.utime(dead, (time.time() - 120, time.time() - 120))  # a worker that stopped two minutes ago
    assert main(["--file", str(dead), "--max-age", "60"]) == 1
    assert main(["--file", str(tmp_path / "never-started")]) == 1


def test_celery_workers_publish_what_they_can_run_and_the_api_reads_it(redis_namespace, monkeypatch):
    """In Celery mode the API refuses at upload what no worker can run: it reads what workers published."""
    from onnxprune.jobs.capabilities import publish_capabilities
    from onnxprune.jobs.settings import Settings
    from onnxprune.service.runners import CeleryRunner
    from tests.support.service_processes import REDIS_URL

    settings = Settings(
        redis_url=REDIS_URL, redis_prefix=redis_namespace, queue="q-capabilities", data_dir=Path("unused")
    )
    runner = CeleryRunner(settings)
    try:
        assert runner.capabilities() is None  # no worker has started: accept, the job says why if it fails
        monkeypatch.setattr("onnxprune.workers.capabilities.torch_installed", lambda: False)
        publish_capabilities(settings)
        assert runner.capabilities() == frozenset()
        monkeypatch.setattr("onnxprune.workers.capabilities.torch_installed", lambda: True)
        publish_capabilities(settings)
        assert runner.capabilities() == frozenset({"torch"})
    finally:
        runner.close()
