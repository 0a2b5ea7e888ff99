"""The PyTorch executor computes what onnxruntime computes, on every test architecture.

Each zoo model (``tests/support/zoo.py``) and each shared real model is run by ``OnnxModule`` and by
onnxruntime on the same inputs; outputs must agree within a relative error of 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxprune.roundtrip.executor import OnnxModule, build_executor
from tests.support.oracle import analyse, random_feeds, relative_error, run_model
from tests.support.real_models import PIXEL_INPUTS, REAL_MODEL_CASES, analysed_real
from tests.support.zoo_cases import ZOO_CASES, analysed_zoo

RTOL = 1e-4


def executor_outputs(module: OnnxModule, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in module.run(feeds)]


def assert_parity(prepared, feeds) -> None:
    expected = run_model(prepared, feeds)
    actual = executor_outputs(build_executor(prepared), feeds)
    assert len(actual) == len(expected)
    for want, got in zip(expected, actual):
        assert got.shape == want.shape
        assert relative_error(want, got) < RTOL


@pytest.mark.parametrize("case", ZOO_CASES, ids=[c.name for c in ZOO_CASES])
def test_executor_matches_onnxruntime_on_every_zoo_architecture(case):
    analysed = analysed_zoo(case.name)

    assert_parity(analysed.prepared, random_feeds(analysed.prepared, analysed.input_shapes))


# The style-transfer model runs at 720x720 (~10 s in each runtime on 2 cores): slow.
SHARED_PARAMS = [c.param(*([pytest.mark.slow] if "mosaic" in c.file else [])) for c in REAL_MODEL_CASES]


@pytest.mark.parametrize("case", SHARED_PARAMS)
def test_executor_matches_onnxruntime_on_every_shared_model(case):
    analysed = analysed_real(case)
    feeds = random_feeds(analysed.prepared, analysed.input_shapes)
    if case.file in PIXEL_INPUTS:
        feeds = {k: np.random.default_rng(0).uniform(0, 255, v.shape).astype(v.dtype) for k, v in feeds.items()}

    assert_parity(analysed.prepared, feeds)


def test_a_graph_exported_at_batch_one_runs_on_a_batch_sample_by_sample_equal():
    """se_swish_linear bakes batch 1 into a Reshape; the executor reads it as the batch."""
    case = next(c for c in ZOO_CASES if c.name == "se_swish_linear")
    analysed = analysed_zoo(case.name)
    batch = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    module = build_executor(analysed.prepared)

    together = executor_outputs(module, {"input": batch})[0]
    alone = np.concatenate([run_model(analysed.prepared, {"input": batch[i : i + 1]})[0] for i in range(5)])

    assert relative_error(alone, together) < RTOL


def test_weights_are_parameters_by_onnx_name_and_statistics_are_buffers():
    case = next(c for c in ZOO_CASES if c.name == "resnet18_unfolded")
    analysed = analysed_zoo(case.name)
    module = build_executor(analysed.prepared)
    bn = next(n for n in analysed.prepared.graph.node if n.op_type == "BatchNormalization")
    conv = next(n for n in analysed.prepared.graph.node if n.op_type == "Conv")

    trainable = module.named_trainable()
    assert conv.input[1] in trainable and bn.input[1] in trainable and bn.input[2] in trainable
    assert bn.input[3] in module.statistics_names and bn.input[4] in module.statistics_names
    assert not module.tensor(bn.input[3]).requires_grad


def test_batchnorm_in_training_mode_normalises_with_batch_statistics():
    case = next(c for c in ZOO_CASES if c.name == "resnet18_unfolded")
    analysed = analysed_zoo(case.name)
    module = build_executor(analysed.prepared)
    bn = next(n for n in analysed.prepared.graph.node if n.op_type == "BatchNormalization")
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    mean_before = module.tensor(bn.input[3]).clone()

    module.train()
    out = module.run({"input": x}, outputs=[bn.output[0]])[0]
    scale, shift = module.tensor(bn.input[1]).detach(), module.tensor(bn.input[2]).detach()
    normalised = (out.detach() - shift.view(1, -1, 1, 1)) / scale.view(1, -1, 1, 1)

    assert torch.allclose(normalised.mean(dim=(0, 2, 3)), torch.zeros(len(scale)), atol=1e-4)
    assert not torch.equal(module.tensor(bn.input[3]), mean_before)  # running stats moved


def test_an_op_without_implementation_is_refused_naming_the_node(tmp_path):
    from onnx import TensorProto, helper

    from onnxprune.graphops.errors import ModelRejected

    node = helper.make_node("NonMaxSuppression", ["x", "s"], ["y"], name="nms")
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [None, 3])],
    )

    with pytest.raises(ModelRejected, match="'nms' \\(NonMaxSuppression\\)"):
        OnnxModule(helper.make_model(graph))


@pytest.mark.parametrize("name", ["bert_style", "vit_style"])
def test_executor_matches_onnxruntime_on_decomposed_transformer_blocks(name):
    """Shape -> Gather (a 0-d index) -> Unsqueeze -> Concat -> Reshape into heads, Erf and tanh GELU,
    Softmax, MatMuls of two activations (``tests.support.transformer_models``)."""
    from tests.support import transformer_models

    model = getattr(transformer_models, name)()
    shapes = {"x": [2, 7, 32], "attention_mask": [2, 7]} if name == "bert_style" else {"x": [2, 9, 32]}
    analysed = analyse(model, shapes)

    assert_parity(analysed.prepared, random_feeds(analysed.prepared, analysed.input_shapes))


# (transform, input size, output size): ViT exports resize their 16x16 position embeddings bicubically.
CUBIC_RESIZE_CASES = [("half_pixel", 16, 37), ("pytorch_half_pixel", 9, 5), ("align_corners", 7, 12)]


@pytest.mark.parametrize(("transform", "size_in", "size_out"), CUBIC_RESIZE_CASES)
def test_cubic_resize_matches_onnxruntime(transform, size_in, size_out):
    """x [2, 3, in, in] -> Resize(sizes [2, 3, out, out], mode cubic, coefficient -0.75) -> y"""
    from onnx import TensorProto, helper, numpy_helper

    sizes = numpy_helper.from_array(np.array([2, 3, size_out, size_out], dtype=np.int64), "sizes")
    node = helper.make_node(
        "Resize", ["x", "", "", "sizes"], ["y"], mode="cubic", coordinate_transformation_mode=transform
    )
    graph = helper.make_graph(
        [node],
        "cubic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, size_in, size_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, size_out, size_out])],
        [sizes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, size_in, size_in)).astype(np.float32)}

    assert_parity(model, feeds)


NO_WARNING_SCRIPT = """
import warnings
import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxprune.roundtrip.ops import OpContext
from onnxprune.roundtrip.ops.tensor import constant_of_shape
import torch

