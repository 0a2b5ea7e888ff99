"""The service keeps its latency tables in a cache of its own (issue 33): under its data dir unless set,
handed to every job's sandbox, and swept with the other expired files."""

from __future__ import annotations

import os
import time

import pytest

import onnxprune.jobs.run as jobs
from onnxprune.jobs.settings import Settings
from onnxprune.jobs.store import JobRecord, JobStatus, JobStore
from onnxprune.service.retention import remove_expired
from onnxprune.service.runners import EmbeddedRunner
from onnxprune.workers.options import PruneOptions


def test_the_cache_is_under_the_data_dir_unless_set(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CACHE_DIR", str(tmp_path / "the user's cache"))  # the CLI's, not the service's
    assert Settings(data_dir=tmp_path).latency_cache().root == tmp_path / "latency-cache"
    cache = Settings(
        data_dir=tmp_path,
        latency_cache_dir=tmp_path / "elsewhere",
        latency_cache_max_age_days=2,
        latency_cache_max_mib=1,
    ).latency_cache()
    assert (cache.root, cache.max_age_s, cache.max_total_bytes) == (tmp_path / "elsewhere", 2 * 86400, 2**20)


def test_each_job_gets_the_deployment_s_cache(tmp_path):
    settings = Settings(redis_url=None, data_dir=tmp_path, max_retries=0)
    store = JobStore(settings.database_path)
    store.create(
        JobRecord(
            id="job1",
            owner="",
            fingerprint="f",
            status=JobStatus.queued,
            config=PruneOptions().model_dump_json(),
            created_at=time.time(),
        )
    )
    (settings.jobs_dir / "job1").mkdir(parents=True)
    (settings.jobs_dir / "job1" / "input.onnx").write_bytes(b"the pipeline is replaced in this test")
    given = []

    def run_job_process(*args, **kwargs):
        given.append(kwargs["latency_cache"])
        raise RuntimeError("stop here")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jobs, "run_job_process", run_job_process)
        EmbeddedRunner(settings, store)._run("job1")

    assert given == [settings.latency_cache()]
    assert given[0].root == tmp_path / "latency-cache"


def test_the_retention_sweep_removes_stale_tables(tmp_path):
    settings = Settings(redis_url=None, data_dir=tmp_path, latency_cache_max_age_days=1)
    tables = settings.latency_cache().tables
    tables.mkdir(parents=True)
    for name, days in (("stale.json", 2), ("fresh.json", 0)):
        (tables / name).write_text("{}")
        then = time.time() - days * 86400
        os.utime(tables / name, (then, then))

    remove_expired(settings, JobStore(settings.database_path))

    assert [p.name for p in tables.iterdir()] == ["fresh.json"]
