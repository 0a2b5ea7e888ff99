"""Fused attention: onnxruntime's com.microsoft Attention (packed QKV weight), MultiHeadAttention,
GroupQueryAttention, and ONNX's own Attention (opset 23).

Semantics follow onnxruntime's ContribOperators.md, its CPU kernels (how each mask form becomes an
additive bias) and the ONNX operator spec; the tests compare each against onnxruntime. None of these
ops has a PyTorch twin to call (``scaled_dot_product_attention`` takes neither onnxruntime's mask
index forms nor its filter value), hence the small core ``_attend`` written here. Self-attention
without a KV cache is what pruning meets in encoder exports; a KV cache, rotary embeddings and the
rarer mask layouts are declined by name.
"""

from __future__ import annotations

import math

import onnx
import torch

from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.ops.base import CONTRIB_DOMAIN
from onnxprune.roundtrip.ops import OpContext, OpInputs, attrs, optional, register, required

_LOWEST = torch.finfo(torch.float32).min  # onnxruntime's CPU kernels mask causal positions with it


def _given(node: onnx.NodeProto, slots: dict[int, str], outputs: dict[int, str]) -> str | None:
    """The first named optional input or output that ``node`` uses, as a reason to decline it."""
    for index, what in slots.items():
        if index < len(node.input) and node.input[index]:
            return what
    for index, what in outputs.items():
        if index < len(node.output) and node.output[index]:
            return what
    return None


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[batch, sequence, heads * size] -> [batch, heads, sequence, size]."""
    batch, sequence, width = x.shape
    return x.reshape(batch, sequence, heads, width // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, sequence, size = x.shape
    return x.transpose(1, 2).reshape(batch, sequence, heads * size)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bias: torch.Tensor | None, softcap: float = 0.0
) -> torch.Tensor:
    """softmax(softcap(scale Q K^T) + bias) V over [batch, heads, sequence, size]; K and V heads repeated for
    grouped queries (query head h reads KV head h // (heads / kv_heads))."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap > 0:  # before the mask, as onnxruntime applies it: masked keys stay masked
        scores = softcap * torch.tanh(scores / softcap)
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _causal(bias: torch.Tensor | None, queries: int, keys: int) -> torch.Tensor:
    """``bias`` with every key after its query (upper-left aligned) set to the lowest float."""
    future = torch.ones(queries, keys, dtype=torch.bool).triu(1)
    base = torch.zeros(1, 1, queries, keys) if bias is None else bias
    return base.masked_fill(future, _LOWEST)


def _mask_index_bias(mask: torch.Tensor, batch: int, queries: int, keys: int, filter_value: float) -> torch.Tensor:
    """An additive [batch, 1, queries, keys] bias from onnxruntime's mask_index forms: key lengths
    [batch] (right padding), end then start positions [2 * batch] (left padding), or a raw 0/1 mask
    [batch, keys] or [batch, queries, keys] (0 masked); masked keys get ``filter_value``."""
    positions = torch.arange(keys)
    if mask.dim() == 1 and mask.shape[0] in (batch, 2 * batch):
        keep = positions[None, :] < mask[:batch, None]
        if mask.shape[0] == 2 * batch:
            keep &= positions[None, :] >= mask[batch:, None]
        keep = keep[:, None, None, :]
    elif mask.dim() == 2 and tuple(mask.shape) == (batch, keys):
        keep = (mask > 0)[:, None, None, :]
    elif mask.dim() == 3 and tuple(mask.shape) == (batch, queries, keys):
        keep = (mask > 0)[:, None, :, :]
    else:
        raise ModelRejected(
            f"attention mask of shape {list(mask.shape)} (batch {batch}, {keys} keys): the round trip runs key "
            "lengths [batch], end and start positions [2 * batch] and raw 0/1 masks [batch, keys] or "
            "[batch, queries, keys]"
        )
    bias = torch.zeros(keep.shape)
    return bias.masked_fill(~keep, filter_value).expand(batch, 1, queries, keys)


def _contrib_bias(
    node: onnx.NodeProto, mask: torch.Tensor | None, extra: torch.Tensor | None, batch: int, queries: int, keys: int
) -> torch.Tensor | None:
    """The additive bias of a com.microsoft attention: its mask form, causal positions, attention_bias."""
    a = attrs(node)
    bias = None
    if mask is not None:
        bias = _mask_index_bias(mask, batch, queries, keys, a.number("mask_filter_value", -10000.0))
    if a.integer("unidirectional", 0):
        bias = _causal(bias, queries, keys)
    if extra is not None:
        bias = extra if bias is None else bias + extra
    return bias


def _packed_declines(node: onnx.NodeProto) -> str | None:
    a = attrs(node)
    for flag in ("do_rotary", "past_present_share_buffer"):
        if a.integer(flag, 0):
            return f"{flag}=1 (rotary embeddings or a shared KV-cache buffer)"
    return _given(node, {4: "a past KV cache", 6: "past_sequence_length (a KV cache)"}, {})


@register(f"{CONTRIB_DOMAIN}.Attention", declines=_packed_declines)
def packed_attention(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    """Q | K | V = input @ weights + bias (split by qkv_hidden_sizes, else in thirds), then attention;
    the optional ``present`` output stacks K and V as [2, batch, heads, sequence, size]."""
    x, weights = required(inputs, 0), required(inputs, 1)
    bias, mask, extra = optional(inputs, 2), optional(inputs, 3), optional(inputs, 5)
    a = attrs(node)
    heads = a.integer("num_heads")
    total = weights.shape[1]
    sizes = a.integers("qkv_hidden_sizes", [total // 3] * 3)
    projected = torch.matmul(x, weights) if bias is None else torch.matmul(x, weights) + bias
    q, k, v = (_split_heads(part, heads) for part in torch.split(projected, sizes, dim=-1))
    batch, queries = x.shape[0], x.shape[1]
    scale = a.number("scale", 1.0 / math.sqrt(q.shape[-1]))
    context = _attend(q, k, v, scale, _contrib_bias(node, mask, extra, batch, queries, k.shape[2]))
    outputs = [_merge_heads(context)]
    if len(node.output) > 1 and node.output[1]:
        outputs.append(torch.stack([k, v]))
    return outputs


def _multi_head_declines(node: onnx.NodeProto) -> str | None:
    cache = {6: "a past key (KV cache)", 7: "a past value (KV cache)", 8: "past_sequence_length (a KV cache)",
             9: "cache_indirection (beam search)"}  # fmt: skip
    return _given(node, cache, {3: "the qk output"})


@register(f"{CONTRIB_DOMAIN}.MultiHeadAttention", declines=_multi_head_declines)
def multi_head_attention(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    """Attention on projected Q [batch, sequence, hidden], K, V (plus the projections' ``bias``)."""
    query, key, value = required(inputs, 0), optional(inputs, 1), optional(inputs, 2)
    bias, mask, extra = optional(inputs, 3), optional(inputs, 4), optional(inputs, 5)
    heads = attrs(node).integer("num_heads")
    if key is None or value is None or query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
        raise ModelRejected(
            f"node '{node.name}': the round trip runs MultiHeadAttention on 3-D query, key and value, not packed "
            "QKV / KV (which onnxruntime's CPU kernel does not run either) nor keys already split into heads"
        )
    if bias is not None:
        widths = [query.shape[-1], key.shape[-1], value.shape[-1]]
        query, key, value = (t + b for t, b in zip((query, key, value), torch.split(bias, widths)))
    q, k, v = _split_heads(query, heads), _split_heads(key, heads), _split_heads(value, heads)
    a = attrs(node)
    scale = a.number("scale", 1.0 / math.sqrt(q.shape[-1]))
    context = _attend(q, k, v, scale, _contrib_bias(node, mask, extra, q.shape[0], q.shape[2], k.shape[2]))
    return [_merge_heads(context), k, v]


def _group_query_declines(node: onnx.NodeProto) -> str | None:
    a = attrs(node)
    if a.integer("do_rotary", 0):
        return "do_rotary=1 (rotary embeddings)"
    if a.integer("local_window_size", -1) > 0:
        return "a local attention window (local_window_size)"
    if a.number("softcap", 0.0) != 0.0 or a.integer("smooth_softmax", 0):
        return "softcap or smooth_softmax"
    cache = {3: "a past key (KV cache)", 4: "a past value (KV cache)", 7: "a rotary cos cache",
             8: "a rotary sin cache", 9: "position_ids (rotary)", 10: "attention_bias", 11: "head_sink"}  # fmt: skip
    return _given(node, cache, {3: "the qk output"})


@register(f"{CONTRIB_DOMAIN}.GroupQueryAttention", declines=_group_query_declines)
def group_query_attention(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    """Causal attention of num_heads query heads over kv_num_heads K, V heads (Q, K, V separate or
    packed along the last axis), each batch row's keys limited to ``seqlens_k + 1`` (right padding);
    the present key and value are K and V split into heads (no past)."""
    query, key, value = required(inputs, 0), optional(inputs, 1), optional(inputs, 2)
    seqlens = required(inputs, 5)
    a = attrs(node)
    heads, kv_heads = a.integer("num_heads"), a.integer("kv_num_heads")
    if key is None or value is None:
        size = query.shape[-1] // (heads + 2 * kv_heads)
        query, key, value = torch.split(query, [heads * size, kv_heads * size, kv_heads * size], dim=-1)
    q, k, v = _split_heads(query, heads), _split_heads(key, kv_heads), _split_heads(value, kv_heads)
    batch, queries, keys = q.shape[0], q.shape[2], k.shape[2]
    lengths = seqlens.reshape(-1).long() + 1
    keep = torch.arange(keys)[None, :] < lengths[:, None]
    bias = torch.zeros(batch, 1, 1, keys).masked_fill(~keep[:, None, None, :], _LOWEST)
    scale = a.number("scale", 0.0)
    context = _attend(q, k, v, scale or 1.0 / math.sqrt(q.shape[-1]), _causal(bias, queries, keys))
    return [_merge_heads(context), k, v]


def _onnx_attention_declines(node: onnx.NodeProto) -> str | None:
    cache = {4: "a past key (KV cache)", 5: "a past value (KV cache)", 6: "nonpad_kv_seqlen"}
    return _given(node, cache, {3: "the qk_matmul_output output"})


@register("Attention", declines=_onnx_attention_declines)
def onnx_attention(node: onnx.NodeProto, inputs: OpInputs, ctx: OpContext) -> list[torch.Tensor]:
    """ONNX Attention (opset 23) on 4-D Q, K, V [batch, heads, sequence, size] or 3-D ones split by
    q_num_heads / kv_num_heads; attn_mask bool (True attends) or added; is_causal upper-left
    aligned; softcap before the mask. Output in Q's rank."""
    query, key, value = required(inputs, 0), required(inputs, 1), required(inputs, 2)
    mask = optional(inputs, 3)
    a = attrs(node)
    three_d = query.dim() == 3
    if three_d:
        q = _split_heads(query, a.integer("q_num_heads"))
        k, v = _split_heads(key, a.integer("kv_num_heads")), _split_heads(value, a.integer("kv_num_heads"))
    else:
        q, k, v = query, key, value
    queries, keys = q.shape[2], k.shape[2]
    bias = None
    if mask is not None:
        bias = torch.zeros(mask.shape).masked_fill(~mask, _LOWEST) if mask.dtype == torch.bool else mask.float()
        if bias.shape[-1] != keys:
            raise ModelRejected(
                f"node '{node.name}': attn_mask has {bias.shape[-1]} keys, K has {keys} (a mask shorter than the "
                "keys, which onnxruntime refuses too)"
            )
    if a.integer("is_causal", 0):
        bias = _causal(bias, queries, keys)
    scale = a.number("scale", 1.0 / math.sqrt(q.shape[-1]))
    context = _attend(q, k, v, scale, bias, a.number("softcap", 0.0))
    outputs = [_merge_heads(context) if three_d else context]
    if len(node.output) > 1:
        outputs += [k, v]
    return outputs
