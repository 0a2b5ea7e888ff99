"""Every shared real model runs the whole round trip: prune, one fine-tuning step through the PyTorch
executor (distillation from the original, on synthetic inputs: no matching data exists for most of
them), write-back, and onnxruntime computing what the executor computed.

The executor runs the *prepared* graph the pipeline prunes (constants folded, shapes known), never the
raw export: a raw export's run-time shape subgraphs (Shape -> Gather -> Reshape) are not executor material.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from onnxprune.graphops.surgery import apply_plan
from onnxprune.roundtrip.data import Dataset
from onnxprune.roundtrip.executor import ExecutorError, OnnxModule
from onnxprune.roundtrip.objective import make_objective
from onnxprune.roundtrip.training import finetune, outputs_on
from onnxprune.roundtrip.writeback import changed_initializers, write_back
from tests.support.oracle import random_feeds, relative_error, run_model
from tests.support.real_models import PIXEL_INPUTS, REAL_MODEL_CASES, analysed_real

pytestmark = pytest.mark.integration  # the pipeline, the CLI or a sandbox, in processes of their own

RTOL = 1e-4
# Big inputs or many nodes: seconds to tens of seconds each on 2 shared cores.
SLOW = {
    "winml_style_mosaic.onnx",
    "light_resnet50.onnx",
    "yolox_nano.onnx",
    "ultraface_version-RFB-320.onnx",
    "paddle_ch_ppocr_mobile_v2.0_cls_infer.onnx",
}
PARAMS = [c.param(*([pytest.mark.slow] if c.file in SLOW else [])) for c in REAL_MODEL_CASES]


def synthetic_dataset(prepared, input_shapes, file: str, count: int) -> Dataset:
    rng = np.random.default_rng(0)
    feeds = random_feeds(prepared, input_shapes)
    arrays = {}
    for name, one in feeds.items():
        shape = (count, *one.shape[1:])
        arrays[name] = (rng.uniform(0, 255, shape) if file in PIXEL_INPUTS else rng.standard_normal(shape)).astype(
            one.dtype
        )
    return Dataset(arrays, None)


@pytest.mark.parametrize("case", PARAMS)
def test_pruned_real_model_takes_a_distillation_step_and_writes_back_what_the_executor_computes(case):
    analysed = analysed_real(case)
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.3)
    pruned = apply_plan(analysed.dep, plan)
    # One sample, one step: what is checked is that the step runs and is written back, not what it learns
    # (the 720x720 style-transfer model and ResNet-50 take seconds a sample in the executor).
    data = synthetic_dataset(analysed.prepared, analysed.input_shapes, case.file, count=1)
    objective = make_objective(analysed.prepared, next(data.batches(1)), use_labels=False)
    student = OnnxModule(pruned)
    if any(name in student.statistics_names for name in student.trainable_names):
        pytest.fail("a BatchNorm statistic is also a trainable weight")

    losses = finetune(student, objective, data, steps=1, lr=1e-4, batch_size=1).losses
    tuned = write_back(pruned, student)

    assert len(losses) == 1 and np.isfinite(losses[0])
    if plan.keep:  # something was pruned: the student differs from its teacher, so the step moved weights
        assert changed_initializers(pruned, tuned)
    feeds = next(data.batches(1)).inputs
    expected = outputs_on(student, feeds)
    actual = run_model(tuned, feeds)
    for want, got in zip(expected.values(), actual):
        assert got.shape == want.shape
        assert relative_error(want, got) < RTOL


def test_an_op_failing_at_run_time_is_an_executor_error_never_the_users(tmp_path, monkeypatch):
    """Our fault: the CLI exits 1 and the service retries the job (it is no ModelRejected)."""
    from onnxprune.graphops.errors import ModelRejected
    from onnxprune.roundtrip.ops import _OPS, _load
    from tests.support import zoo

    _load()
    model = zoo.export_onnx(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()), (1, 3, 8, 8), tmp_path / "m.onnx"
    )
    import onnx

    module = OnnxModule(onnx.load(model))

    def broken(node, inputs, ctx):
        raise TypeError("reshape() missing 1 required positional arguments")

    monkeypatch.setitem(_OPS, "Relu", broken)
    with pytest.raises(ExecutorError, match="failed in the PyTorch executor") as error:
        module.run({"input": np.zeros((1, 3, 8, 8), np.float32)})
    assert not isinstance(error.value, ModelRejected)
