"""One settings class for the API, the embedded runner and the Celery worker, read from ONNXPRUNE_* env."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from onnxprune.workers.latency_cache import LatencyCache

# Threads per job when sizing a worker's concurrency by itself: two passive threads made 2.1 to 2.6
# ResNet-20 fine-tuning steps/s on a busy 2-core machine, one thread 1.3 to 1.7
# (benchmarks/results/passive_waits.json).
DEFAULT_JOB_THREADS = 2


class Settings(BaseSettings):
    """Without ``redis_url`` the API runs jobs in-process (embedded mode); with it, Celery workers do."""

    model_config = SettingsConfigDict(env_prefix="ONNXPRUNE_", extra="ignore")

    redis_url: str | None = Field(None, description="Celery broker; unset means embedded mode.")
    redis_prefix: str = Field("onnxprune:", description="Prefix of every broker key in Redis.")
    queue: str = Field("onnxprune", description="Celery queue the API sends jobs to.")
    data_dir: Path = Field(Path("data"), description="Uploads, results and the job database.")
    max_upload_mb: float = Field(200.0, gt=0, description="Largest accepted upload (model or data).")
    api_tokens: str = Field("", description="Comma-separated bearer tokens; empty means no auth.")
    retention_hours: float = Field(24.0, gt=0, description="Job files and records older than this are removed.")
    cleanup_interval_s: float = Field(600.0, gt=0)
    embedded_workers: int = Field(2, ge=1, le=64, description="Jobs run at once in embedded mode.")
    job_memory_mib: int = Field(
        8192, ge=512, description="Memory (address space) of one job's sandbox process; past it: resource_limit."
    )
    job_nice: int = Field(
        10, ge=0, le=19, description="Nice value added to each job's sandbox, so the API stays responsive."
    )
    max_retries: int = Field(2, ge=0, le=10, description="Retries of a job after an infrastructure error.")
    retry_delay_s: float = Field(5.0, ge=0)
    # A job running past the hard limit is killed; the broker redelivers unacked messages after
    # the visibility timeout, so the limits must stay below it or a slow job would run twice.
    soft_time_limit_s: int = Field(1740, gt=0, description="Wall time of one job; past it the job fails as timeout.")
    time_limit_s: int = Field(1800, gt=0)
    visibility_timeout_s: int = Field(3600, gt=0)
    # An attempt holds its job by a lease that a heartbeat renews every third of this; a job whose
    # lease expired (its worker died or stalled) may be claimed again. Below the visibility timeout,
    # so that a redelivered message finds the dead worker's lease expired.
    lease_ttl_s: float = Field(60.0, gt=0)
    # Handing a job to the broker must not hold up the API: past this, POST /v1/jobs answers 503.
    publish_timeout_s: float = Field(1.0, gt=0, le=30)
    # The reconciler (in the API) re-sends queued jobs the broker no longer has and running jobs whose
    # lease expired, once they have been left alone this long, at most max_resends times each.
    reconcile_interval_s: float = Field(10.0, gt=0)
    reconcile_grace_s: float = Field(30.0, ge=0)
    max_resends: int = Field(3, ge=0, le=100)
    # A worker idle while jobs wait in its queue this long has a stuck broker connection: it reconnects
    # (jobs.consumption), and past three times this it stops reporting itself alive to the healthcheck.
    consumer_stall_s: float = Field(30.0, gt=0)
    # Upload checks run in a pool of processes (service.upload_checks): how many, their memory, their deadline.
    upload_check_workers: int = Field(2, ge=1, le=32)
    upload_check_memory_mib: int = Field(4096, ge=512)
    upload_check_timeout_s: float = Field(60.0, gt=0)
    # Latency tables measured by jobs (issue 33): this deployment's own cache, written only by the trusted
    # parent of a job's sandbox (workers.latency_cache); None: ``<data_dir>/latency-cache``.
    latency_cache_dir: Path | None = Field(None, description="Cache of measured latency tables.")
    latency_cache_max_age_days: float = Field(30.0, gt=0, description="Latency tables older than this are removed.")
    latency_cache_max_mib: float = Field(64.0, gt=0, description="Size cap of the latency cache (oldest go first).")
    max_result_mib: float = Field(
        32.0,
        gt=0,
        description="Largest report or plan a job may produce (both are served whole); past it the job fails.",
    )
    # Backpressure: beyond these many jobs queued or running, POST /v1/jobs answers 429 + Retry-After.
    max_active_jobs: int = Field(200, ge=1, description="Queue limit of the deployment.")
    max_active_per_owner: int = Field(0, ge=0, description="Queue limit of one token (0: none).")
    # CPU per job (issue 29): threads sized to the CPU a job really has, passive waits, and no more jobs
    # at once than the CPUs hold; oversubscribed, ResNet-20's recovery made 35 steps where it makes 7,400.
    job_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="Threads of one job (torch, onnxruntime); 0: the CPUs this process may use (affinity, "
        "cgroup quota) shared equally among the jobs it runs at once.",
    )
    worker_concurrency: int = Field(
        0,
        ge=0,
        le=256,
        description="Jobs one Celery worker runs at once; 0: as many as its CPUs hold, CPUs // job_threads "
        f"(job_threads 0 counts as {DEFAULT_JOB_THREADS}), at least 1.",
    )
    # Many hosts: the job table in PostgreSQL and the job files in S3-compatible object storage
    # (docs/SERVICE.md, "Many hosts"); unset, both stay in data_dir, which then holds only scratch space.
    database_url: str | None = Field(None, description="postgresql://user@host:5432/db; unset: SQLite in data_dir.")
    artifacts_url: str | None = Field(None, description="s3://bucket/prefix for uploads and results; unset: data_dir.")
    s3_endpoint_url: str | None = Field(None, description="S3 API endpoint other than AWS (credentials: AWS_*).")
    # Byte budgets (uploads and results kept), checked atomically with each new job: 429 past one
    # caller's budget, 507 past the deployment's (0: none). Uploads of failed or cancelled jobs stop
    # counting and are removed after failed_upload_retention_s, not after retention_hours.
    max_stored_mb_per_owner: float = Field(0.0, ge=0, description="Byte budget of one caller (0: none).")
    max_stored_mb: float = Field(0.0, ge=0, description="Byte budget of the deployment (0: none).")
    failed_upload_retention_s: float = Field(300.0, ge=0)
    # Open mode keys quotas by client address; behind a reverse proxy, name the header it sets (its
    # first address is used), e.g. X-Forwarded-For. Only set this if the proxy overwrites the header.
    client_address_header: str = Field("", description="Header holding the client address (behind a proxy).")

    @model_validator(mode="after")
    def _limits_below_visibility(self) -> Settings:
        if not self.soft_time_limit_s < self.time_limit_s < self.visibility_timeout_s:
            raise ValueError(
                "need soft_time_limit_s < time_limit_s < visibility_timeout_s, got "
                f"{self.soft_time_limit_s}, {self.time_limit_s}, {self.visibility_timeout_s}"
            )
        if not self.lease_ttl_s < self.visibility_timeout_s:
            raise ValueError(
                f"need lease_ttl_s < visibility_timeout_s, got {self.lease_ttl_s}, {self.visibility_timeout_s}"
            )
        return self

    @property
    def embedded(self) -> bool:
        return not self.redis_url

    def jobs_at_once(self) -> int:
        """Jobs this process runs side by side: ``embedded_workers`` in embedded mode; a Celery worker's
        ``worker_concurrency``, or as many as its usable CPUs hold at ``job_threads`` each."""
        if self.embedded:
            return self.embedded_workers
        if self.worker_concurrency:
            return self.worker_concurrency
        from onnxprune.workers.job_threads import usable_cpus

        return max(1, int(usable_cpus() // (self.job_threads or DEFAULT_JOB_THREADS)))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @cached_property
    def tokens(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.api_tokens.split(",") if t.strip())

    @property
    def database_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def scratch_dir(self) -> Path:
        """This process's private space (object storage mode: uploads being checked, attempts' inputs)."""
        return self.data_dir / "scratch"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    def latency_cache(self) -> LatencyCache:
        from onnxprune.workers.latency_cache import LatencyCache

        return LatencyCache(
            self.latency_cache_dir or self.data_dir / "latency-cache",
            max_age_s=self.latency_cache_max_age_days * 86400.0,
            max_total_bytes=int(self.latency_cache_max_mib * 2**20),
        )


class SettingsError(SystemExit):
    """Inconsistent or invalid ``ONNXPRUNE_*`` settings at startup: one line naming them, exit status 1
    (a SystemExit, so the server or worker ends with that line and no traceback)."""


def load_settings() -> Settings:
    """The settings from the environment; a ``SettingsError`` naming each bad variable if they do not hold."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(f"onnxprune: invalid settings: {describe_settings_error(exc)}") from None


def describe_settings_error(exc: ValidationError) -> str:
    prefix = str(Settings.model_config.get("env_prefix", ""))
    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        names = [f"{prefix}{part}".upper() for part in error["loc"] if isinstance(part, str)]
        if not names:  # a rule across fields: name the variables its message mentions
            names = [f"{prefix}{field}".upper() for field in Settings.model_fields if field in message]
        problems.append(f"{', '.join(names)}: {message}" if names else message)
    return "; ".join(problems)