value = numpy_helper.from_array(np.array([{value}], np.{dtype}), "value")  # raw bytes: a read-only array
node = helper.make_node("ConstantOfShape", ["shape"], ["y"], value=value)
warnings.simplefilter("error")
out = constant_of_shape(node, [torch.tensor([2, 3])], OpContext(opset=17))[0]
print(out.dtype, out.shape, out.reshape(-1)[0].item())
"""


@pytest.mark.parametrize(("value", "dtype", "printed"), [
    ("1.5", "float32", "torch.float32 torch.Size([2, 3]) 1.5"),
    ("7", "int64", "torch.int64 torch.Size([2, 3]) 7"),
])  # fmt: skip
def test_constant_of_shape_with_a_value_from_raw_bytes_runs_without_the_read_only_warning(value, dtype, printed):
    """torch warns once per process about a read-only array (``torch.from_numpy``), hence a fresh interpreter."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", NO_WARNING_SCRIPT.format(value=value, dtype=dtype)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == printed


def test_a_run_stopped_before_a_node_and_taken_on_gives_the_outputs_of_one_run():
    """Layer-wise reconstruction takes runs forward a layer at a time: stopping before a node keeps what
    later nodes read (the node's inputs among them), and going on gives what ``run`` gives."""
    analysed = analysed_zoo(ZOO_CASES[0].name)
    module = build_executor(analysed.prepared)
    feeds = random_feeds(analysed.prepared, analysed.input_shapes)
    middle = len(module.nodes) // 2
    node = module.nodes[middle]

    with torch.no_grad():
        execution = module.begin(feeds)
        module.advance(execution, middle)
        inputs = [execution.env.get(name) for name in node.input if name]
        module.advance(execution, len(module.nodes))
        stepped = [execution.env[name] for name in module.output_names]
        whole = module.run(feeds)

    assert execution.position == len(module.nodes) and all(tensor is not None for tensor in inputs)
    assert all(torch.equal(a, b) for a, b in zip(stepped, whole))
