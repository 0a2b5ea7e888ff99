"""What the API returns: job views built from store records, and the error body."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from onnxprune.jobs.store import JobRecord, JobStatus
from onnxprune.workers.report import PruneReport


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_config, model_rejected.")
    message: str = Field(description="One line for humans; names the field or tensor at fault.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class JobLinks(BaseModel):
    self: str
    model: str = Field(description="The job's model: quantized when the job asked for 'quantize'.")
    report: str
    plan: str
    float_model: str | None = Field(
        None, description="With 'quantize': the float pruned model the quantized one was made from."
    )


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    stage: str | None
    progress: float = Field(ge=0.0, le=1.0)
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    options: dict[str, Any] = Field(
        description="The job's options nested by strategy, as the report gives them (workers.strategies.nesting)."
    )
    error: ErrorDetail | None = None
    output_sha256: str | None = None
    links: JobLinks
    report: PruneReport | None = Field(None, description="Present once the job has succeeded.")

    @classmethod
    def of(
        cls, job: JobRecord, report: PruneReport | None = None, *, options: dict[str, Any] | None = None
    ) -> JobPublic:
        """``options``: the echo the job's report gives (exact: it knows whether a plan was applied),
        else derived from the stored config."""
        base = f"/v1/jobs/{job.id}"
        error = None
        if job.status in (JobStatus.failed, JobStatus.cancelled) and job.error_code:
            error = ErrorDetail(code=job.error_code, message=job.error_message or "")
        config = json.loads(job.config)  # flat, as accepted
        if options is None:
            options = report.options if report is not None else _echo(config, has_data=job.has_data)
        float_model = f"{base}/model?variant=float" if config.get("quantize", "none") != "none" else None
        return cls(
            id=job.id,
            status=job.status,
            stage=job.stage,
            progress=job.progress,
            attempts=job.attempts,
            created_at=_time(job.created_at),
            started_at=_time(job.started_at),
            finished_at=_time(job.finished_at),
            options=options,
            error=error,
            output_sha256=job.output_sha256,
            links=JobLinks(
                self=base, model=f"{base}/model", report=f"{base}/report", plan=f"{base}/plan", float_model=float_model
            ),
            report=report,
        )


class JobList(BaseModel):
    jobs: list[JobPublic]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page, null on the last one.")


class QueueDepth(BaseModel):
    queued: int = Field(description="Jobs accepted and waiting for a worker.")
    running: int
    limit: int = Field(description="Most jobs queued and running at once; beyond it POST answers 429.")


class Health(BaseModel):
    status: str
    mode: str
    detail: str | None = None


def _echo(config: dict[str, Any], *, has_data: bool) -> dict[str, Any]:
    """A stored config nested by the strategies it chooses; as stored if this version refuses it."""
    from onnxprune.workers.options import PruneOptions
    from onnxprune.workers.strategies.needs import Given
    from onnxprune.workers.strategies.nesting import echo_options

    try:
        options = PruneOptions.model_validate(config)
    except ValidationError:  # a record from a version whose options differ: shown, not failed
        return config
    return echo_options(options, Given(data=has_data))


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)
