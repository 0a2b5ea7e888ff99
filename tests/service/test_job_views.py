"""GET /v1/jobs/{id} serves the stored status and a report validated once, identical to a full render;
an unchanged job answers 304 to its ETag; the route skips FastAPI's dependency solving but not its checks."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient

from onnxprune.jobs.files import JobFiles
from onnxprune.jobs.settings import Settings
from onnxprune.jobs.store import JobRecord, JobStatus
from onnxprune.service.api import create_app
from onnxprune.service.auth import Owner, owner_of
from onnxprune.service.client import PruneClient
from onnxprune.service.direct_route import DirectRoute
from onnxprune.service.schemas import JobPublic
from onnxprune.workers.report import PruneReport
from tests.support.service_models import convnet

MODEL = convnet().SerializeToString()


def test_a_polled_job_renders_like_the_full_model_and_its_report_is_read_once(client, embedded_settings):
    job_id = client.post(
        "/v1/jobs", files={"model": ("m.onnx", MODEL)}, data={"config": '{"ratio": 0.5, "benchmark": false}'}
    ).json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job_id}").json()["status"] != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.1)

    polled = client.get(f"/v1/jobs/{job_id}")
    report_path = JobFiles.of(embedded_settings.jobs_dir, job_id).report
    record = client.app.state.store.get(job_id)
    expected = JobPublic.of(record, PruneReport.model_validate_json(report_path.read_text()))
    report_path.write_text("not JSON any more")  # a second poll must not read the file again
    again = client.get(f"/v1/jobs/{job_id}")

    assert polled.status_code == again.status_code == 200
    assert polled.headers["content-type"] == "application/json"
    assert polled.json() == expected.model_dump(mode="json")
    assert again.json() == polled.json()
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404


def _running_job(store, owner: str = "") -> str:
    """A job record claimed by a (pretend) worker, so the test decides when it changes."""
    job_id = "f" * 24
    store.create(
        JobRecord(id=job_id, owner=owner, fingerprint="x", status=JobStatus.queued, config="{}", created_at=time.time())
    )
    token = store.claim(job_id, "test", 600, max_attempts=3)
    assert token is not None and store.progress(job_id, token, "scoring", 0.25)
    return job_id


def test_an_unchanged_job_answers_304_to_its_etag_and_a_changed_one_its_new_state(client):
    store = client.app.state.store
    job_id = _running_job(store)
    token = store.get(job_id).lease_token

    first = client.get(f"/v1/jobs/{job_id}")
    etag = first.headers["ETag"]
    assert first.status_code == 200
    assert first.json() == JobPublic.of(store.get(job_id)).model_dump(mode="json")
    for sent in (etag, f"W/{etag}", f'"elsewhere", {etag}', "*"):
        again = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": sent})
        assert (again.status_code, again.content, again.headers["ETag"]) == (304, b"", etag), sent
    assert client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": '"elsewhere"'}).status_code == 200

    assert store.progress(job_id, token, "applying", 0.5)
    changed = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert (changed.json()["stage"], changed.json()["progress"]) == ("applying", 0.5)
    assert changed.json() == JobPublic.of(store.get(job_id)).model_dump(mode="json")


AUTH_CASES = {
    "no header": {},
    "unknown token": {"Authorization": "Bearer mallory-secret"},
    "another basic scheme": {"Authorization": "Basic YWxpY2Utc2VjcmV0"},
    "the other token": {"Authorization": "Bearer bob-secret"},
    "the owner": {"Authorization": "bearer alice-secret"},
}


@pytest.mark.parametrize("headers", AUTH_CASES.values(), ids=AUTH_CASES.keys())
def test_the_poll_route_checks_tokens_like_every_other_job_route(tmp_path, headers):
    settings = Settings(redis_url=None, data_dir=tmp_path / "data", api_tokens="alice-secret, bob-secret")
    with TestClient(create_app(settings)) as client:
        job_id = _running_job(client.app.state.store, owner=owner_of("alice-secret"))
        polled = client.get(f"/v1/jobs/{job_id}", headers=headers)
        other = client.get(f"/v1/jobs/{job_id}/plan", headers=headers)  # solved by FastAPI's dependencies

    expected = 200 if other.status_code == 409 else other.status_code  # 409: the plan is not ready yet
    assert polled.status_code == expected
    if expected != 200:
        assert polled.json() == other.json()
        assert polled.headers.get("WWW-Authenticate") == other.headers.get("WWW-Authenticate")


def test_the_poll_route_keeps_its_openapi_entry(client):
    entry = client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}"]["get"]
    assert [(p["name"], p["in"], p["required"]) for p in entry["parameters"]] == [("job_id", "path", True)]
    assert entry["security"] == [{"HTTPBearer": []}]
    assert entry["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobPublic"
    }
    assert {"304", "401", "404"} <= set(entry["responses"])


async def _takes_a_query(request: Request, job_id: str, verbose: bool = False) -> Response:
    return Response()


async def _takes_a_dependency(request: Request, job_id: str, owner: Owner) -> Response:
    return Response()


def _sync(request: Request, job_id: str) -> Response:
    return Response()


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        (_takes_a_query, "parameters only FastAPI would solve: verbose"),
        (_takes_a_dependency, "parameters only FastAPI would solve: owner"),
        (_sync, "not async"),
    ],
)
def test_a_direct_route_refuses_an_endpoint_whose_parameters_it_would_skip(endpoint, problem):
    app = FastAPI()
    with pytest.raises(TypeError, match=problem):
        app.router.add_api_route("/things/{job_id}", endpoint, route_class_override=DirectRoute)


class _Recording(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.polls: list[tuple[str | None, int]] = []  # (If-None-Match sent, status) of each GET of a job

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "GET" and request.url.path.count("/") == 3:
            self.polls.append((request.headers.get("If-None-Match"), response.status_code))
        return response


def test_the_client_sends_the_etag_back_and_gets_the_same_job_from_a_304(start_api, embedded_env, model_path):
    server = start_api(embedded_env)
    transport = _Recording()
    with PruneClient(server.url, transport=transport) as client:
        job_id = client.submit(model_path, {"ratio": 0.5, "benchmark": False, "round_to": 1})["id"]
        finished = client.wait(job_id, poll_s=0.05, timeout=120)
        transport.polls.clear()
        again = client.get(job_id)
        again["status"] = "changed by the caller"  # must not leak into the next answer
        once_more = client.get(job_id)

    sent = {etag for etag, _ in transport.polls}
    assert [status for _, status in transport.polls] == [304, 304]
    assert len(sent) == 1 and None not in sent
    assert once_more == finished and finished["status"] == "succeeded"


def _record(job_id: str, stage: str) -> JobRecord:
    return JobRecord(
        id=job_id, owner="", fingerprint="x", status=JobStatus.running, config="{}", created_at=0.0, stage=stage
    )


def test_the_view_cache_is_bounded_in_bytes_and_skips_bodies_too_large_to_keep():
    from onnxprune.service.job_views import JobViews

    views = JobViews(size=512, max_bytes=4000, max_item_bytes=1500)
    for index in range(20):  # each body grows with its stage text: about 400 to 1,300 bytes
        rendered = views.render(_record(f"job{index}", "s" * (50 * index)), None)
        assert views.kept_bytes <= 4000
        kept = views.cached(rendered.record)
        assert (kept is not None) == (len(rendered.body) <= 1500)
    assert views.cached(_record("job0", "")) is None  # the oldest went first
    views.forget("job19")
    assert views.kept_bytes == sum(len(v.body) for v in views._items.values())
