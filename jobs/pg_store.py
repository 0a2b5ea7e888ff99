"""The PostgreSQL job store (``ONNXPRUNE_DATABASE_URL=postgresql://...``): API and workers on many hosts.

The same statements as the SQLite store (``jobs.store``), through SQLAlchemy 2 Core and psycopg 3:
each state change is one conditional UPDATE in its own transaction. Job creation with admission
limits takes a transaction-scoped advisory lock first, so the counts and the insert of concurrent
uploads (on any number of API processes) are serialised without locking the table for readers.
The schema is Alembic's (``jobs/migrations``), upgraded when a process opens the store; an advisory
lock keeps an API and its workers starting together from migrating twice.
"""

from __future__ import annotations

import builtins
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from onnxprune.jobs.job_store import (
    ACTIVE,
    COLUMNS,
    Admission,
    IdempotencyConflict,
    JobRecord,
    StoreFull,
    StoreUnavailable,
    check_admission,
    record_values,
)

_ADMISSION_LOCK = 0x6F6E6E78  # an arbitrary constant: the advisory lock of job admission
_MIGRATION_LOCK = 0x6F6E6E79
_DISK_FULL = "53100"  # SQLSTATE disk_full; 53xxx are "insufficient resources"
_QUOTA_KEY = "COALESCE(quota_key, owner)"
T = TypeVar("T")


