"""The REST API under /v1: thin routes over the job store, the upload checks and a runner."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from onnxprune.jobs.artifacts import ArtifactMissing, ArtifactStore, open_artifact_store
from onnxprune.jobs.files import FLOAT_MODEL, MODEL, PLAN, REPORT
from onnxprune.jobs.job_store import JobRecord, JobStatus, JobStore, StoreError, StoreFull, open_job_store
from onnxprune.jobs.logs import install_rate_limit
from onnxprune.jobs.policy import STORAGE_FULL_MESSAGE, disk_nearly_full, is_storage_full
from onnxprune.jobs.reconcile import reconcile
from onnxprune.jobs.settings import Settings, load_settings
from onnxprune.service import web
from onnxprune.service.accept import accept_job
from onnxprune.service.auth import ListingOwner, Owner, caller, may_access, quota_key
from onnxprune.service.direct_route import DirectRoute
from onnxprune.service.downloads import result_response
from onnxprune.service.errors import ApiError
from onnxprune.service.job_views import JobViews
from onnxprune.service.option_form import OptionSpec, option_specs
from onnxprune.service.retention import remove_expired
from onnxprune.service.runners import Runner, make_runner
from onnxprune.service.schemas import ErrorBody, Health, JobList, JobPublic, QueueDepth
from onnxprune.service.upload_checks import UploadChecks
from onnxprune.workers.report import PruneReport

log = logging.getLogger(__name__)
DOCS_ASSETS_URL = "/docs-assets"
ModelVariant = Literal["final", "float"]

STORAGE_RETRY_AFTER_S = 10
# /readyz waits this long for each dependency (asked side by side); a load balancer's probe times out soon after.
READY_TIMEOUT_S = 2.0
MAX_OFFSET = 1_000_000_000  # SQLite integers are 64-bit; a bound keeps absurd offsets a 422, not a 500
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 429, 503, 507)
}


def _upload_body() -> dict[str, Any]:
    """The multipart upload, its config described by the options schema, flat or nested by strategy."""
    from onnxprune.workers.strategies.nesting import config_json_schema

    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["model"],
                        "properties": {
                            "model": {"type": "string", "format": "binary", "description": "The .onnx model."},
                            "data": {
                                "type": "string",
                                "format": "binary",
                                "description": "Optional .npz of calibration inputs (no pickles).",
                            },
                            "config": {
                                "type": "string",
                                "contentMediaType": "application/json",
                                "contentSchema": config_json_schema(),
                                "description": "JSON object of options (GET /v1/options lists them): flat keys "
                                '({"ratio": 0.3, "lr": 0.01}), or nested by strategy under "strategies" '
                                '({"strategies": {"recovery": {"finetune": {"lr": 0.01}}}}: each option\'s '
                                "'strategies' says where it nests), or both; a key given both ways must agree.",
                            },
                            "plan": {
                                "type": "string",
                                "description": "Optional pruning plan JSON (GET /v1/jobs/{id}/plan, prune --plan-out) "
                                "to apply instead of scoring.",
                            },
                        },
                    }
                }
            },
        }
    }


def _version() -> str:
    from onnxprune import __version__

    return __version__


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings  # starlette's State is untyped
    return settings


async def _store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store  # starlette's State is untyped
    return store


async def _runner(request: Request) -> Runner:
    runner: Runner = request.app.state.runner  # starlette's State is untyped
    return runner


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
RunnerDep = Annotated[Runner, Depends(_runner)]


async def _owned_job(job_id: str, owner: Owner, store: StoreDep, request: Request) -> JobRecord:
    # async: one indexed read on the loop's own connection is cheaper than a hop to the threadpool
    return _accessible(store.get(job_id), job_id, owner, request)


def _accessible(job: JobRecord | None, job_id: str, owner: str, request: Request) -> JobRecord:
    if job is None or not may_access(request, job.owner, owner):
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return job


JobDep = Annotated[JobRecord, Depends(_owned_job)]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    install_rate_limit()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _import_upload_checks()
        # Started, not awaited: the first upload waits for what is not warm yet, a server with none never does.
        warming_checks = asyncio.get_running_loop().run_in_executor(None, app.state.upload_checks.warm_up)
        warming_checks.add_done_callback(lambda done: done.cancelled() or done.exception())
        app.state.runner.start()
        # Before serving: a first publish that has to set up the app and its connection can take longer
        # than the publish timeout on a loaded machine. Bounded: a sick broker delays start by 5 s at most.
        warming = asyncio.get_running_loop().run_in_executor(app.state.publisher, app.state.runner.warm_up)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(warming), 5.0)
        background = [
            asyncio.create_task(_clean_periodically(settings, app.state.store, app.state.artifacts)),
            asyncio.create_task(_reconcile_periodically(app)),
        ]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            # The publisher pool lives as long as the app (a lifespan may run more than once, as
            # test clients do); its threads end at exit, bounded by the broker's socket timeouts.
            app.state.runner.close()  # the upload checks' pool is the process's: it ends at exit

    # Swagger UI (/docs) and ReDoc (/redoc) load their scripts from this server (fastapi-offline ships
    # them), not from a public CDN: the docs work on an air-gapped server.
    app = FastAPIOffline(
        title="onnxprune",
        version=_version(),
        description="Structured filter pruning of ONNX models as a service.",
        lifespan=lifespan,
        static_url=DOCS_ASSETS_URL,
    )
    app.state.settings = settings
    app.state.store = open_job_store(settings)
    app.state.artifacts = open_artifact_store(settings)
    app.state.runner = make_runner(settings, app.state.store)
    # Broker calls (publishing, the reconciler) run here, never on the event loop.
    app.state.publisher = ThreadPoolExecutor(8, thread_name_prefix="onnxprune-publish")
    app.state.views = JobViews()
    app.state.upload_checks = UploadChecks.shared(
        settings.upload_check_workers, settings.upload_check_memory_mib, settings.upload_check_timeout_s
    )
    _add_error_handlers(app)
    _add_routes(app)
    app.include_router(web.router)  # the upload page at / and /v1/jobs/{id}/report.html
    return app


def _add_routes(app: FastAPI) -> None:
    async def get_job(request: Request, job_id: str) -> Response:
        """The job's state, with its report once it has succeeded. Send the ``ETag`` back in
        ``If-None-Match`` to get 304 until the job changes."""
        owner = caller(request)
        store: JobStore = request.app.state.store  # starlette's State is untyped
        job = _accessible(store.get(job_id), job_id, owner, request)
        views: JobViews = request.app.state.views
        rendered = views.cached(job)
        if rendered is None and job.status is JobStatus.succeeded:
            # The first rendering of a result reads and validates its report: off the event loop.
            report = await asyncio.to_thread(_read_result, request, job, REPORT)
            rendered = await asyncio.to_thread(views.render, job, report)
        elif rendered is None:
            rendered = views.render(job, None)
        headers = {"ETag": rendered.etag, "Cache-Control": "private, no-cache"}
        if rendered.matches(request.headers.get("If-None-Match")):
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(rendered.body, media_type="application/json", headers=headers)

    # Added first, so that the route clients call in a loop is the first one the router tries.
    app.router.add_api_route(
        "/v1/jobs/{job_id}",
        get_job,
        methods=["GET"],
        route_class_override=DirectRoute,  # clients poll it: no per-request dependency solving
        response_model=JobPublic,
        responses={**_ERRORS, 304: {"description": "Not modified since the ETag sent in If-None-Match."}},
        tags=["jobs"],
        openapi_extra={"security": [{"HTTPBearer": []}]},
    )

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz(settings: SettingsDep) -> Health:
        """Liveness: answered on the event loop alone (no thread, no broker, no store)."""
        return Health(status="ok", mode="embedded" if settings.embedded else "celery")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["health"])
    async def readyz(
        request: Request, settings: SettingsDep, store: StoreDep, runner: RunnerDep
    ) -> Health | JSONResponse:
        """Ready when the broker, the job store and the artifact store answer (asked side by side, each
        within ``READY_TIMEOUT_S``); the detail names each one that does not. Busy workers do not make
        the API unready (the queue depth is reported by GET /v1/queue)."""
        mode = "embedded" if settings.embedded else "celery"
        checks = {
            "job store": store.ping,
            "broker": runner.ready,
            "artifact store": request.app.state.artifacts.ping,
        }
        answers = await asyncio.gather(*(_readiness_problem(name, check) for name, check in checks.items()))
        problems = [answer for answer in answers if answer is not None]
        if not problems:
            return Health(status="ready", mode=mode)
        body = Health(status="unavailable", mode=mode, detail="; ".join(problems))
        return JSONResponse(body.model_dump(), status_code=503)

    @app.get("/v1/options", response_model=list[OptionSpec], tags=["jobs"])
    def options() -> list[OptionSpec]:
        """Every prune option (the keys of POST /v1/jobs' config): kind, default, help, group, needs data."""
        return option_specs()

    @app.get("/v1/queue", response_model=QueueDepth, responses=_ERRORS, tags=["health"])
    def queue_depth(owner: Owner, settings: SettingsDep, store: StoreDep) -> QueueDepth:
        """How many jobs are queued and running in this deployment, against the queue limit."""
        counts = store.counts()
        return QueueDepth(queued=counts["queued"], running=counts["running"], limit=settings.max_active_jobs)

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobPublic,
        responses=_ERRORS,
        openapi_extra=_upload_body(),
        tags=["jobs"],
    )
    async def create_job(
        request: Request,
        response: Response,
        owner: Owner,
        settings: SettingsDep,
        store: StoreDep,
        runner: RunnerDep,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> JobPublic:
        """Upload a model (and optional npz data) with a JSON config; the job is checked, then queued."""
        job, _created = await accept_job(
            request,
            settings=settings,
            store=store,
            runner=runner,
            publisher=request.app.state.publisher,
            owner=owner,
            idempotency_key=idempotency_key,
            artifacts=request.app.state.artifacts,
            quota_key=quota_key(request, owner),
        )
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return JobPublic.of(job)

    @app.get("/v1/jobs", response_model=JobList, responses=_ERRORS, tags=["jobs"])
    def list_jobs(
        owner: ListingOwner,
        store: StoreDep,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> JobList:
        jobs, total = store.list(owner, limit=limit, offset=offset)
        following = offset + len(jobs)
        return JobList(
            jobs=[JobPublic.of(j) for j in jobs],
            total=total,
            limit=limit,
            offset=offset,
            next_offset=following if following < total else None,
        )

    @app.get("/v1/jobs/{job_id}/model", response_class=FileResponse, responses=_ERRORS, tags=["results"])
    def get_model(
        request: Request,
        job: JobDep,
        variant: Annotated[
            ModelVariant,
            Query(
                description="'final': the job's model (quantized when the job asked for quantize); 'float': "
                "the float pruned model a quantized job kept (404 for a job that did not quantize)."
            ),
        ] = "final",
    ) -> Response:
        """The pruned model; ``X-Content-SHA256`` is its hex SHA-256."""
        if variant == "float":
            sha256 = _float_model_sha256(request, job)
            artifact, name = FLOAT_MODEL, f"{job.id}.float.onnx"
        else:
            sha256, artifact, name = job.output_sha256 or "", MODEL, f"{job.id}.onnx"
        return _download(request, job, artifact, "application/octet-stream", name, {"X-Content-SHA256": sha256})

    @app.get("/v1/jobs/{job_id}/report", response_model=PruneReport, responses=_ERRORS, tags=["results"])
    def get_report(job: JobDep, request: Request) -> Response:
        return _download(request, job, REPORT, "application/json")

    @app.get("/v1/jobs/{job_id}/plan", responses=_ERRORS, tags=["results"])
    def get_plan(job: JobDep, request: Request) -> Response:
        """The pruning plan (kept channel indices per group) as JSON, reusable with the CLI."""
        return _download(request, job, PLAN, "application/json")

    @app.delete(
        "/v1/jobs/{job_id}",
        response_model=JobPublic,
        responses={**_ERRORS, 204: {"description": "Removed."}},
        tags=["jobs"],
    )
    def delete_job(job: JobDep, store: StoreDep, request: Request) -> JobPublic | Response:
        """Cancel a queued or running job (200, status cancelled); remove a finished one (204).
        Either way the job's files are removed. A running job stops at its next pipeline stage."""
        artifacts: ArtifactStore = request.app.state.artifacts
        request.app.state.views.forget(job.id)
        if store.cancel(job.id):
            artifacts.remove(job.id)
            return JobPublic.of(store.get(job.id) or job)
        store.delete(job.id)
        artifacts.remove(job.id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)


def _float_model_sha256(request: Request, job: JobRecord) -> str:
    """The SHA-256 of a quantized job's float pruned model (from its report: never re-hashed)."""
    quantize = json.loads(job.config).get("quantize", "none")
    if job.status is JobStatus.succeeded and quantize == "none":
        raise ApiError(
            404, "not_found", f"job {job.id} did not quantize (quantize 'none'): its model is the float pruned model"
        )
    report = PruneReport.model_validate_json(_read_result(request, job, REPORT))
    sha256 = report.quantization.float_output_sha256 if report.quantization is not None else None
    return sha256 or ""


def _ready(job: JobRecord) -> None:
    if job.status is not JobStatus.succeeded:
        raise ApiError(409, "not_ready", f"job {job.id} is {job.status.value}; results exist once it has succeeded")


def _download(
    request: Request,
    job: JobRecord,
    name: str,
    media_type: str,
    filename: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    _ready(job)
    artifacts: ArtifactStore = request.app.state.artifacts
    return result_response(artifacts, job, name, request, media_type=media_type, filename=filename, headers=headers)


def _read_result(request: Request, job: JobRecord, name: str) -> bytes:
    _ready(job)
    artifacts: ArtifactStore = request.app.state.artifacts
    try:
        return artifacts.read_result(job.id, job.result_key, name)
    except ArtifactMissing:
        what = name.rsplit(".", 1)[0].replace(".", " ")
        raise ApiError(404, "not_found", f"the {what} of job {job.id} has been removed") from None


def _add_error_handlers(app: FastAPI) -> None:
    def body(status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status_code, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = exc.headers
        if exc.status == 413:  # the rest of the body is not read: close, or the server would drain it all
            headers = {**(headers or {}), "Connection": "close"}
        return body(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return body(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return body(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    async def storage_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, FileNotFoundError):  # a job's file removed while a request read it (DELETE, retention)
            log.info("%s %s: a file was removed while it was read: %s", request.method, request.url.path, exc)
            return body(404, "not_found", "the job's files have been removed")
        data_dir = request.app.state.settings.data_dir
        if is_storage_full(exc) or disk_nearly_full(data_dir):
            log.error("storage full: %s", exc)
            return body(507, "storage_full", STORAGE_FULL_MESSAGE)
        return await unexpected(request, exc)

    app.add_exception_handler(OSError, storage_error)
    app.add_exception_handler(sqlite3.Error, storage_error)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        """The job database or object store is full (507) or away (503 + Retry-After: nothing was kept)."""
        if isinstance(exc, StoreFull) or disk_nearly_full(request.app.state.settings.data_dir):
            log.error("storage full: %s", exc)
            return body(507, "storage_full", STORAGE_FULL_MESSAGE)
        log.warning("storage unavailable: %s", exc)
        message = "the job storage is unreachable; nothing was kept, try again later"
        return body(503, "storage_unavailable", message, {"Retry-After": str(STORAGE_RETRY_AFTER_S)})

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return body(500, "internal_error", "internal server error; the details are in the server log")


def _import_upload_checks() -> None:
    """Import what the upload checks use before serving: a first upload that imports them holds the
    GIL long enough to stall every other request (seconds on a loaded machine)."""
    import onnx.checker  # noqa: F401
    import onnx.shape_inference  # noqa: F401

    import onnxprune.graphops.loading  # noqa: F401
    import onnxprune.graphops.shapes  # noqa: F401
    import onnxprune.workers.precision  # noqa: F401


async def _readiness_problem(name: str, check: Callable[[], str | None]) -> str | None:
    """What is wrong with dependency ``name`` (``check`` raises, or returns a problem), or None; in a
    thread, so that a dependency that hangs costs ``READY_TIMEOUT_S``, not the event loop."""
    try:
        problem = await asyncio.wait_for(asyncio.to_thread(check), READY_TIMEOUT_S)
    except TimeoutError:
        return f"{name}: did not answer within {READY_TIMEOUT_S:g} s"
    except Exception as exc:  # any failure of the dependency's client is the answer: not ready
        return f"{name}: {type(exc).__name__}: {exc}"
    return None if problem is None else f"{name}: {problem}"


async def _reconcile_periodically(app: FastAPI) -> None:
    """Re-send jobs the broker lost or whose worker died (jobs.reconcile), every few seconds."""
    settings: Settings = app.state.settings
    runner: Runner = app.state.runner

    def one_pass() -> None:
        pending = runner.pending_ids()
        reconcile(
            app.state.store,
            pending,
            runner.submit,
            grace_s=settings.reconcile_grace_s,
            max_resends=settings.max_resends,
        )

    while True:
        await asyncio.sleep(settings.reconcile_interval_s)
        try:
            await asyncio.get_running_loop().run_in_executor(app.state.publisher, one_pass)
        except Exception:  # a failed pass must not stop the next one
            log.exception("reconciler pass failed")


async def _clean_periodically(settings: Settings, store: JobStore, artifacts: ArtifactStore) -> None:
    while True:
        try:
            await asyncio.to_thread(functools.partial(remove_expired, settings, store, artifacts=artifacts))
        except Exception:  # a failed sweep must not stop the next one
            log.exception("retention sweep failed")
        await asyncio.sleep(settings.cleanup_interval_s)
