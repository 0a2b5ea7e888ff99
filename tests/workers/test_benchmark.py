"""onnxruntime in a sandboxed child: results, latency and fidelity, and hostile models that fail
with a clear error while the test process (the parent) carries on."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.workers.benchmark import benchmark, compare_outputs, make_inputs, run_model
from onnxprune.workers.sandbox import RunnerError, RunnerLimits, SandboxOutOfMemory, SandboxTimeout, run_in_child

pytestmark = pytest.mark.integration  # the pipeline, the CLI or a sandbox, in processes of their own

SMALL_LIMITS = RunnerLimits(memory_mib=1024, timeout_s=60)


def save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """x[N,3,8,8] -Conv(4x3x3x3, pad 1)-> Relu -> y; plus an int64 'ids' input -> Identity -> ids_out."""
    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
            helper.make_node("Identity", ["ids"], ["ids_out"]),
        ],
        "tiny",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [5]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("ids_out", TensorProto.INT64, None),
        ],
        initializer=[weight],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "tiny.onnx")


def test_inputs_are_deterministic_and_typed_per_input(tiny_model: Path) -> None:
    first, again = (
        make_inputs(tiny_model, {"x": [2, 3, 8, 8]}, seed=7),
        make_inputs(tiny_model, {"x": [2, 3, 8, 8]}, seed=7),
    )
    assert {name: (a.dtype, a.shape) for name, a in first.items()} == {
        "x": (np.float32, (2, 3, 8, 8)),
        "ids": (np.int64, (5,)),
    }
    assert all(np.array_equal(first[name], again[name]) for name in first)
    assert first["ids"].min() >= 0 and first["ids"].max() < 4
    assert not np.array_equal(first["x"], make_inputs(tiny_model, {"x": [2, 3, 8, 8]}, seed=8)["x"])


def test_run_model_matches_onnxruntime_in_process(tiny_model: Path) -> None:
    inputs = make_inputs(tiny_model, None, seed=0)
    outputs = run_model(tiny_model, inputs, limits=SMALL_LIMITS)
    expected = ort.InferenceSession(str(tiny_model), providers=["CPUExecutionProvider"]).run(None, inputs)
    assert list(outputs) == ["y", "ids_out"]
    np.testing.assert_allclose(outputs["y"], expected[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(outputs["ids_out"], expected[1])


def test_benchmark_of_a_model_against_itself(tiny_model: Path) -> None:
    result = benchmark(tiny_model, tiny_model, None, runs=12, warmup=2, limits=SMALL_LIMITS)
    for stats in (result.latency.before, result.latency.after):
        assert stats is not None and stats.runs == 12
        assert 0 < stats.p50 <= stats.p90 and stats.mean > 0
    assert (result.latency.threads, result.latency.warmup) == (1, 2)
    assert result.fidelity is not None
    assert result.fidelity.max_abs_diff == 0.0
    assert result.fidelity.cosine_similarity == pytest.approx(1.0)
    assert set(result.fidelity.outputs) == {"y", "ids_out"}


def test_benchmark_of_one_model_has_no_fidelity(tiny_model: Path) -> None:
    result = benchmark(tiny_model, None, {"x": [1, 3, 8, 8]}, runs=3, warmup=0, limits=SMALL_LIMITS)
    assert result.latency.after is None and result.fidelity is None
    assert result.latency.before.runs == 3


def test_fidelity_over_all_outputs_and_per_output() -> None:
    reference = {"a": np.array([1.0, 0.0], np.float32), "b": np.array([[0.0, 2.0]], np.float32)}
    candidate = {"a": np.array([1.0, 0.5], np.float32), "b": np.array([[0.0, 2.0]], np.float32)}
    fidelity = compare_outputs(reference, candidate)
    assert fidelity.max_abs_diff == 0.5
    # flattened: [1, 0, 0, 2] . [1, .5, 0, 2] = 5; norms sqrt(5) and sqrt(5.25)
    assert fidelity.cosine_similarity == pytest.approx(5 / np.sqrt(5 * 5.25))
    assert fidelity.outputs["b"] == {"max_abs_diff": 0.0, "cosine_similarity": pytest.approx(1.0)}
    assert fidelity.outputs["a"]["cosine_similarity"] == pytest.approx(1 / np.sqrt(1.25))


def test_fidelity_of_outputs_whose_shape_changed_is_infinite() -> None:
    fidelity = compare_outputs({"y": np.zeros((1, 4))}, {"y": np.zeros((1, 3))})
    assert (fidelity.max_abs_diff, fidelity.cosine_similarity) == (float("inf"), 0.0)


# ---- hostile models -------------------------------------------------------------------------


def constant_of_shape_model(path: Path) -> Path:
    """shape (graph input, int64[2]) -> ConstantOfShape(1.0): the size is only known at run time."""
    node = helper.make_node(
        "ConstantOfShape", ["shape"], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    )
    graph = helper.make_graph(
        [node],
        "blow",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def tile_model(path: Path) -> Path:
    """x[1,1024] -Tile(repeats: graph input)-> y: a small graph that asks for gigabytes."""
    graph = helper.make_graph(
        [helper.make_node("Tile", ["x", "repeats"], ["y"])],
        "tile",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024]),
            helper.make_tensor_value_info("repeats", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_a_runtime_allocation_over_the_memory_limit_is_a_clear_error(tmp_path: Path, tiny_model: Path) -> None:
    """2 GiB of ConstantOfShape output, and 2 GiB of Tile output, against a 1 GiB limit."""
    cases = [
        (constant_of_shape_model(tmp_path / "cos.onnx"), {"shape": np.array([16384, 32768], np.int64)}),
        (
            tile_model(tmp_path / "tile.onnx"),
            {"x": np.ones((1, 1024), np.float32), "repeats": np.array([512 * 1024, 1], np.int64)},
        ),
    ]
    for path, inputs in cases:
        with pytest.raises(  # a limit, not the model's fault as such: the job decides (workers.job_process)
            SandboxOutOfMemory, match="^onnxruntime exceeded the memory limit of 1024 MiB while running the model$"
        ):
            run_model(path, inputs, limits=SMALL_LIMITS)
    # the parent is intact and runs the next model
    assert run_model(tiny_model, make_inputs(tiny_model), limits=SMALL_LIMITS)["y"].shape == (1, 4, 8, 8)


@pytest.mark.timeout(120)  # a hang guard: the message proves the runner's own 1.5 s limit ended it
def test_a_benchmark_over_its_time_limit_times_out(tiny_model: Path) -> None:
    with pytest.raises(SandboxTimeout, match=r"^onnxruntime timed out after 1.5 s while running the model$"):
        benchmark(tiny_model, None, None, runs=10**8, warmup=0, limits=RunnerLimits(timeout_s=1.5))


def test_a_crashing_child_is_reported_with_its_signal() -> None:
    with pytest.raises(RunnerError, match=r"^onnxruntime crashed \(signal 6, SIGABRT\) while running the model$"):
        run_in_child(os.abort, limits=SMALL_LIMITS)


def test_an_error_inside_onnxruntime_comes_back_as_one_line(tmp_path: Path) -> None:
    path = tile_model(tmp_path / "tile.onnx")
    with pytest.raises(RunnerError, match="^onnxruntime could not run the model: ") as info:
        run_model(
            path, {"x": np.ones((1, 1024), np.float32), "repeats": np.array([1, 2, 3], np.int64)}, limits=SMALL_LIMITS
        )
    assert "\n" not in str(info.value)


def test_outputs_too_large_to_send_back_are_refused(tmp_path: Path) -> None:
    path = constant_of_shape_model(tmp_path / "cos.onnx")
    limits = RunnerLimits(memory_mib=1024, max_result_mib=1)
    with pytest.raises(RunnerError, match="outputs exceed the limit of 1 MiB"):
        run_model(path, {"shape": np.array([1024, 1024], np.int64)}, limits=limits)
