"""A small BatchNorm network whose statistics match its data, exported with BN nodes kept.

Random BN statistics (``zoo.randomize_batchnorm``) make re-estimating them on data look like damage;
here the running statistics are estimated on the same distribution the tests feed, as training would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.support import zoo
from tests.support.bn_net import samples, small_net


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = small_net()
    generator = torch.Generator().manual_seed(1)
    for layer in net.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.momentum = None  # cumulative: the exact statistics of the batches below
            with torch.no_grad():  # trained-looking scales and shifts (fresh ones are all 1 and 0)
                layer.weight.copy_(torch.rand(layer.num_features, generator=generator) + 0.5)
                layer.bias.copy_(torch.randn(layer.num_features, generator=generator) * 0.2)
    net.train()
    with torch.no_grad():
        for seed in range(4):
            net(torch.from_numpy(samples(64, 100 + seed)))
    path = tmp_path_factory.mktemp("small") / "small.onnx"
    return zoo.export_onnx(net, (1, 3, 12, 12), path, dynamic_batch=True, keep_batchnorm=True)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory, small_model) -> dict[str, Path]:
    """Inputs with labels from the model's own predictions (a learnable task), and without labels."""
    import onnxruntime as ort

    x = samples(160)
    logits = ort.InferenceSession(str(small_model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    directory = tmp_path_factory.mktemp("data")
    np.savez(directory / "labelled.npz", input=x, labels=logits.argmax(1).astype(np.int64))
    np.savez(directory / "unlabelled.npz", input=x)
    return {"labelled": directory / "labelled.npz", "unlabelled": directory / "unlabelled.npz"}


@pytest.fixture(scope="module")
def pruned(small_model, small_data):
    """The small net's data context (labelled, batches of 16) and the net with half of each group's
    channels removed by L1 norm: a model for fine-tuning to start from."""
    from onnxprune.graphops.scoring import score_groups
    from onnxprune.graphops.selection import select_by_ratio
    from onnxprune.graphops.surgery import apply_plan
    from onnxprune.roundtrip.context import build_context
    from tests.support.oracle import analyse

    analysed = analyse(small_model, {"input": [1, 3, 12, 12]})
    context = build_context(small_data["labelled"], analysed.prepared, None, batch_size=16, score_batches=2)
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.5)
    return context, apply_plan(analysed.dep, plan)
