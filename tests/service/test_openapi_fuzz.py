"""Schemathesis against /openapi.json (embedded app, in-process): no generated request gets a 5xx.

Bounded: a fixed number of examples per operation, no shrinking deadline, derandomized so CI runs
the same requests each time.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from onnxprune.jobs.settings import Settings
from onnxprune.service.api import create_app

TOKEN = "fuzz-token-0123456789abcdef"  # with a token every route is reachable (listing needs one)
APP = create_app(
    Settings(
        redis_url=None,
        max_upload_mb=1,
        retry_delay_s=0,
        embedded_workers=1,
        api_tokens=TOKEN,
        data_dir=__import__("tempfile").mkdtemp(prefix="onnxprune-fuzz-"),
    )
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def running_app():
    with TestClient(APP):  # runs the lifespan: the runner and the background tasks start
        yield


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case):
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    )
