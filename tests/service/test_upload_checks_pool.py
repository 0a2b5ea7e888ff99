"""Upload checks run in a pool of processes with a memory limit and a deadline, never in the API process;
names too long for a report are refused at upload."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper

from onnxprune.jobs.settings import Settings
from onnxprune.service.api import create_app
from onnxprune.service.uploads import MAX_NAME_CHARS
from tests.support.service_models import convnet

CONFIG = '{"ratio": 0.5, "benchmark": false}'


def _post(client: TestClient, model: onnx.ModelProto):
    return client.post("/v1/jobs", files={"model": ("m.onnx", model.SerializeToString())}, data={"config": CONFIG})


def _client(tmp_path, **settings) -> TestClient:
    return TestClient(create_app(Settings(redis_url=None, data_dir=tmp_path / "data", retry_delay_s=0, **settings)))


def with_unused_weight(model: onnx.ModelProto, megabytes: int) -> onnx.ModelProto:
    """``model`` carrying ``megabytes`` of random weights no node reads (checked, parsed and copied all the same)."""
    values = np.random.default_rng(0).standard_normal(megabytes * 2**18).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(values, "unused"))
    return model


def test_a_check_past_its_memory_limit_is_refused_and_the_api_goes_on(tmp_path):
    with _client(tmp_path, upload_check_memory_mib=512, max_upload_mb=200) as client:
        refused = _post(client, with_unused_weight(convnet(), 160))
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "invalid_model"
        assert "memory" in refused.json()["error"]["message"]
        assert _post(client, convnet()).status_code == 202  # a fresh pool checks the next upload


def test_a_check_past_its_deadline_is_refused_and_the_pool_is_replaced(tmp_path):
    with _client(tmp_path, upload_check_timeout_s=0.001) as client:
        refused = _post(client, convnet())
        assert refused.status_code == 422 and "took longer than this server's 0.001 s" in refused.text
        checks = client.app.state.upload_checks
        checks.timeout_s = 120.0
        try:
            assert _post(client, convnet()).status_code == 202
        finally:
            checks.timeout_s = 0.001  # the pool is shared by apps of this configuration in this process


@pytest.mark.parametrize("where", ["node", "tensor"])
def test_a_name_longer_than_the_limit_is_refused_at_upload(tmp_path, where):
    model = convnet()
    long = "$" + "x" * MAX_NAME_CHARS + "$"
    if where == "node":
        model.graph.node[0].name = long
    else:
        old = model.graph.node[0].output[0]
        for node in model.graph.node:
            node.input[:] = [long if name == old else name for name in node.input]
            node.output[:] = [long if name == old else name for name in node.output]
    with _client(tmp_path) as client:
        refused = _post(client, model)
    assert refused.status_code == 422, refused.text
    assert f"over the limit of {MAX_NAME_CHARS}" in refused.json()["error"]["message"]
