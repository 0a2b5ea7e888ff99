"""The servers of a many-host deployment, for tests: PostgreSQL on 127.0.0.1:5432 and an S3 endpoint.

PostgreSQL runs on the machine (as Redis does; ``.ci/run`` starts one when none answers): each test
session gets a database of its own, dropped at the end. The S3 API is moto's server mode, started
here as a process on a free port of 127.0.0.1 (so a test can stop it like a real endpoint going
down). Without PostgreSQL the tests skip locally and fail in CI (``tests.support.needs``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.needs import unavailable

POSTGRES_ADMIN_URL = os.environ.get("ONNXPRUNE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def _admin_connection():  # type: ignore[no-untyped-def]
    import psycopg

    try:
        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        unavailable(
            f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL} ({str(exc).strip()[:200]}); "
            "start it (trust auth, database 'test') to run the PostgreSQL store tests"
        )


@contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new database on the local PostgreSQL, dropped afterwards."""
    admin = _admin_connection()
    name = f"onnxprune_test_{uuid.uuid4().hex[:10]}"
    admin.execute(f"CREATE DATABASE {name}")
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test session (tests empty its table: ``empty_jobs_table``)."""
    with fresh_database() as url:
        yield url


def empty_jobs_table(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("DO $$ BEGIN IF to_regclass('jobs') IS NOT NULL THEN DELETE FROM jobs; END IF; END $$")


class S3Server:
    """moto's S3 server as a process of its own on 127.0.0.1."""

    def __init__(self, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> S3Server:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **S3_ENV},
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        return self

    def _answers(self) -> bool:
        import httpx

        try:
            return httpx.get(self.url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    def create_bucket(self) -> str:
        import boto3

        bucket = f"onnxprune-{uuid.uuid4().hex[:12]}"
        client = boto3.client("s3", endpoint_url=self.url, **_credentials())
        client.create_bucket(Bucket=bucket)
        return bucket

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


def _credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """AWS_* credentials for moto, in this process's environment too (boto3 reads them there)."""
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    return dict(S3_ENV)
