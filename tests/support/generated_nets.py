"""Small conv networks generated block by block (Hypothesis strategies) and built with ``onnx.helper``.

Networks are drawn block by block and built with ``onnx.helper``:

    input (1 x C x H x W) -> block -> block -> ... -> head
    block: conv [BN] act                       (k 1|3, stride 1|2; act from ACTIVATIONS)
         | x + (conv [BN] act)                  residual Add, shapes matching
         | Sum(x, conv(x), conv(x))             three-way Sum
         | Concat(conv_a(x), conv_b(x))         channel Concat of two branches
         | Concat(x, conv(x))                   dense-style Concat with the block input
         | depthwise conv [BN] act              group = channels
         | grouped conv [BN] act                group 2 or 4 (1 channel per group: a channel multiplier)
         | Split(x) -> conv each -> Concat      channel Split feeding two branches
         | Slice(x, channels 1:) -> conv        a channel Slice
         | x * sigmoid(conv(relu(conv(GAP x)))) Squeeze-Excitation (GAP or ReduceMean; Sigmoid or HardSigmoid)
         | Mul/Add/PRelu [InstanceNorm]          per-channel constants
         | MaxPool /2 | AveragePool 3x3
         | ConvTranspose k2 s2 act              plain, depthwise or grouped
         | Resize x2 -> conv
         | Concat(x, relu x) | x + conv(GAP x) | NHWC Transpose + bias | conv -> Split halves -> Add
         | Concat(conv_a x, conv_b x) on H -> MaxPool (2, 1)
         | conv|grouped conv -> channel shuffle (Reshape g x c/g, Transpose, Reshape) [-> grouped conv]
         | depthwise conv with channel multiplier 2 (group = channels, filters = 2 x channels)
    head: GAP -> Flatten -> Gemm | GAP -> Squeeze -> Gemm | Flatten -> Gemm | Reshape -> MatMul
        | Transpose NHWC -> Flatten -> MatMul | conv (the graph output)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from hypothesis import strategies as st

from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from tests.support.oracle import analyse, assert_prune_matches_oracle
from tests.support.zoo import GraphBuilder, float_input

ACTIVATIONS = ["Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish", "Tanh", "Swish"]


BLOCKS = [
    "conv", "residual", "sum", "concat", "dense", "depthwise", "grouped", "split", "slice", "se", "affine",
    "pool", "convtranspose", "resize", "self_concat", "broadcast_add", "nhwc", "halves_add",
    "spatial_concat", "shuffle", "multiplier",
]  # fmt: skip


HEADS = ["gap_gemm", "gap_squeeze_gemm", "flatten_gemm", "reshape_matmul", "nhwc_flatten_matmul", "conv"]


@dataclass(frozen=True)
class BlockSpec:
    kind: str
    channels: int  # output channels of the block's conv (per branch for concat/split)
    kernel: int
    stride: int
    batchnorm: bool
    activation: str
    groups: int = 1


@dataclass(frozen=True)
class NetSpec:
    in_channels: int
    size: int
    blocks: tuple[BlockSpec, ...]
    head: str
    weight_seed: int


block_specs = st.builds(
    BlockSpec,
    kind=st.sampled_from(BLOCKS),
    channels=st.integers(2, 10),
    kernel=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 1, 2]),
    batchnorm=st.booleans(),
    activation=st.sampled_from(ACTIVATIONS),
    groups=st.sampled_from([2, 4]),
)


net_specs = st.builds(
    NetSpec,
    in_channels=st.integers(1, 4),
    size=st.sampled_from([8, 12, 16]),
    blocks=st.lists(block_specs, min_size=1, max_size=6).map(tuple),
    head=st.sampled_from(HEADS),
    weight_seed=st.integers(0, 2**16),
)


class NetBuilder:
    """Turns a ``NetSpec`` into an ONNX model; blocks that do not fit the running shape adapt."""

    def __init__(self, spec: NetSpec) -> None:
        self.spec = spec
        self.g = GraphBuilder(spec.weight_seed)
        self.channels = spec.in_channels
        self.size = spec.size

    def build(self) -> onnx.ModelProto:
        x = "input"
        for block in self.spec.blocks:
            x = self.block(x, block)
        out = self.head(x)
        shape = [1, self.spec.in_channels, self.spec.size, self.spec.size]
        return self.g.model([float_input("input", shape)], out, 14, "generated")

    def activation(self, x: str, kind: str) -> str:
        g = self.g
        if kind == "Clip":
            low, high = g.constant("clip_min", _scalar(0.0)), g.constant("clip_max", _scalar(6.0))
            return g.node("Clip", [x, low, high])
        if kind == "LeakyRelu":
            return g.node("LeakyRelu", [x], alpha=0.1)
        if kind == "Swish":
            return g.node("Mul", [x, g.node("Sigmoid", [x])])
        return g.node(kind, [x])

    def conv_unit(self, x: str, cin: int, cout: int, block: BlockSpec, *, stride: int = 1, group: int = 1) -> str:
        kernel = block.kernel if group == 1 else 3
        y = self.g.conv(x, cin, cout, kernel, stride=stride, group=group, bias=not block.batchnorm)
        if block.batchnorm:
            y = self.g.batchnorm(y, cout)
        return self.activation(y, block.activation)

    def block(self, x: str, block: BlockSpec) -> str:
        """Append one block; returns its output and updates the running channels and size."""
        kind = block.kind
        if kind in ("split", "slice") and self.channels < 2:
            kind = "conv"
        if kind == "grouped" and self.channels % block.groups:
            kind = "conv"
        if kind in ("convtranspose", "resize") and self.size > 16:
            kind = "pool"
        y, cout, stride = getattr(self, f"_{kind}")(x, self.channels, block, block.stride if self.size >= 4 else 1)
        self.channels = cout
        self.size = (self.size - 1) // stride + 1 if stride > 0 else self.size * -stride
        return y

    # Each ``_kind`` returns (output, output channels, stride); a negative stride is an upsampling factor.

    def _conv(self, x, cin, block, stride):
        return self.conv_unit(x, cin, block.channels, block, stride=stride), block.channels, stride

    def _residual(self, x, cin, block, stride):
        return self.g.node("Add", [x, self.conv_unit(x, cin, cin, block)]), cin, 1

    def _sum(self, x, cin, block, stride):
        branches = [self.conv_unit(x, cin, cin, block) for _ in range(2)]
        return self.g.node("Sum", [x, *branches]), cin, 1

    def _concat(self, x, cin, block, stride):
        a = self.conv_unit(x, cin, block.channels, block, stride=stride)
        b = self.conv_unit(x, cin, block.channels + 1, block, stride=stride)
        return self.g.node("Concat", [a, b], axis=1), 2 * block.channels + 1, stride

    def _dense(self, x, cin, block, stride):
        y = self.g.node("Concat", [x, self.conv_unit(x, cin, block.channels, block)], axis=1)
        return y, cin + block.channels, 1

    def _depthwise(self, x, cin, block, stride):
        return self.conv_unit(x, cin, cin, block, stride=stride, group=cin), cin, stride

    def _grouped(self, x, cin, block, stride):
        # With one input channel per conv group this is a depthwise conv with a channel multiplier.
        cout = block.groups * max(1, block.channels // block.groups)
        return self.conv_unit(x, cin, cout, block, stride=stride, group=block.groups), cout, stride

    def _split(self, x, cin, block, stride):
        first = cin // 2
        sizes = self.g.constant("split", _int64([first, cin - first]))
        a, b = self.g.node("Split", [x, sizes], n_outputs=2, axis=1)
        a = self.conv_unit(a, first, block.channels, block, stride=stride)
        b = self.conv_unit(b, cin - first, block.channels, block, stride=stride)
        return self.g.node("Concat", [a, b], axis=1), 2 * block.channels, stride

    def _slice(self, x, cin, block, stride):
        g = self.g
        bounds = [g.constant(name, _int64([value])) for name, value in (("starts", 1), ("ends", cin), ("axes", 1))]
        y = g.node("Slice", [x, *bounds])
        return self.conv_unit(y, cin - 1, block.channels, block, stride=stride), block.channels, stride

    def _se(self, x, cin, block, stride):
        g = self.g
        reduced = max(1, cin // 2)
        if block.kernel == 1:
            pooled = g.node("GlobalAveragePool", [x])
        else:  # Keras style
            pooled = g.node("ReduceMean", [x], axes=[2, 3], keepdims=1)
        s = g.node("Relu", [g.conv(pooled, cin, reduced, 1)])
        gate = "HardSigmoid" if block.batchnorm else "Sigmoid"
        s = g.node(gate, [g.conv(s, reduced, cin, 1)])
        return g.node("Mul", [x, s]), cin, 1

    def _affine(self, x, cin, block, stride):
        """Per-channel constants: Mul [C,1,1], Add [1,C,1,1], PRelu slope [C,1,1], InstanceNormalization."""
        g = self.g
        y = g.node("Mul", [x, g.random("scale", [cin, 1, 1], 0.3, 1.0)])
        y = g.node("Add", [y, g.random("shift", [1, cin, 1, 1], 0.2)])
        y = g.node("PRelu", [y, g.constant("slope", g.rng.uniform(0.05, 0.5, (cin, 1, 1)).astype(np.float32))])
        if block.batchnorm:
            scale = g.constant("in_scale", g.rng.uniform(0.5, 1.5, cin).astype(np.float32))
            y = g.node("InstanceNormalization", [y, scale, g.random("in_bias", [cin], 0.2)])
        return y, cin, 1

    def _pool(self, x, cin, block, stride):
        if stride == 2:
            return self.g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2]), cin, 2
        return self.g.node("AveragePool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), cin, 1

    def _convtranspose(self, x, cin, block, stride):
        """ConvTranspose k2 s2; plain, depthwise (group = channels) or grouped."""
        g = self.g
        if block.batchnorm:
            group, cout = cin, cin
        elif cin % block.groups == 0 and block.stride == 2:
            group, cout = block.groups, block.groups * max(1, block.channels // block.groups)
        else:
            group, cout = 1, block.channels
        weight = g.random("WT", [cin, cout // group, 2, 2], 0.5)
        bias = g.random("BT", [cout], 0.1)
        y = g.node("ConvTranspose", [x, weight, bias], kernel_shape=[2, 2], strides=[2, 2], group=group)
        return self.activation(y, block.activation), cout, -2

    def _self_concat(self, x, cin, block, stride):
        """Concat(x, relu(x)): every channel appears twice along the axis."""
        return self.g.node("Concat", [x, self.g.node("Relu", [x])], axis=1), 2 * cin, 1

    def _broadcast_add(self, x, cin, block, stride):
        """x + conv1x1(GAP(x)): a per-channel value broadcast over space."""
        g = self.g
        return g.node("Add", [x, g.conv(g.node("GlobalAveragePool", [x]), cin, cin, 1)]), cin, 1

    def _nhwc(self, x, cin, block, stride):
        """Transpose to NHWC, add a bias on the last axis, Transpose back (tf2onnx style)."""
        g = self.g
        y = g.node("Transpose", [x], perm=[0, 2, 3, 1])
        y = g.node("Add", [y, g.random("bias", [cin], 0.2)])
        return g.node("Transpose", [self.activation(y, block.activation)], perm=[0, 3, 1, 2]), cin, 1

    def _halves_add(self, x, cin, block, stride):
        """conv (2c) -> Split in halves -> Add: channel i is tied to channel i + c of one conv."""
        g = self.g
        half = max(1, block.channels // 2)
        y = self.conv_unit(x, cin, 2 * half, block)
        a, b = g.node("Split", [y, g.constant("split", _int64([half, half]))], n_outputs=2, axis=1)
        return g.node("Add", [a, b]), half, 1

    def _spatial_concat(self, x, cin, block, stride):
        """Concat(conv_a(x), conv_b(x)) along H, then MaxPool (2, 1) back: ties a's channels to b's."""
        g = self.g
        a, b = self.conv_unit(x, cin, block.channels, block), self.conv_unit(x, cin, block.channels, block)
        y = g.node("Concat", [a, b], axis=2)
        return g.node("MaxPool", [y], kernel_shape=[2, 1], strides=[2, 1]), block.channels, 1

    def _multiplier(self, x, cin, block, stride):
        """Depthwise with a channel multiplier (TF DepthwiseConv2D depth_multiplier): 2 while the
        network is narrow, 1 (plain depthwise) beyond 8 channels, so widths stay small."""
        cout = cin * (2 if cin <= 8 else 1)
        return self.conv_unit(x, cin, cout, block, stride=stride, group=cin), cout, stride

    def _shuffle(self, x, cin, block, stride):
        """ShuffleNet's channel shuffle after a (grouped, where the channels allow) conv; with
        batchnorm, a grouped conv reads the shuffled channels (ShuffleNet v1)."""
        g, groups = self.g, block.groups
        cout = groups * max(1, block.channels // groups)
        group = groups if cin % groups == 0 else 1
        y = self.conv_unit(x, cin, cout, block, stride=stride, group=group)
        size = (self.size - 1) // stride + 1
        split = g.constant("shape", _int64([1, groups, cout // groups, size, size]))
        y = g.node("Transpose", [g.node("Reshape", [y, split])], perm=[0, 2, 1, 3, 4])
        y = g.node("Reshape", [y, g.constant("shape", _int64([1, cout, size, size]))])
        if block.batchnorm:
            y = self.conv_unit(y, cout, cout, block, group=groups)
        return y, cout, stride

    def _resize(self, x, cin, block, stride):
        scales = self.g.constant("scales", np.array([1, 1, 2, 2], dtype=np.float32))
        y = self.g.node("Resize", [x, "", scales], mode="nearest")
        return self.conv_unit(y, cin, block.channels, block), block.channels, -2

    def head(self, x: str) -> str:
        g, spec = self.g, self.spec
        if spec.head == "conv":
            return g.conv(x, self.channels, 3, 1)
        if spec.head == "gap_gemm":
            x, features = g.node("GlobalAveragePool", [x]), self.channels
        elif spec.head == "gap_squeeze_gemm":
            features = self.channels
        else:
            features = self.channels * self.size * self.size
        if spec.head == "reshape_matmul":
            flat = g.node("Reshape", [x, g.constant("shape", _int64([1, -1]))])
            return g.node("MatMul", [flat, g.random("fc_W", [features, 5], 0.2)])
        if spec.head == "nhwc_flatten_matmul":  # tf2onnx: channels last before the flatten
            flat = g.node("Flatten", [g.node("Transpose", [x], perm=[0, 2, 3, 1])], axis=1)
            return g.node("MatMul", [flat, g.random("fc_W", [features, 5], 0.2)])
        if spec.head == "gap_squeeze_gemm":
            flat = g.node("Squeeze", [g.node("GlobalAveragePool", [x]), g.constant("axes", _int64([2, 3]))])
            return g.node("Gemm", [flat, g.random("fc_W", [features, 5], 0.2)], transB=0)
        flat = g.node("Flatten", [x], axis=1)
        return g.node("Gemm", [flat, g.random("fc_W", [5, features], 0.2), g.random("fc_B", [5], 0.1)], transB=1)


def _scalar(value: float) -> np.ndarray:
    return np.array(value, dtype=np.float32)


def _int64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# (criterion, criterion seed, ratio, round_to)
CHOICE = st.tuples(
    st.sampled_from(["random", "random", "l1", "l2"]),
    st.integers(0, 1000),
    st.sampled_from([0.0, 0.2, 0.5, 0.8]),
    st.sampled_from([1, 1, 2, 4]),
)


def prune_and_check(spec: NetSpec, choice: tuple[str, int, float, int]) -> None:
    """The property on one network: pruned by ``choice`` (criterion, criterion seed, ratio, round_to),
    it satisfies the masked-original oracle."""
    criterion, seed, ratio, round_to = choice
    model = NetBuilder(spec).build()
    analysed = analyse(model, {"input": [1, spec.in_channels, spec.size, spec.size]})
    scores = score_groups(analysed.dep, criterion, seed=seed)
    plan = select_by_ratio(analysed.dep, scores, ratio, round_to=round_to)

    assert_prune_matches_oracle(model, plan, analysed=analysed)
