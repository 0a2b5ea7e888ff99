"""Every zoo architecture (``tests/support/zoo.py``) as a case: how to build it and at which input size."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from tests.support import zoo
from tests.support.oracle import Analysed, analyse


@dataclass(frozen=True)
class ZooCase:
    name: str
    build: Callable[[], object]  # an nn.Module (exported at ``input_shape``) or an onnx.ModelProto
    input_shape: tuple[int, ...]
    keep_batchnorm: bool = False

    def export(self, directory: Path) -> Path:
        path = directory / f"{self.name}.onnx"
        torch.manual_seed(0)
        built = self.build()
        if isinstance(built, onnx.ModelProto):
            onnx.save(built, path)
            return path
        module = zoo.randomize_batchnorm(built, seed=1)
        return zoo.export_onnx(module, self.input_shape, path, keep_batchnorm=self.keep_batchnorm)


ZOO_CASES = [
    ZooCase("vgg16_bn", lambda: zoo.vgg16_bn(width=0.125), (1, 3, 32, 32)),
    ZooCase("vgg16_bn_unfolded", lambda: zoo.vgg16_bn(width=0.0625), (1, 3, 32, 32), keep_batchnorm=True),
    ZooCase("resnet18", lambda: zoo.resnet18(10, width_multiplier=0.125), (1, 3, 32, 32)),
    ZooCase("resnet18_unfolded", lambda: zoo.resnet18(10, width_multiplier=0.125), (1, 3, 32, 32), keep_batchnorm=True),
    ZooCase("resnet50", lambda: zoo.resnet50(10, width_multiplier=0.0625), (1, 3, 32, 32)),
    ZooCase("mobilenet_v2", lambda: zoo.mobilenet_v2(width_multiplier=0.25), (1, 3, 32, 32)),
    ZooCase(
        "mobilenet_v2_unfolded", lambda: zoo.mobilenet_v2(width_multiplier=0.25), (1, 3, 32, 32), keep_batchnorm=True
    ),
    ZooCase("densenet_block", lambda: zoo.densenet_block(), (1, 3, 16, 16)),
    ZooCase("densenet_block_unfolded", lambda: zoo.densenet_block(), (1, 3, 16, 16), keep_batchnorm=True),
    ZooCase("se_swish_conv", lambda: zoo.se_swish_block(), (1, 3, 16, 16)),
    ZooCase("se_swish_linear", lambda: zoo.se_swish_block(se_linear=True), (1, 3, 16, 16)),
    ZooCase("unet_small", lambda: zoo.unet_small(), (1, 3, 32, 32)),
    ZooCase("grouped_conv", lambda: zoo.grouped_conv_net(), (1, 3, 16, 16)),
    ZooCase("depthwise_multiplier", lambda: zoo.depthwise_multiplier_net(), (1, 3, 16, 16)),
    ZooCase("grouped_deconv", lambda: zoo.grouped_deconv_net(), (1, 3, 16, 16)),
    ZooCase("shufflenet_v2_block", lambda: zoo.shufflenet_v2_block(), (1, 3, 16, 16)),
    ZooCase("shufflenet_v1_block", lambda: zoo.shufflenet_v1_block(), (1, 3, 16, 16)),
    ZooCase("split_concat", lambda: zoo.split_net(merge="concat"), (1, 3, 16, 16)),
    ZooCase("split_add", lambda: zoo.split_net(merge="add"), (1, 3, 16, 16)),
    ZooCase("chunk_add_halves", lambda: zoo.split_net(merge="add_halves"), (1, 3, 16, 16)),
    ZooCase("layernorm", lambda: zoo.layernorm_net(norm="layernorm"), (1, 3, 16, 16)),
    ZooCase("groupnorm", lambda: zoo.layernorm_net(norm="groupnorm"), (1, 3, 16, 16)),
    ZooCase("nhwc_transpose", zoo.nhwc_transpose_model, (1, 16, 16, 3)),
    ZooCase("prelu_instancenorm", zoo.prelu_instancenorm_model, (1, 3, 16, 16)),
    ZooCase("hardswish_hardsigmoid", zoo.hardswish_hardsigmoid_model, (1, 3, 16, 16)),
    ZooCase("leakyrelu_pool_pad", zoo.leakyrelu_pool_pad_model, (1, 3, 16, 16)),
    ZooCase("constant_node_weights", zoo.constant_node_weights_model, (1, 3, 16, 16)),
]
CASES_BY_NAME = {case.name: case for case in ZOO_CASES}

_ANALYSED: dict[str, Analysed] = {}


def analysed_zoo(name: str) -> Analysed:
    """Each zoo model exported and analysed once per test process (a torch export takes seconds); the oracle
    and the executor tests read the same one, and none changes it (surgery and the executor work on copies)."""
    if name not in _ANALYSED:
        case = CASES_BY_NAME[name]
        with tempfile.TemporaryDirectory(prefix="onnxprune-test-zoo-") as directory:
            _ANALYSED[name] = analyse(case.export(Path(directory)), {"input": list(case.input_shape)})
    return _ANALYSED[name]
