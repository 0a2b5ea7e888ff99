"""POST /v1/jobs refuses bad input with a 4xx JSON error, and leaves no job and no file behind.

Runs the embedded app in-process (TestClient); nothing here needs Redis.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from onnxprune.workers.options import PruneOptions
from tests.support import hostile_models as hostile
from tests.support import qdq_models
from tests.support.service_models import (
    convnet,
    custom_domain_model,
    external_data_model,
    huge_initializer_model,
    no_conv_model,
)

MODEL = convnet().SerializeToString()
QDQ = qdq_models.per_channel_activation_net().SerializeToString()  # weights and activations int8 (QDQ)


def _post(client, model: bytes | None = MODEL, config: object = None, data: bytes | None = None, **kwargs):
    files = {}
    if model is not None:
        files["model"] = ("m.onnx", model, "application/octet-stream")
    if data is not None:
        files["data"] = ("d.npz", data, "application/octet-stream")
    form = {} if config is None else {"config": config if isinstance(config, str) else json.dumps(config)}
    return client.post("/v1/jobs", files=files or None, data=form or None, **kwargs)


def _assert_nothing_left(client, data_dir: Path) -> None:
    assert client.app.state.store.list("", limit=1, offset=0)[1] == 0
    jobs_dir = data_dir / "jobs"
    assert not jobs_dir.exists() or list(jobs_dir.iterdir()) == []


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


BAD_UPLOAD_CASES = [
    # (id, post kwargs, status, code, words the message must contain)
    ("random bytes", dict(model=b"\x8f\x00garbage" * 100), 422, "invalid_model", "not an onnx model"),
    ("truncated model", dict(model=MODEL[: len(MODEL) // 2]), 422, "invalid_model", "truncated"),
    ("empty model file", dict(model=b""), 422, "invalid_model", "empty"),
    ("external data", dict(model=external_data_model().SerializeToString()), 422, "invalid_model", "external"),
    (
        "10^12-element initializer",
        dict(model=huge_initializer_model().SerializeToString()),
        422,
        "invalid_model",
        "declares 1000000000000 elements",
    ),
    ("custom-domain op", dict(model=custom_domain_model().SerializeToString()), 422, "invalid_model", "com.evil"),
    ("no conv", dict(model=no_conv_model().SerializeToString()), 422, "invalid_model", "conv"),
    ("unknown criterion", dict(config={"criterion": "astrology"}), 422, "invalid_config", "config.criterion"),
    ("ratio 1.0", dict(config={"ratio": 1.0}), 422, "invalid_config", "config.ratio"),
    ("ratio -0.1", dict(config={"ratio": -0.1}), 422, "invalid_config", "config.ratio"),
    ("unknown option", dict(config={"ratoi": 0.3}), 422, "invalid_config", "config.ratoi"),
    ("config not JSON", dict(config="{ratio: 0.3"), 422, "invalid_config", "json"),
    ("config not an object", dict(config="[0.3]"), 422, "invalid_config", "object"),
    ("both targets", dict(config={"ratio": 0.3, "flops_target": 0.3}), 422, "invalid_config", "not both"),
    (
        "an option given flat and nested, differently",
        dict(config={"lr": 0.02, "strategies": {"recovery": {"finetune": {"lr": 0.01}}}}),
        422,
        "invalid_config",
        "config: lr is given twice with different values: 0.02 at lr and 0.01 at strategies.recovery.finetune.lr",
    ),
    (
        "a strategy that does not exist",
        dict(config={"strategies": {"recovery": {"fine-tune": {"lr": 0.01}}}}),
        422,
        "invalid_config",
        "strategies.recovery.fine-tune: no recovery named 'fine-tune'; known: reconstruct, finetune, none",
    ),
    (
        "an option nested under a strategy that does not read it",
        dict(config={"strategies": {"finish": {"quantize": {"lr": 0.01}}}}),
        422,
        "invalid_config",
        "strategies.finish.quantize.lr: finish 'quantize' has no option 'lr'",
    ),
    ("missing model part", dict(model=None, config={"ratio": 0.3}), 400, "bad_request", "model"),
    ("pickled npz", dict(data=_npz(x=np.array([object()], dtype=object))), 422, "invalid_data", "npz"),
    ("data not an npz", dict(data=b"not a zip at all"), 422, "invalid_data", "npz"),
    ("data criterion without data", dict(config={"criterion": "taylor"}), 422, "invalid_config", "needs data"),
    ("fine-tuning without data", dict(config={"finetune_steps": 10}), 422, "invalid_config", "needs data"),
    (
        "a named recovery without data",
        dict(config={"recovery": "reconstruct"}),
        422,
        "invalid_config",
        "recovery 'reconstruct' needs data: add a 'data' part",
    ),
    # Hostile models (tests/support/hostile_models.py): refused statically, before anything is built or run.
    (
        "3000 chained local functions",
        dict(model=hostile.function_chain().SerializeToString()),
        422,
        "invalid_model",
        "200000 nodes",
    ),
    (
        "Loop of 3e7 iterations",
        dict(model=hostile.constant_loop().SerializeToString()),
        422,
        "invalid_model",
        "trip count",
    ),
    (
        "1x3x8192x8192 input",
        dict(model=hostile.declared_input().SerializeToString()),
        422,
        "invalid_model",
        "per input",
    ),
    (
        "batch of 130,000",
        dict(
            model=hostile.symbolic_batch_model().SerializeToString(), config={"input_shapes": hostile.HUGE_BATCH_SHAPES}
        ),
        422,
        "invalid_model",
        "130000x3x32x32",
    ),
    (  # recovery with data runs the graph in PyTorch: a QDQ model is refused before it is queued
        "QDQ model with data-driven recovery",
        dict(model=QDQ, data=_npz(x=np.zeros((4, 3, 8, 8), np.float32)), config={"ratio": 0.5}),
        422,
        "invalid_model",
        "already quantized (DequantizeLinear node 'w1_dq'): layer-wise reconstruction",
    ),
    ("QDQ model quantized again", dict(model=QDQ, config={"quantize": "int8"}), 422, "invalid_model", "quantize"),
    (
        "symbolic dim unknown input",
        dict(config={"input_shapes": {"nope": [1, 3, 16, 16]}}),
        422,
        "invalid_model",
        "nope",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "words"), [c[1:] for c in BAD_UPLOAD_CASES], ids=[c[0] for c in BAD_UPLOAD_CASES]
)
def test_bad_upload_is_refused_with_a_clear_message_and_no_job(client, embedded_settings, kwargs, status, code, words):
    response = _post(client, **kwargs)

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert words.lower() in error["message"].lower()
    assert "Traceback" not in response.text
    _assert_nothing_left(client, embedded_settings.data_dir)


def test_empty_body_is_a_400(client, embedded_settings):
    response = client.post("/v1/jobs", content=b"")

    assert response.status_code == 400
    assert "multipart/form-data" in response.json()["error"]["message"]
    _assert_nothing_left(client, embedded_settings.data_dir)


def test_upload_over_the_size_limit_is_a_413_and_the_partial_file_is_removed(client, embedded_settings):
    too_big = MODEL + b"\0" * (embedded_settings.max_upload_bytes + 1)

    response = _post(client, model=too_big)

    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "payload_too_large",
        "message": "model upload exceeds the limit of 1 MB",
    }
    _assert_nothing_left(client, embedded_settings.data_dir)


def test_a_valid_upload_is_accepted_with_location_and_an_unguessable_id(client):
    response = _post(
        client, config={"ratio": 0.25, "benchmark": False}, data=_npz(input=np.zeros((2, 3, 16, 16), np.float32))
    )

    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert len(job["id"]) >= 24
    assert job["status"] in ("queued", "running", "succeeded")
    assert job["options"]["strategies"]["selector"]["ratio"]["ratio"] == 0.25
    assert job["options"]["benchmark"] is False


def test_options_nested_by_strategy_are_accepted_beside_flat_ones_and_echoed_nested(client):
    config = {
        "ratio": 0.25,
        "benchmark": False,
        "strategies": {
            "recovery": {"finetune": {"lr": 0.01, "time_budget": 300}},
            "selector": {"ratio": {"ratio": 0.25}},
        },
    }
    response = _post(client, config=config, data=_npz(input=np.zeros((2, 3, 16, 16), np.float32)))

    assert response.status_code == 202, response.text
    echoed = client.get(f"/v1/jobs/{response.json()['id']}").json()["options"]
    finetune = echoed["strategies"]["recovery"]["finetune"]
    assert (finetune["lr"], finetune["time_budget"]) == (0.01, 300)  # data and a budget: the job fine-tunes
    assert set(echoed["strategies"]["recovery"]) == {"reconstruct", "finetune"}
    assert "lr" not in echoed  # nested where it is read, not repeated flat


def test_same_idempotency_key_returns_the_same_job(client):
    headers = {"Idempotency-Key": "upload-42"}
    first = _post(client, config={"benchmark": False}, headers=headers)
    again = _post(client, config={"benchmark": False}, headers=headers)
    other_payload = _post(client, config={"benchmark": False, "ratio": 0.3}, headers=headers)

    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert other_payload.status_code == 409
    assert client.app.state.store.list("", limit=1, offset=0)[1] == 1


def test_results_of_an_unfinished_or_unknown_job_are_clear_errors(client):
    assert client.get("/v1/jobs/nope").json() == {"error": {"code": "not_found", "message": "no job 'nope'"}}
    assert client.get("/v1/jobs/nope/model").status_code == 404
    key = {"Authorization": "Bearer a-client-key-of-our-own-1234"}
    assert client.get("/v1/jobs?limit=0", headers=key).json()["error"]["code"] == "invalid_request"


def test_openapi_documents_the_v1_routes(client):
    spec = client.get("/openapi.json").json()

    assert {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/model",
        "/v1/jobs/{job_id}/report",
        "/v1/jobs/{job_id}/plan",
        "/healthz",
        "/readyz",
    } <= set(spec["paths"])
    upload = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["required"] == ["model"]
    config = upload["schema"]["properties"]["config"]["contentSchema"]  # the JSON inside the form's text part
    finetune = config["properties"]["strategies"]["properties"]["recovery"]["properties"]["finetune"]
    assert finetune["properties"]["lr"] == config["properties"]["lr"] and finetune["additionalProperties"] is False
    assert set(config["properties"]) == set(PruneOptions.model_fields) | {"strategies"}
    assert client.get("/docs").status_code == 200


def test_a_data_driven_job_on_a_server_without_torch_is_a_422_before_any_job_exists(
    client, embedded_settings, monkeypatch
):
    monkeypatch.setattr("onnxprune.workers.capabilities.torch_installed", lambda: False)
    data = _npz(input=np.zeros((10, 3, 16, 16), np.float32))

    response = _post(client, config={"ratio": 0.3, "finetune_steps": 10}, data=data)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "missing_capability"
    assert "fine-tuning (finetune_steps) needs PyTorch" in error["message"]
    _assert_nothing_left(client, embedded_settings.data_dir)


def test_a_job_with_data_and_default_options_on_a_server_without_torch_is_a_422(client, embedded_settings, monkeypatch):
    """With data the default recovery is layer-wise reconstruction, which runs in PyTorch: refused at
    upload, never accepted to fail later as a retried internal error."""
    monkeypatch.setattr("onnxprune.workers.capabilities.torch_installed", lambda: False)
    data = _npz(input=np.zeros((10, 3, 16, 16), np.float32))

    response = _post(client, config={"ratio": 0.3}, data=data)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "missing_capability"
    assert "layer-wise reconstruction (the default recovery when data is given) needs PyTorch" in error["message"]
    _assert_nothing_left(client, embedded_settings.data_dir)
    with_no_recovery = _post(client, config={"ratio": 0.3, "recovery": "none", "benchmark": False}, data=data)
    assert with_no_recovery.status_code == 202, with_no_recovery.text  # magnitude pruning with data: no torch


def test_a_magnitude_job_needs_no_torch(client, monkeypatch):
    monkeypatch.setattr("onnxprune.workers.capabilities.torch_installed", lambda: False)

    assert _post(client, config={"ratio": 0.3, "benchmark": False}).status_code == 202


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_load_every_asset_from_the_server_itself(client, page):
    """Air-gapped servers: Swagger UI and ReDoc must not come from a public CDN."""
    import re

    html = client.get(page)

    assert html.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text) + re.findall(r"url: ?'([^']+)'", html.text)
    scripts = [a for a in assets if a.endswith((".js", ".css"))]
    assert scripts, html.text
    assert all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    assert "http://" not in html.text and "https://" not in html.text
    for asset in scripts:
        assert client.get(asset).status_code == 200, asset
