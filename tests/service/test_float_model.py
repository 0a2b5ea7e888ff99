"""A job with ``quantize`` returns the quantized model as its model and keeps the float pruned model
downloadable (``GET /v1/jobs/{id}/model?variant=float``), in the embedded mode (a real uvicorn process)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import typer
from typer.testing import CliRunner

from onnxprune.jobs.files import FLOAT_MODEL, MODEL
from onnxprune.service.cli_service import register
from onnxprune.service.client import PruneClient, ServiceError
from onnxprune.workers.fileio import file_sha256, float_output_path
from tests.support.service_models import convnet, save
from tests.support.service_oracle import assert_matches_masked_original

QUANTIZED = {"ratio": 0.5, "round_to": 1, "benchmark": False, "quantize": "int8"}


def run(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    return session.run(None, {"input": x})[0]


def quantized(path: Path) -> bool:
    return any(node.op_type == "QuantizeLinear" for node in onnx.load(path).graph.node)


def test_a_quantized_job_returns_the_int8_model_and_keeps_the_float_one(start_api, embedded_env, tmp_path):
    server = start_api(embedded_env)
    source = save(convnet(c1=16, c2=32), tmp_path / "convnet.onnx")

    with PruneClient(server.url) as client:
        job = client.wait(client.submit(source, QUANTIZED)["id"], poll_s=0.1, timeout=180)
        final = client.download_model(job["id"], tmp_path / "final.onnx")
        floating = client.download_model(job["id"], tmp_path / "float.onnx", variant="float")  # SHA-256 checked
        plan = client.plan(job["id"])
    float_link = httpx.get(f"{server.url}{job['links']['float_model']}")

    assert job["links"]["float_model"] == f"/v1/jobs/{job['id']}/model?variant=float"
    assert quantized(final) and not quantized(floating)
    assert file_sha256(final) == job["output_sha256"]
    assert file_sha256(floating) == job["report"]["quantization"]["float_output_sha256"]
    assert float_link.status_code == 200 and float_link.headers["X-Content-SHA256"] == file_sha256(floating)
    assert 'filename="' + job["id"] + '.float.onnx"' in float_link.headers["content-disposition"]
    assert_matches_masked_original(source, floating, plan)  # the float model is the oracle-checked one
    a, b = run(final), run(floating)  # both load and run; int8 stays close to the float pruned model
    assert a.shape == b.shape == (1, 10)
    assert float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.95


def test_a_job_that_did_not_quantize_has_no_float_variant(start_api, embedded_env, model_path, tmp_path):
    server = start_api(embedded_env)
    with PruneClient(server.url) as client:
        job = client.wait(client.submit(model_path, {"ratio": 0.5, "round_to": 1, "benchmark": False})["id"])
        try:
            client.download_model(job["id"], tmp_path / "float.onnx", variant="float")
        except ServiceError as refused:
            error = refused
    wrong = httpx.get(f"{server.url}/v1/jobs/{job['id']}/model", params={"variant": "int4"})

    assert job["links"]["float_model"] is None
    assert error.status == 404 and "did not quantize" in str(error)
    assert not (tmp_path / "float.onnx").exists()
    assert wrong.status_code == 422 and "variant" in wrong.json()["error"]["message"]


def test_cli_submit_with_quantize_writes_both_models(start_api, embedded_env, tmp_path):
    server = start_api(embedded_env)
    source = save(convnet(c1=16, c2=32), tmp_path / "convnet.onnx")
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # typer runs a lone command without its name; keep names explicit
    out = tmp_path / "small.onnx"

    done = CliRunner().invoke(
        app,
        ["submit", str(source), "--server", server.url, "--ratio", "0.5", "--round-to", "1"]
        + ["--no-benchmark", "--quantize", "int8", "-o", str(out)],
    )

    assert done.exit_code == 0, done.output
    assert quantized(out) and not quantized(float_output_path(out))
    assert f"{float_output_path(out)} (float, pruned)" in done.output
    run(out), run(float_output_path(out))


def test_the_published_float_model_is_where_the_pipeline_writes_it():
    assert float_output_path(Path(MODEL)).name == FLOAT_MODEL == "model.float.onnx"