def engine_url(url: str) -> str:
    """``postgresql://`` names the psycopg 3 driver (SQLAlchemy would default to psycopg2)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def _pool(url: str, pool_size: int, connect_args: dict[str, object]) -> Engine:
    """A pool of autocommitting connections with no ping before each use (it doubles the round trips of
    every poll): a statement that finds its connection broken by a database restart is tried once more
    (``PostgresJobStore._again``), on a new one. Each state change is one statement, atomic by itself:
    autocommit spares a BEGIN and a COMMIT round trip per poll."""
    return sa.create_engine(
        engine_url(url),
        isolation_level="AUTOCOMMIT",
        pool_size=pool_size,
        max_overflow=10,
        pool_timeout=10,
        connect_args=connect_args,
    )


class PostgresJobStore:
    def __init__(self, url: str, *, connect_timeout_s: int = 5) -> None:
        # Job creation and migrations open a transaction (``_connect``).
        self.engine = _pool(url, 5, {"connect_timeout": connect_timeout_s})
        # Progress and lease renewals: sessions that commit without waiting for the WAL flush, so each
        # such write is one statement (with ``SET LOCAL`` in a transaction it was four round trips:
        # BEGIN, SET, UPDATE, COMMIT; a small job wrote ~18 of them, issue 28).
        self.relaxed_engine = _pool(
            url, 2, {"connect_timeout": connect_timeout_s, "options": "-c synchronous_commit=off"}
        )
        with self._connect(transaction=True) as db:
            migrate(db)

    @contextmanager
    def _connect(self, *, transaction: bool = False, relaxed: bool = False) -> Iterator[Connection]:
        """A pooled connection (in a transaction committed at the end, if asked; of the relaxed engine,
        if asked); driver errors translated."""
        try:
            with (self.relaxed_engine if relaxed else self.engine).connect() as db:
                if not transaction:
                    yield db
                    return
                db = db.execution_options(isolation_level="READ COMMITTED")
                with db.begin():
                    yield db
        except sa_exc.IntegrityError:
            raise
        except sa_exc.DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == _DISK_FULL:
                raise StoreFull(f"the job database is full: {exc.orig}") from exc
            raise StoreUnavailable(f"the job database cannot be used: {exc.orig}") from exc
        except sa_exc.TimeoutError as exc:  # no pooled connection came free
            raise StoreUnavailable(f"the job database is busy: {exc}") from exc

    def _again(self, run: Callable[[Connection], T], *, transaction: bool = False, relaxed: bool = False) -> T:
        """``run`` on a pooled connection; once more if the one it got had been broken (SQLAlchemy
        then invalidates the whole pool, so the second try gets a new connection)."""
        try:
            with self._connect(transaction=transaction, relaxed=relaxed) as db:
                return run(db)
        except StoreUnavailable as exc:
            if not getattr(exc.__cause__, "connection_invalidated", False):
                raise
        with self._connect(transaction=transaction, relaxed=relaxed) as db:
            return run(db)

    def _relaxed_update(self, sql: str, **params: object) -> bool:
        """An update that need not wait for the WAL flush (~8 ms a commit on a plain disk): progress and
        lease renewals, written every few seconds by every attempt. One lost in a database crash is
        harmless: progress is shown again at the next stage, and a lease that looks expired too soon
        at worst lets another attempt start, which fencing keeps from writing twice."""
        return self._again(lambda db: db.execute(sa.text(sql), params).rowcount == 1, relaxed=True)

    def _rows(self, sql: str, **params: object) -> builtins.list[sa.Row[Any]]:
        return self._again(lambda db: list(db.execute(sa.text(sql), params)))

    def _update(self, sql: str, **params: object) -> bool:
        return self._again(lambda db: db.execute(sa.text(sql), params).rowcount == 1)

    # -- reading -----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._rows(f"SELECT {COLUMNS} FROM jobs WHERE id = :id", id=job_id)
        return JobRecord.from_row(tuple(rows[0])) if rows else None

    def list(self, owner: str, *, limit: int, offset: int) -> tuple[builtins.list[JobRecord], int]:
        with self._connect() as db:
            rows = db.execute(
                sa.text(
                    f"SELECT {COLUMNS} FROM jobs WHERE owner = :owner ORDER BY created_at DESC, id"
                    " LIMIT :limit OFFSET :offset"
                ),
                {"owner": owner, "limit": limit, "offset": offset},
            ).all()
            total = db.execute(sa.text("SELECT COUNT(*) FROM jobs WHERE owner = :owner"), {"owner": owner}).scalar_one()
        return [JobRecord.from_row(tuple(r)) for r in rows], int(total)

    def active_ids(self) -> builtins.list[str]:
        rows = self._rows("SELECT id FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at")
        return [r[0] for r in rows]

    def active(self, limit: int = 10_000) -> builtins.list[JobRecord]:
        rows = self._rows(
            f"SELECT {COLUMNS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at LIMIT :limit",
            limit=limit,
        )
        return [JobRecord.from_row(tuple(r)) for r in rows]

    def counts(self, owner: str | None = None) -> dict[str, int]:
        with self._connect() as db:
            found = _active_counts(db, owner)
        return {status: found.get(status, 0) for status in ACTIVE}

    def stored_bytes(self, owner: str | None = None) -> int:
        with self._connect() as db:
            return _stored_bytes(db, owner)

    def ping(self) -> None:
        self._rows("SELECT 1 FROM jobs LIMIT 1")

    def expired_ids(self, before: float) -> builtins.list[str]:
        rows = self._rows("SELECT id FROM jobs WHERE COALESCE(finished_at, created_at) < :before", before=before)
        return [r[0] for r in rows]

    def with_stale_inputs(self, before: float) -> builtins.list[str]:
        rows = self._rows(
            "SELECT id FROM jobs WHERE status IN ('failed', 'cancelled') AND input_bytes > 0 AND finished_at < :before",
            before=before,
        )
        return [r[0] for r in rows]

    # -- state changes -----------------------------------------------------------------------

    def create(self, job: JobRecord, admission: Admission | None = None) -> JobRecord:
        try:
            with self._connect(transaction=True) as db:
                if admission is not None:
                    db.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADMISSION_LOCK})
                    check_admission(
                        job,
                        admission,
                        lambda key: sum(_active_counts(db, key).values()),
                        lambda key: _stored_bytes(db, key),
                    )
                db.execute(
                    sa.text(
                        "INSERT INTO jobs (id, owner, idempotency_key, fingerprint, status, config, has_data,"
                        " created_at, sent_at, input_bytes, quota_key) VALUES (:id, :owner, :key, :fingerprint,"
                        " :status, :config, :has_data, :created_at, :sent_at, :input_bytes, :quota_key)"
                    ),
                    {
                        "id": job.id,
                        "owner": job.owner,
                        "key": job.idempotency_key,
                        "fingerprint": job.fingerprint,
                        "status": job.status.value,
                        "config": job.config,
                        "has_data": int(job.has_data),
                        "created_at": job.created_at,
                        "sent_at": job.sent_at or job.created_at,
                        "input_bytes": job.input_bytes,
                        "quota_key": job.quota_key,
                    },
                )
        except sa_exc.IntegrityError:
            rows = self._rows(
                f"SELECT {COLUMNS} FROM jobs WHERE owner = :owner AND idempotency_key = :key",
                owner=job.owner,
                key=job.idempotency_key,
            )
            if not rows:
                raise
            raise IdempotencyConflict(JobRecord.from_row(tuple(rows[0]))) from None
        return job

    def claim(self, job_id: str, owner: str, ttl_s: float, *, max_attempts: int) -> str | None:
        token = secrets.token_hex(12)
        now = time.time()
        claimed = self._update(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, stage = NULL,"
            " started_at = COALESCE(started_at, :now), lease_token = :token, lease_owner = :owner,"
            " lease_expires = :expires WHERE id = :id AND attempts < :max_attempts AND (status = 'queued'"
            "  OR (status = 'running' AND (lease_expires IS NULL OR lease_expires < :now)))",
            now=now,
            token=token,
            owner=owner,
            expires=now + ttl_s,
            id=job_id,
            max_attempts=max_attempts,
        )
        return token if claimed else None

    def renew(self, job_id: str, token: str, ttl_s: float) -> bool:
        return self._relaxed_update(
            "UPDATE jobs SET lease_expires = :expires WHERE id = :id AND status = 'running' AND lease_token = :token",
            expires=time.time() + ttl_s,
            id=job_id,
            token=token,
        )

    def holds(self, job_id: str, token: str) -> bool:
        rows = self._rows(
            "SELECT 1 FROM jobs WHERE id = :id AND status = 'running' AND lease_token = :token", id=job_id, token=token
        )
        return bool(rows)

    def progress(self, job_id: str, token: str, stage: str, fraction: float) -> bool:
        return self._relaxed_update(
            "UPDATE jobs SET stage = :stage, progress = GREATEST(progress, :fraction)"
            " WHERE id = :id AND status = 'running' AND lease_token = :token",
            stage=stage,
            fraction=min(max(float(fraction), 0.0), 1.0),
            id=job_id,
            token=token,
        )

    def requeue(self, job_id: str, token: str, message: str) -> bool:
        return self._update(
            "UPDATE jobs SET status = 'queued', stage = NULL, error_message = :message, lease_token = NULL,"
            " lease_owner = NULL, lease_expires = NULL, sent_at = :now WHERE id = :id AND status = 'running'"
            " AND lease_token = :token",
            message=message,
            now=time.time(),
            id=job_id,
            token=token,
        )

    def succeed(
        self, job_id: str, token: str, output_sha256: str, *, result_key: str | None = None, result_bytes: int = 0
    ) -> bool:
        return self._update(
            "UPDATE jobs SET status = 'succeeded', stage = 'done', progress = 1.0, output_sha256 = :sha,"
            " result_key = :result_key, result_bytes = :result_bytes, error_code = NULL, error_message = NULL,"
            " finished_at = :now, lease_token = NULL, lease_expires = NULL"
            " WHERE id = :id AND status = 'running' AND lease_token = :token",
            sha=output_sha256,
            result_key=result_key,
            result_bytes=result_bytes,
            now=time.time(),
            id=job_id,
            token=token,
        )

    def fail(self, job_id: str, code: str, message: str, *, token: str | None = None) -> bool:
        fence = " AND status = 'running' AND lease_token = :token" if token else " AND status IN ('queued', 'running')"
        params: Mapping[str, object] = {"code": code, "message": message, "now": time.time(), "id": job_id}
        return self._update(
            "UPDATE jobs SET status = 'failed', error_code = :code, error_message = :message, finished_at = :now,"
            " lease_token = NULL, lease_expires = NULL WHERE id = :id" + fence,
            **params,
            **({"token": token} if token else {}),
        )

    def mark_resent(self, job_id: str) -> bool:
        return self._update(
            "UPDATE jobs SET sent_at = :now, resends = resends + 1 WHERE id = :id AND status IN ('queued', 'running')",
            now=time.time(),
            id=job_id,
        )

    def cancel(self, job_id: str) -> bool:
        return self._update(
            "UPDATE jobs SET status = 'cancelled', error_code = 'cancelled', error_message = 'cancelled by the user',"
            " finished_at = :now, input_bytes = 0 WHERE id = :id AND status IN ('queued', 'running')",
            now=time.time(),
            id=job_id,
        )

    def release_inputs(self, job_id: str) -> bool:
        return self._update(
            "UPDATE jobs SET input_bytes = 0 WHERE id = :id AND status IN ('succeeded', 'failed', 'cancelled')",
            id=job_id,
        )

    def delete(self, job_id: str) -> bool:
        return self._update("DELETE FROM jobs WHERE id = :id", id=job_id)

    def restore(self, job: JobRecord) -> bool:
        values = record_values(job)
        marks = ", ".join(f":{name}" for name in values)
        return self._update(f"INSERT INTO jobs ({COLUMNS}) VALUES ({marks}) ON CONFLICT DO NOTHING", **values)

    def all_records(self) -> builtins.list[JobRecord]:
        rows = self._rows(f"SELECT {COLUMNS} FROM jobs ORDER BY created_at, id")
        return [JobRecord.from_row(tuple(r)) for r in rows]

    def close(self) -> None:
        self.engine.dispose()
        self.relaxed_engine.dispose()


def _active_counts(db: Connection, owner: str | None) -> dict[str, int]:
    where = f"AND {_QUOTA_KEY} = :owner" if owner is not None else ""
    rows = db.execute(
        sa.text(f"SELECT status, COUNT(*) FROM jobs WHERE status IN ('queued', 'running') {where} GROUP BY status"),
        {"owner": owner} if owner is not None else {},
    )
    return {status: int(count) for status, count in rows}


def _stored_bytes(db: Connection, owner: str | None) -> int:
    where = f"WHERE {_QUOTA_KEY} = :owner" if owner is not None else ""
    value = db.execute(
        sa.text(f"SELECT COALESCE(SUM(input_bytes + result_bytes), 0) FROM jobs {where}"),
        {"owner": owner} if owner is not None else {},
    ).scalar_one()
    return int(value)


def migrate(db: Connection) -> None:
    """Bring the schema to the newest Alembic revision, one process at a time."""
    from alembic import command
    from alembic.config import Config

    from onnxprune.jobs import migrations

    db.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    config = Config()
    config.set_main_option("script_location", str(migrations.__path__[0]))
    config.attributes["connection"] = db
    command.upgrade(config, "head")
