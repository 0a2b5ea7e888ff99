"""What the API returns: job views built from store records, and the error body."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field

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
    options: dict[str, Any]
    error: ErrorDetail | None = None
    output_sha256: str | None = None
    links: JobLinks
    report: PruneReport | None = Field(None, description="Present once the job has succeeded.")

    @classmethod
    def of(cls, job: JobRecord, report: PruneReport | None = None) -> JobPublic:
        base = f"/v1/jobs/{job.id}"
        error = None
        if job.status in (JobStatus.failed, JobStatus.cancelled) and job.error_code:
            error = ErrorDetail(code=job.error_code, message=job.error_message or "")
        options = json.loads(job.config)
        float_model = f"{base}/model?variant=float" if options.get("quantize", "none") != "none" else None
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


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)
