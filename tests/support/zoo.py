"""Architectures built in code, for the pruning tests and benchmarks.

Two kinds of builders live here:

* plain ``torch.nn`` modules (no torchvision), exported with :func:`export_onnx`; widths are
  arguments so tests stay fast while the benchmark can ask for the real sizes;
* ``onnx.helper`` graphs for layouts and ops that PyTorch never emits (NHWC with Transposes as
  tf2onnx writes it, weights behind Constant nodes, PRelu/InstanceNormalization, ...).

Every builder is deterministic given ``torch.manual_seed`` (torch ones) or its ``seed`` argument
(onnx ones). Weights are random, never downloaded.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running stats and affine params, so no BN is an identity.

    Freshly built BNs have mean 0, var 1, weight 1, bias 0: a surgery that forgot to slice a BN
    would still look right on them.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                n = layer.num_features
                layer.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                layer.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                if layer.affine:
                    layer.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    layer.bias.copy_(torch.randn(n, generator=generator) * 0.2)
            elif isinstance(layer, (nn.LayerNorm, nn.GroupNorm)) and layer.weight is not None:
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) + 0.5)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.2)
    return module


def export_onnx(
    module: nn.Module,
    input_shape: tuple[int, ...],
    path: Path,
    *,
    opset: int = 17,
    dynamic_batch: bool = False,
    keep_batchnorm: bool = False,
) -> Path:
    """Export ``module`` in eval mode to ``path`` (input ``input``, output ``output``).

    Uses the TorchScript exporter (``dynamo=False``): the torch.export-based one needs
    onnxscript, which is not installed. In eval mode that exporter folds each BatchNorm into the
    Conv before it; ``keep_batchnorm=True`` keeps BatchNormalization nodes in the graph (their
    running stats arrive through Identity nodes), as older exporters wrote them.
    """
    path = Path(path)
    module = module.eval()
    example = torch.randn(*input_shape)
    dynamic_axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    training = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            do_constant_folding=True,
            training=training,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes=dynamic_axes,
        )
    return path


def _scaled(channels: int, width: float, minimum: int = 4) -> int:
    return max(minimum, int(round(channels * width)))


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


# ---------------------------------------------------------------------------------------------
# VGG
# ---------------------------------------------------------------------------------------------

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def vgg16_bn(num_classes: int = 10, width: float = 0.125) -> nn.Module:
    """VGG-16 with BN for 32x32 inputs; no last pool, so Flatten->Gemm sees C x 2 x 2 blocks.

    input 32x32 -> [conv-bn-relu]x2 -> pool ... [conv-bn-relu]x3 (2x2) -> Flatten -> Linear-ReLU-Dropout
    -> Linear-ReLU-Dropout -> Linear
    """
    layers: list[nn.Module] = []
    cin = 3
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            cout = _scaled(int(item), width)
            layers.append(_conv_bn_relu(cin, cout))
            cin = cout
    hidden = _scaled(4096, width / 8, minimum=16)
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(cin * 2 * 2, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(hidden, num_classes),
    )


# ---------------------------------------------------------------------------------------------
# ResNet
# ---------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """x -> conv3x3-bn-relu -> conv3x3-bn -> (+ shortcut) -> relu; shortcut conv1x1-bn on a stride or width change."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """x -> conv1x1 -> conv3x3 (stride) -> conv1x1 (x4) -> (+ shortcut) -> relu."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _projection(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """stem conv7x7/2-bn-relu-maxpool/2 -> 4 stages (stride 1,2,2,2) -> GAP -> Flatten -> Linear."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int,
        width_multiplier: float,
    ) -> None:
        super().__init__()
        base = _scaled(64, width_multiplier)
        self.stem = nn.Sequential(
            nn.Conv2d(3, base, 7, 2, 3, bias=False),
            nn.BatchNorm2d(base),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages: list[nn.Module] = []
        cin = base
        for index, blocks in enumerate(layers):
            planes = base * 2**index
            stride = 1 if index == 0 else 2
            stage: list[nn.Module] = []
            for block_index in range(blocks):
                stage.append(block(cin, planes, stride if block_index == 0 else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18(num_classes: int = 1000, width_multiplier: float = 1.0) -> nn.Module:
    """ResNet-18 (basic blocks [2, 2, 2, 2]); tests pass a small ``width_multiplier``."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, width_multiplier)


def resnet50(num_classes: int = 1000, width_multiplier: float = 1.0) -> nn.Module:
    """ResNet-50 (bottlenecks [3, 4, 6, 3]); the defaults are the real ImageNet-sized network."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, width_multiplier)


# ---------------------------------------------------------------------------------------------
# MobileNetV2
# ---------------------------------------------------------------------------------------------


def _divisible(value: float, divisor: int = 4) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """x -> [conv1x1 expand-bn-relu6] -> depthwise conv3x3-bn-relu6 -> conv1x1 project-bn -> (+ x)."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = cin * expand_ratio
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_residual else out


_MOBILENET_V2 = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def mobilenet_v2(num_classes: int = 10, width_multiplier: float = 0.25) -> nn.Module:
    """MobileNetV2: conv-bn-relu6 -> 17 inverted residuals (depthwise, ReLU6 = Clip) -> conv1x1 -> GAP -> Linear."""
    cin = _divisible(32 * width_multiplier)
    last = _divisible(1280 * width_multiplier)
    layers: list[nn.Module] = [nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(inplace=True)]
    for expand_ratio, channels, repeats, stride in _MOBILENET_V2:
        cout = _divisible(channels * width_multiplier)
        for index in range(repeats):
            layers.append(InvertedResidual(cin, cout, stride if index == 0 else 1, expand_ratio))
            cin = cout
    layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(last, num_classes),
    )


# ---------------------------------------------------------------------------------------------
# DenseNet block
# ---------------------------------------------------------------------------------------------


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, 2 * growth, 1, bias=False),
            nn.BatchNorm2d(2 * growth),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


def densenet_block(num_classes: int = 10, growth: int = 6, layers: int = 3) -> nn.Module:
    """One dense block and a transition, DenseNet style (pre-activation BN over concatenations).

    stem conv -> [x | BN-ReLU-conv1x1-BN-ReLU-conv3x3(x)] (Concat) x layers
              -> transition BN-ReLU-conv1x1-AvgPool -> GAP -> Flatten -> Linear
    """
    stem = 8
    modules: list[nn.Module] = [nn.Conv2d(3, stem, 3, 1, 1, bias=False)]
    cin = stem
    for _ in range(layers):
        modules.append(_DenseLayer(cin, growth))
        cin += growth
    transition = cin // 2
    modules += [
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, transition, 1, bias=False),
        nn.AvgPool2d(2, 2),
        nn.BatchNorm2d(transition),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(transition, num_classes),
    ]
    return nn.Sequential(*modules)


# ---------------------------------------------------------------------------------------------
# Squeeze-Excitation with Swish
# ---------------------------------------------------------------------------------------------


class Swish(nn.Module):
    """x * sigmoid(x), written out so it exports as Sigmoid -> Mul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(act(fc1(GAP(x))))), with 1x1 convs or with Linear layers and a view."""

    def __init__(self, channels: int, reduced: int, linear: bool) -> None:
        super().__init__()
        self.linear = linear
        if linear:
            self.fc1: nn.Module = nn.Linear(channels, reduced)
            self.fc2: nn.Module = nn.Linear(reduced, channels)
            self.act: nn.Module = nn.ReLU(inplace=True)
        else:
            self.fc1 = nn.Conv2d(channels, reduced, 1)
            self.fc2 = nn.Conv2d(reduced, channels, 1)
            self.act = Swish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear:
            batch, channels = x.shape[:2]
            s = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
            s = torch.sigmoid(self.fc2(self.act(self.fc1(s))))
            return x * s.view(batch, channels, 1, 1)
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class SESwishNet(nn.Module):
    """conv-bn-swish -> conv-bn-swish -> SE -> conv1x1-bn (+ residual from the first conv) -> swish -> GAP -> Linear."""

    def __init__(self, num_classes: int, width: int, se_linear: bool) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), Swish())
        self.expand = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * width), Swish()
        )
        self.se = SqueezeExcite(2 * width, max(2, width // 2), se_linear)
        self.project = nn.Sequential(nn.Conv2d(2 * width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.act = Swish()
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.project(self.se(self.expand(x)))
        y = self.act(x + y)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def se_swish_block(num_classes: int = 10, width: int = 8, se_linear: bool = False) -> nn.Module:
    """SE block with Swish; ``se_linear`` uses GAP->Flatten->Linear->ReLU->Linear->Sigmoid->Reshape->Mul."""
    return SESwishNet(num_classes, width, se_linear)


# ---------------------------------------------------------------------------------------------
# U-Net
# ---------------------------------------------------------------------------------------------


class UNetSmall(nn.Module):
    """Two-level encoder-decoder with ConvTranspose, Resize and Concat skips.

    x -> enc1 (w) -------------------------------------------------+
          -> pool -> enc2 (2w) --------------------------+          |
                       -> pool -> mid (4w) -> ConvT/2 -> Concat -> dec2 (2w)
                                     -> Upsample x2 (Resize) -> conv1x1 (w) -> Concat -> dec1 (w) -> conv1x1 -> out
    """

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(_conv_bn_relu(3, w), _conv_bn_relu(w, w))
        self.enc2 = nn.Sequential(_conv_bn_relu(w, 2 * w), _conv_bn_relu(2 * w, 2 * w))
        self.mid = nn.Sequential(_conv_bn_relu(2 * w, 4 * w), _conv_bn_relu(4 * w, 4 * w))
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2)
        self.dec2 = _conv_bn_relu(4 * w, 2 * w)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.reduce1 = nn.Conv2d(2 * w, w, 1)
        self.dec1 = _conv_bn_relu(2 * w, w)
        self.head = nn.Conv2d(w, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.reduce1(self.up1(d2)), e1], 1))
        return self.head(d1)


def unet_small(width: int = 8, out_channels: int = 2) -> nn.Module:
    """A small U-Net (see :class:`UNetSmall`); the output channels reach the graph output."""
    return UNetSmall(width, out_channels)


# ---------------------------------------------------------------------------------------------
# Grouped convs, Split, LayerNorm
# ---------------------------------------------------------------------------------------------


def grouped_conv_net(num_classes: int = 10, width: int = 16, groups: int = 4) -> nn.Module:
    """conv-bn-relu -> conv3x3 (groups=4)-bn-relu -> conv-bn-relu -> GAP -> Flatten -> Linear."""
    return nn.Sequential(
        _conv_bn_relu(3, width),
        nn.Conv2d(width, width, 3, 1, 1, groups=groups, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        _conv_bn_relu(width, width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


def depthwise_multiplier_net(num_classes: int = 10, width: int = 8, multiplier: int = 2) -> nn.Module:
    """A depthwise conv with a channel multiplier (TF ``DepthwiseConv2D(depth_multiplier=2)``).

    conv (w)-relu -> conv3x3 groups=w (w -> multiplier*w)-relu -> conv1x1 (w) -> GAP -> Flatten -> Linear
    """
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(width, multiplier * width, 3, 1, 1, groups=width),
        nn.ReLU(),
        nn.Conv2d(multiplier * width, width, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


def grouped_deconv_net(num_classes: int = 10, width: int = 8, groups: int = 2) -> nn.Module:
    """Grouped and depthwise ConvTranspose upsampling.

    conv (w)-relu -> ConvTranspose k2/2 groups=2 (w -> w)-relu -> ConvTranspose k2/2 groups=w (depthwise)-relu
    -> conv1x1 -> GAP -> Flatten -> Linear
    """
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 2, 1),
        nn.ReLU(),
        nn.ConvTranspose2d(width, width, 2, 2, groups=groups),
        nn.ReLU(),
        nn.ConvTranspose2d(width, width, 2, 2, groups=width),
        nn.ReLU(),
        nn.Conv2d(width, width, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


class SplitNet(nn.Module):
    """conv (2w) -> relu -> split on channels [w, w] -> conv on each half -> Concat or Add -> conv -> GAP -> Linear.

              +-> a (w) -> conv-relu --+
    conv (2w) +                        +-> Concat (2w) | Add (w) -> conv1x1 -> GAP -> Linear
              +-> b (w) -> conv ------+
    With ``merge="add_halves"`` the two halves are added to each other directly (chunk -> Add), which
    couples channel i with channel i + w of the first conv.
    """

    def __init__(self, num_classes: int, width: int, merge: str) -> None:
        super().__init__()
        if merge not in ("concat", "add", "add_halves"):
            raise ValueError(f"merge must be concat, add or add_halves, not {merge!r}")
        self.merge = merge
        self.width = width
        self.stem = nn.Sequential(nn.Conv2d(3, 2 * width, 3, 1, 1), nn.ReLU())
        self.branch_a = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.ReLU())
        self.branch_b = nn.Conv2d(width, width, 3, 1, 1)
        merged = 2 * width if merge == "concat" else width
        self.mix = nn.Conv2d(merged, width, 1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.merge == "add_halves":
            a, b = torch.chunk(x, 2, dim=1)
            y = a + b
        else:
            a, b = torch.split(x, [self.width, self.width], dim=1)
            a, b = self.branch_a(a), self.branch_b(b)
            y = torch.cat([a, b], 1) if self.merge == "concat" else a + b
        y = F.relu(self.mix(y))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def split_net(num_classes: int = 10, width: int = 8, merge: str = "concat") -> nn.Module:
    """Split/chunk on the channel axis feeding two branches (see :class:`SplitNet`)."""
    return SplitNet(num_classes, width, merge)


class LayerNormNet(nn.Module):
    """conv -> [permute NHWC -> LayerNorm(C) -> permute NCHW | GroupNorm] -> relu -> conv -> GAP -> Linear."""

    def __init__(self, num_classes: int, width: int, norm: str) -> None:
        super().__init__()
        if norm not in ("layernorm", "groupnorm"):
            raise ValueError(f"norm must be layernorm or groupnorm, not {norm!r}")
        self.norm_kind = norm
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1)
        self.norm = nn.LayerNorm(width) if norm == "layernorm" else nn.GroupNorm(2, width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.norm_kind == "layernorm":
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            x = self.norm(x)
        x = F.relu(self.conv2(F.relu(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def layernorm_net(num_classes: int = 10, width: int = 8, norm: str = "layernorm") -> nn.Module:
    """A channel LayerNorm (NHWC permute) or GroupNorm after the first conv: that group must freeze."""
    return LayerNormNet(num_classes, width, norm)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's interleaving of conv groups: view (g, c/g), swap, view back."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleV2Unit(nn.Module):
    """ShuffleNet v2 unit (Ma et al. 2018). Stride 1: split in halves, one half through
    conv1x1 -> dw3x3 -> conv1x1, concat, shuffle(2). Stride 2: both branches downsample."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        branch_in = cin if stride == 2 else cin // 2
        if stride == 2:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(),
            )
        self.branch2 = nn.Sequential(
            nn.Conv2d(branch_in, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


def shufflenet_v2_block(num_classes: int = 10, width: int = 8) -> nn.Module:
    """stem conv (w) -> v2 unit /2 (2w) -> v2 unit (2w) -> conv1x1 (2w) -> GAP -> Linear."""
    return nn.Sequential(
        _conv_bn_relu(3, width),
        ShuffleV2Unit(width, 2 * width, 2),
        ShuffleV2Unit(2 * width, 2 * width, 1),
        nn.Conv2d(2 * width, 2 * width, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


class ShuffleV1Unit(nn.Module):
    """ShuffleNet v1 unit (Zhang et al. 2018): grouped conv1x1 -> shuffle(g) -> dw3x3 -> grouped
    conv1x1, added to the input (stride 1) or concatenated with its average pool (stride 2)."""

    def __init__(self, cin: int, cout: int, groups: int, stride: int) -> None:
        super().__init__()
        self.stride, self.groups = stride, groups
        mid = cout // 4 * 2
        branch_out = cout - cin if stride == 2 else cout
        self.reduce = nn.Sequential(nn.Conv2d(cin, mid, 1, groups=groups, bias=False), nn.BatchNorm2d(mid), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid))
        self.expand = nn.Sequential(
            nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False), nn.BatchNorm2d(branch_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.depthwise(channel_shuffle(self.reduce(x), self.groups)))
        if self.stride == 2:
            return F.relu(torch.cat((F.avg_pool2d(x, 3, 2, 1), y), dim=1))
        return F.relu(x + y)


def shufflenet_v1_block(num_classes: int = 10, width: int = 8, groups: int = 2) -> nn.Module:
    """stem conv (w) -> v1 unit /2 (4w) -> v1 unit (4w) -> GAP -> Linear."""
    return nn.Sequential(
        _conv_bn_relu(3, width),
        ShuffleV1Unit(width, 4 * width, groups, 2),
        ShuffleV1Unit(4 * width, 4 * width, groups, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )


# ---------------------------------------------------------------------------------------------
# onnx.helper models
# ---------------------------------------------------------------------------------------------


class GraphBuilder:
    """Collects nodes and initializers with unique names; weights come from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counter = 0

    def name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter}"

    def constant(self, prefix: str, array: np.ndarray) -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def random(self, prefix: str, shape: Sequence[int], scale: float = 0.3, offset: float = 0.0) -> str:
        return self.constant(prefix, (self.rng.standard_normal(shape) * scale + offset).astype(np.float32))

    def node(self, op_type: str, inputs: Sequence[str], n_outputs: int = 1, **attrs: object) -> str | list[str]:
        node_name = self.name(op_type.lower())
        outputs = [f"{node_name}_out{i}" if n_outputs > 1 else f"{node_name}_out" for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=node_name, **attrs))
        return outputs if n_outputs > 1 else outputs[0]

    def conv(
        self, x: str, cin: int, cout: int, kernel: int = 3, *, bias: bool = True, group: int = 1, stride: int = 1
    ) -> str:
        weight = self.random(
            "W", [cout, cin // group, kernel, kernel], scale=1.0 / np.sqrt(cin // group * kernel * kernel)
        )
        inputs = [x, weight] + ([self.random("B", [cout], 0.1)] if bias else [])
        pads = [kernel // 2] * 4
        return self.node(
            "Conv", inputs, kernel_shape=[kernel, kernel], pads=pads, group=group, strides=[stride, stride]
        )

    def batchnorm(self, x: str, channels: int) -> str:
        """Inference-mode BatchNormalization with random stats (never an identity)."""
        scale = self.constant("bn_scale", self.rng.uniform(0.5, 1.5, channels).astype(np.float32))
        mean = self.random("bn_mean", [channels], 0.2)
        var = self.constant("bn_var", self.rng.uniform(0.5, 1.5, channels).astype(np.float32))
        return self.node(
            "BatchNormalization", [x, scale, self.random("bn_bias", [channels], 0.2), mean, var], epsilon=1e-5
        )

    def model(self, inputs: list[onnx.ValueInfoProto], output: str, opset: int, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, [], self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests.support.zoo"
        )
        model.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        output_info = next(info for info in inferred.graph.value_info if info.name == output)
        model.graph.output.append(output_info)
        onnx.checker.check_model(model, full_check=True)
        return model


def float_input(name: str, shape: Sequence[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def nhwc_transpose_model(seed: int = 0, width: int = 8) -> onnx.ModelProto:
    """tf2onnx style: NHWC tensors, each Conv wrapped in Transposes, bias added on the last axis.

    x NHWC (1x16x16x3) -> Transpose -> Conv -> Transpose -> Add bias[w] -> Relu
      -> Transpose -> Conv -> Transpose -> Add bias[w] -> Relu -> Transpose -> Conv (4) -> Transpose -> out NHWC
    """
    g = GraphBuilder(seed)
    x = "input"
    cin = 3
    for _ in range(2):
        nchw = g.node("Transpose", [x], perm=[0, 3, 1, 2])
        y = g.conv(nchw, cin, width, bias=False)
        nhwc = g.node("Transpose", [y], perm=[0, 2, 3, 1])
        biased = g.node("Add", [nhwc, g.random("bias", [width], 0.2)])
        x = g.node("Relu", [biased])
        cin = width
    nchw = g.node("Transpose", [x], perm=[0, 3, 1, 2])
    y = g.conv(nchw, cin, 4)
    out = g.node("Transpose", [y], perm=[0, 2, 3, 1])
    return g.model([float_input("input", [1, 16, 16, 3])], out, 13, "nhwc_transpose")


def prelu_instancenorm_model(seed: int = 0, width: int = 8) -> onnx.ModelProto:
    """x -> Conv -> InstanceNormalization -> PRelu (slope [w,1,1]) -> Conv -> InstanceNormalization -> PRelu -> Conv (4)."""
    g = GraphBuilder(seed)
    x, cin = "input", 3
    for _ in range(2):
        y = g.conv(x, cin, width)
        scale = g.constant("in_scale", g.rng.uniform(0.5, 1.5, width).astype(np.float32))
        y = g.node("InstanceNormalization", [y, scale, g.random("in_bias", [width], 0.2)], epsilon=1e-5)
        slope = g.constant("slope", g.rng.uniform(0.05, 0.5, (width, 1, 1)).astype(np.float32))
        x = g.node("PRelu", [y, slope])
        cin = width
    out = g.conv(x, cin, 4)
    return g.model([float_input("input", [1, 3, 16, 16])], out, 13, "prelu_instancenorm")


def hardswish_hardsigmoid_model(seed: int = 0, width: int = 8) -> onnx.ModelProto:
    """MobileNetV3 style: Conv -> HardSwish -> SE (GAP -> Conv1x1 -> Relu -> Conv1x1 -> HardSigmoid -> Mul)
    -> Conv -> HardSigmoid -> GAP -> Flatten -> Gemm."""
    g = GraphBuilder(seed)
    y = g.node("HardSwish", [g.conv("input", 3, width)])
    s = g.node("GlobalAveragePool", [y])
    s = g.node("Relu", [g.conv(s, width, width // 2, kernel=1)])
    s = g.node("HardSigmoid", [g.conv(s, width // 2, width, kernel=1)], alpha=1.0 / 6, beta=0.5)
    y = g.node("Mul", [y, s])
    y = g.node("HardSigmoid", [g.conv(y, width, width)])
    flat = g.node("Flatten", [g.node("GlobalAveragePool", [y])], axis=1)
    out = g.node("Gemm", [flat, g.random("fc_W", [5, width]), g.random("fc_B", [5], 0.1)], transB=1)
    return g.model([float_input("input", [1, 3, 16, 16])], out, 14, "hardswish_hardsigmoid")


def leakyrelu_pool_pad_model(seed: int = 0, width: int = 8) -> onnx.ModelProto:
    """x -> Conv -> LeakyRelu -> MaxPool -> Pad (spatial) -> Conv -> Dropout -> AveragePool -> Identity -> Conv (4)."""
    g = GraphBuilder(seed)
    y = g.node("LeakyRelu", [g.conv("input", 3, width)], alpha=0.1)
    y = g.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    pads = g.constant("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64))
    y = g.node("Pad", [y, pads, g.constant("pad_value", np.array(0.5, dtype=np.float32))], mode="constant")
    y = g.conv(y, width, width)
    y = g.node("Dropout", [y])
    y = g.node("AveragePool", [y], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=0)
    y = g.node("Identity", [y])
    out = g.conv(y, width, 4)
    return g.model([float_input("input", [1, 3, 16, 16])], out, 13, "leakyrelu_pool_pad")


def constant_node_weights_model(seed: int = 0, width: int = 8) -> onnx.ModelProto:
    """Conv weights and biases delivered by Constant nodes, the weight through an Identity.

    Constant(W1) -> Identity -> Conv1 (Constant(B1)) -> Relu -> Conv2 (Constant(W2), Constant(B2)) -> out
    """
    g = GraphBuilder(seed)

    def constant_node(prefix: str, array: np.ndarray) -> str:
        return g.node("Constant", [], value=numpy_helper.from_array(array.astype(np.float32), g.name(prefix)))

    w1 = g.node("Identity", [constant_node("W1", g.rng.standard_normal((width, 3, 3, 3)) * 0.3)])
    b1 = constant_node("B1", g.rng.standard_normal(width) * 0.1)
    y = g.node("Relu", [g.node("Conv", ["input", w1, b1], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
    w2 = constant_node("W2", g.rng.standard_normal((width, width, 3, 3)) * 0.2)
    b2 = constant_node("B2", g.rng.standard_normal(width) * 0.1)
    y = g.node("Relu", [g.node("Conv", [y, w2, b2], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
    out = g.conv(y, width, 4, kernel=1)
    return g.model([float_input("input", [1, 3, 16, 16])], out, 13, "constant_node_weights")


def db_text_detector(
    seed: int = 0, width: int = 8, head_bias: float = 0.0, sizes_from_shape: bool = False
) -> onnx.ModelProto:
    """A DB text detector (PP-OCR det) as paddle2onnx writes it: input [-1, 3, 'h', 'w'], a -1 batch.

        backbone: conv s2 -> c1 (/4) -> c2 (/8) -> c3 (/16) -> c4 (/32), Conv-BN-ReLU each
        FPN:      1x1 in-convs to 2w; top-down in3 + Resize(in4), in2 + Resize(out3), in1 + Resize(out2)
                  (nearest, scales 2); 3x3 convs to w/2 per scale, Resize x8 / x4 / x2 and Concat (2w channels)
        head:     Conv-BN-ReLU (w/2), ConvTranspose x2 -BN-ReLU, ConvTranspose x2 (1) + ``head_bias``, Sigmoid

    A negative ``head_bias`` saturates the probability map on inputs without text, as a trained
    detector's is on random ones. ``sizes_from_shape``: the first upsampling takes output sizes
    computed at run time (Concat of [N, C] of in4 and [H, W] of in3), as some exports write it.
    """
    g = GraphBuilder(seed)

    def conv_bn_relu(x: str, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> str:
        y = g.conv(x, cin, cout, kernel, bias=False, stride=stride)
        return g.node("Relu", [g.batchnorm(y, cout)])

    def resize(x: str, scale: float) -> str:
        scales = g.constant("scales", np.array([1, 1, scale, scale], dtype=np.float32))
        return g.node("Resize", [x, "", scales], mode="nearest")

    def shape_slice(x: str, start: int, end: int) -> str:
        bounds = [g.constant(n, np.array([v], dtype=np.int64)) for n, v in (("start", start), ("end", end))]
        return g.node("Slice", [g.node("Shape", [x]), *bounds])

    stem = conv_bn_relu("x", 3, width, stride=2)
    widths = [width, 2 * width, 3 * width, 4 * width]
    features, x, cin = [], stem, width
    for cout in widths:
        x = conv_bn_relu(x, cin, cout, stride=2)
        features.append(x)
        cin = cout
    inner = 2 * width
    ins = [g.conv(f, c, inner, kernel=1, bias=False) for f, c in zip(features, widths)]
    if sizes_from_shape:
        sizes = g.node("Concat", [shape_slice(ins[3], 0, 2), shape_slice(ins[2], 2, 4)], axis=0)
        up4 = g.node("Resize", [ins[3], "", "", sizes], mode="nearest")
    else:
        up4 = resize(ins[3], 2)
    out3 = g.node("Add", [ins[2], up4])
    out2 = g.node("Add", [ins[1], resize(out3, 2)])
    out1 = g.node("Add", [ins[0], resize(out2, 2)])
    quarter = inner // 4
    p = [g.conv(o, inner, quarter, bias=False) for o in (out1, out2, out3, ins[3])]
    fused = g.node("Concat", [p[0], resize(p[1], 2), resize(p[2], 4), resize(p[3], 8)], axis=1)
    head = conv_bn_relu(fused, inner, quarter)
    up_weight = g.random("Wt", [quarter, quarter, 2, 2], scale=0.5)
    head = g.node(
        "ConvTranspose", [head, up_weight, g.random("Bt", [quarter], 0.1)], kernel_shape=[2, 2], strides=[2, 2]
    )
    head = g.node("Relu", [g.batchnorm(head, quarter)])
    last = g.random("Wt", [quarter, 1, 2, 2], scale=0.5)
    logits = g.node("ConvTranspose", [head, last, g.constant("Bt", np.array([head_bias], np.float32))],
                    kernel_shape=[2, 2], strides=[2, 2])  # fmt: skip
    probability = g.node("Sigmoid", [logits])
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "h", "w"])
    return g.model([image], probability, 13, "db_text_detector")
