"""The orphan sweep of the S3 artifact store lists a bounded number of objects per call and goes on from
there the next time, so a bucket of many jobs is never listed whole by one sweep; every orphan is
still found within a round of sweeps, and a job cut by the bound is judged whole, next time."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

import onnxprune.jobs.s3_artifacts as s3_artifacts
from onnxprune.jobs.s3_artifacts import S3Artifacts
from tests.support.cluster_servers import S3Server

pytestmark = pytest.mark.integration


class CountingClient:
    """boto3's client, with its list calls counted."""

    def __init__(self, client: object) -> None:
        self.client, self.listed_keys, self.calls = client, 0, 0

    def list_objects_v2(self, **kwargs: object) -> dict:
        page = self.client.list_objects_v2(**kwargs)  # type: ignore[attr-defined]
        self.calls += 1
        self.listed_keys += len(page.get("Contents", []))
        return page

    def __getattr__(self, name: str) -> object:
        return getattr(self.client, name)


@pytest.fixture
def store(tmp_path: Path, s3_env: dict[str, str], s3_server: S3Server) -> S3Artifacts:
    bucket = s3_server.create_bucket()
    made = S3Artifacts.from_url(f"s3://{bucket}/deploy", tmp_path / "scratch", endpoint_url=s3_server.url)
    made.client = CountingClient(made.client)
    return made


def _jobs(store: S3Artifacts, count: int, files: int) -> list[str]:
    """``count`` jobs of ``files`` objects each (an upload and an attempt's results)."""
    ids = sorted(uuid.uuid4().hex for _ in range(count))
    for job_id in ids:
        for index in range(files):
            store.client.put_object(Bucket=store.bucket, Key=f"{store._job_prefix(job_id)}f{index}", Body=b"x")
    return ids


def test_each_sweep_lists_at_most_its_bound_and_a_round_of_sweeps_finds_every_orphan(store, monkeypatch):
    monkeypatch.setattr(s3_artifacts, "ORPHAN_KEYS_PER_SWEEP", 7)
    monkeypatch.setattr(s3_artifacts, "_PAGE_KEYS", 3)
    ids = _jobs(store, 10, files=3)  # 30 objects
    found: list[str] = []
    sweeps = 0
    while sweeps < 20:
        before = store.client.listed_keys
        found += store.orphans(before=time.time() + 3600)
        sweeps += 1
        assert store.client.listed_keys - before <= 7
        if store._sweep_from == "":  # reached the end: the next sweep starts again from the first job
            break
    assert sorted(found) == ids  # each job once: one cut by the bound was judged in the next sweep
    assert sweeps >= 5  # 30 objects at 7 a sweep


def test_a_job_cut_by_the_bound_is_not_judged_on_part_of_its_objects(store, monkeypatch):
    monkeypatch.setattr(s3_artifacts, "ORPHAN_KEYS_PER_SWEEP", 4)
    first, second = _jobs(store, 2, files=3)
    assert store.orphans(before=time.time() + 3600) == [first]  # the second's first object only: next time
    # Its last object is fresh now: judged whole, it is no orphan.
    store.client.put_object(Bucket=store.bucket, Key=f"{store._job_prefix(second)}f2", Body=b"y")
    assert store.orphans(before=time.time() - 1) == []
    assert store._sweep_from == ""


def test_a_job_larger_than_the_bound_is_still_swept(store, monkeypatch):
    monkeypatch.setattr(s3_artifacts, "ORPHAN_KEYS_PER_SWEEP", 2)
    (only,) = _jobs(store, 1, files=5)
    assert store.orphans(before=time.time() + 3600) == [only]
