"""Every job store and artifact store implementation, as parametrised fixtures of one contract suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from onnxprune.jobs.artifacts import ArtifactStore, LocalArtifacts
from onnxprune.jobs.job_store import JobStore
from onnxprune.jobs.store import SqliteJobStore
from tests.support.cluster_servers import S3Server, empty_jobs_table, postgres_url, s3_env, s3_server  # noqa: F401


@pytest.fixture(params=["sqlite", "postgresql"])
def job_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        yield SqliteJobStore(tmp_path / "jobs.sqlite3")
        return
    from onnxprune.jobs.pg_store import PostgresJobStore

    url = request.getfixturevalue("postgres_url")
    store = PostgresJobStore(url)
    empty_jobs_table(url)
    yield store
    store.close()


@pytest.fixture
def make_job_store(request: pytest.FixtureRequest, job_store: JobStore, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Another handle on the same database (another process would open one like it)."""

    def make() -> JobStore:
        if isinstance(job_store, SqliteJobStore):
            return SqliteJobStore(job_store.path)
        from onnxprune.jobs.pg_store import PostgresJobStore

        return PostgresJobStore(request.getfixturevalue("postgres_url"))

    return make


@pytest.fixture(params=["local", "s3"])
def artifact_store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifacts(tmp_path / "data" / "jobs")
    from onnxprune.jobs.s3_artifacts import S3Artifacts

    request.getfixturevalue("s3_env")
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.create_bucket()
    return S3Artifacts.from_url(f"s3://{bucket}/deploy", tmp_path / "scratch", endpoint_url=server.url)
