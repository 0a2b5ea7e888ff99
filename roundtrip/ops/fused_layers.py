"""The layers onnxruntime's transformer optimizer fuses around attention (domain ``com.microsoft``):
residual-add + LayerNorm (SkipLayerNormalization, the RMS form SkipSimplifiedLayerNormalization),
the BERT embedding (EmbedLayerNormalization) and the GELU forms (BiasGelu, FastGelu, Gelu, QuickGelu).

Semantics follow onnxruntime's ContribOperators.md and its CPU kernels, which the tests compare
against; onnxruntime has no PyTorch form of them, hence written here.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F

from onnxprune.graphops.ops.base import CONTRIB_DOMAIN
from onnxprune.roundtrip.ops import OpContext, OpInputs, attrs, optional, register, required

_SKIP_NORMS = (f"{CONTRIB_DOMAIN}.SkipLayerNormalization", f"{CONTRIB_DOMAIN}.SkipSimplifiedLayerNormalization")


def _training_statistics(node: onnx.NodeProto) -> str | None:
    """onnxruntime's CPU kernel leaves the mean and inv_std_var outputs unset (they exist for training)."""
    if any(name for name in node.output[1:3]):
        return "its mean / inv_std_var outputs (onnxruntime's CPU kernel does not compute them either)"
    return None


@register(*_SKIP_NORMS, declines=_training_statistics)
def skip_layer_norm(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    """norm(input + skip + bias) * gamma (+ beta); output 3 is the sum the residual stream carries on."""
    x, skip, gamma = required(inputs, 0), required(inputs, 1), required(inputs, 2)
    simplified = node.op_type == "SkipSimplifiedLayerNormalization"
    beta = None if simplified else optional(inputs, 3)
    bias = optional(inputs, 3 if simplified else 4)
    total = x + skip if bias is None else x + skip + bias
    epsilon = attrs(node).number("epsilon", 1e-12)
    if simplified:
        y = total * torch.rsqrt(total.pow(2).mean(dim=-1, keepdim=True) + epsilon) * gamma
    else:
        y = F.layer_norm(total, total.shape[-1:], gamma, beta, epsilon)
    empty = torch.empty(0, dtype=total.dtype)
    return [y, empty, empty, total]


@register(f"{CONTRIB_DOMAIN}.EmbedLayerNormalization")
def embed_layer_norm(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    """LayerNorm(word[ids] + position[positions] + segment[segment_ids]); outputs: that, the mask
    index (the count of 1s of each row of ``mask``, zeros without a mask) and the sum before the norm."""
    ids = required(inputs, 0).long()
    segment_ids = optional(inputs, 1)
    words, positions = required(inputs, 2), required(inputs, 3)
    segments = optional(inputs, 4)
    gamma, beta = required(inputs, 5), required(inputs, 6)
    mask = optional(inputs, 7)
    position_ids = optional(inputs, 8)
    batch, sequence = ids.shape
    if position_ids is None:
        position_ids = torch.arange(sequence)
    total = F.embedding(ids, words) + F.embedding(position_ids.long(), positions).expand(batch, sequence, -1)
    if segment_ids is not None and segments is not None:
        total = total + F.embedding(segment_ids.long(), segments)
    y = F.layer_norm(total, total.shape[-1:], gamma, beta, attrs(node).number("epsilon", 1e-12))
    if mask is None:
        mask_index = torch.zeros(batch, dtype=torch.int32)
    else:
        mask_index = (mask == 1).sum(dim=1).to(torch.int32)
    return [y, mask_index, total]


@register(f"{CONTRIB_DOMAIN}.BiasGelu", f"{CONTRIB_DOMAIN}.Gelu")
def erf_gelu(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    """GELU's erf form, of ``A + B`` for BiasGelu."""
    x = required(inputs, 0)
    bias = optional(inputs, 1)
    return [F.gelu(x if bias is None else x + bias)]


@register(f"{CONTRIB_DOMAIN}.FastGelu")
def fast_gelu(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    """GELU's tanh form, 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), of ``X + bias``."""
    x = required(inputs, 0)
    bias = optional(inputs, 1)
    return [F.gelu(x if bias is None else x + bias, approximate="tanh")]


@register(f"{CONTRIB_DOMAIN}.QuickGelu")
def quick_gelu(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    """x * sigmoid(alpha x), alpha 1.702 unless the node says otherwise."""
    x = required(inputs, 0)
    return [x * torch.sigmoid(attrs(node).number("alpha", 1.702) * x)]
