"""Models with model-local functions are inlined (onnx.inliner) before the checker and the pruner see
them: they were refused at upload (domain "" failed onnx.checker, any other was "custom")."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graphops.loading import inline_local_functions, validate_model
from onnxprune.jobs.settings import Settings
from onnxprune.service.api import create_app
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import run_pipeline
from tests.support.oracle import run_model

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")


def function_model(domain: str) -> onnx.ModelProto:
    """x [1,3,8,8] -> Conv(8) -> ConvRelu(8), a local function of ``domain`` -> GlobalAveragePool -> y

    ConvRelu(a, w) = Relu(Conv(a, w)), its weight passed in from the graph's initializers.
    """
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w2")
    opsets = [helper.make_opsetid("", 13)]
    body = [
        helper.make_node("Conv", ["a", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["b"]),
    ]
    function = helper.make_function(domain, "ConvRelu", ["a", "w"], ["b"], body, opsets)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], name="first", pads=[1, 1, 1, 1]),
        helper.make_node("ConvRelu", ["h", "w2"], ["f"], name="call", domain=domain),
        helper.make_node("GlobalAveragePool", ["f"], ["y"], name="pool"),
    ]
    graph = helper.make_graph(
        nodes,
        "local_functions",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])],
        initializer=[w1, w2],
    )
    imports = opsets + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=imports, functions=[function])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("domain", ["", "local"], ids=["default-domain", "own-domain"])
def test_inlining_keeps_the_outputs_and_leaves_plain_ops(domain):
    model = function_model(domain)
    validate_model(model)
    inlined = inline_local_functions(model)
    onnx.checker.check_model(inlined, full_check=True)
    assert not inlined.functions and {n.op_type for n in inlined.graph.node} == {"Conv", "Relu", "GlobalAveragePool"}
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    # onnxruntime runs a function of its own domain; one in the default domain only once inlined
    reference = run_model(function_model("local"), {"x": x})[0]
    np.testing.assert_allclose(run_model(inlined, {"x": x})[0], reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("domain", ["", "local"], ids=["default-domain", "own-domain"])
def test_a_model_with_local_functions_is_pruned(tmp_path, domain):
    onnx.save(function_model(domain), tmp_path / "m.onnx")
    options = PruneOptions(ratio=0.5, benchmark_runs=3)  # the benchmark runs the original too: inlined
    report = run_pipeline(tmp_path / "m.onnx", tmp_path / "out.onnx", options).report
    assert report.macs.after < report.macs.before  # the pipeline verified it against the masked original
    assert report.latency_ms is not None and report.latency_ms.after is not None


def test_a_model_with_local_functions_is_accepted_at_upload_and_its_job_succeeds(tmp_path):
    settings = Settings(redis_url=None, data_dir=tmp_path / "data", retry_delay_s=0)
    with TestClient(create_app(settings)) as client:
        created = client.post(
            "/v1/jobs",
            files={"model": ("m.onnx", function_model("local").SerializeToString())},
            data={"config": json.dumps({"ratio": 0.5, "benchmark": False})},
        )
        assert created.status_code == 202, created.text
        deadline = time.monotonic() + 120
        while (job := client.get(f"/v1/jobs/{created.json()['id']}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert job["status"] == "succeeded", job
