"""Hostile models (tests/support/hostile_models.py) are refused quickly, or folded harmlessly, with flat memory.

Each case runs the code a job or an upload runs on it (static validation, input shapes, the
upload check, constant folding) and measures how much the process's resident memory rose meanwhile
(sampled every 2 ms: a gigabyte cannot be filled in between) and how long it took. Unguarded,
these models cost 1.6 GB, 2.4 GB, 80 s of CPU or hours.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxprune.graphops.input_shapes as input_shapes
from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.fold_limits import FOLD_BUDGET_ELEMENTS, FOLD_MAX_ELEMENTS
from onnxprune.graphops.loading import ValidationLimits, validate_model
from onnxprune.graphops.prepare import prepare_model
from onnxprune.graphops.shapes import resolve_input_shapes
from onnxprune.service.errors import ApiError
from onnxprune.service.uploads import check_model
from onnxprune.workers.benchmark import make_inputs
from onnxprune.workers.options import PruneOptions
from tests.support import hostile_models as hostile

# A model that makes validation expand it (the failure these tests look for) takes minutes or memory:
# memory is measured; time only bounded, as a hang guard far above a loaded machine's noise (no
# wall-clock assertion in the default run, see README "Timing tests").
pytestmark = pytest.mark.timeout(120)

MAX_RSS_GROWTH = 300 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE


@dataclass
class Usage:
    peak_growth: int = 0


@contextmanager
def measured() -> Iterator[Usage]:
    """Peak RSS growth over the block (sampled from another thread)."""
    usage, done = Usage(), threading.Event()
    baseline = _rss()

    def sample() -> None:
        while not done.wait(0.002):
            usage.peak_growth = max(usage.peak_growth, _rss() - baseline)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield usage
    finally:
        done.set()
        sampler.join()
        usage.peak_growth = max(usage.peak_growth, _rss() - baseline)


def assert_cheap(usage: Usage) -> None:
    assert usage.peak_growth < MAX_RSS_GROWTH, f"RSS grew by {usage.peak_growth >> 20} MB"


@pytest.fixture(autouse=True, scope="module")
def _warm() -> None:
    """Import-time and first-call costs (onnxruntime's opset probe) are not the models' doing."""
    validate_model(hostile.literal_shape_bomb(side=4))
    prepare_model(hostile.literal_shape_bomb(side=4))


# ---- refused by the static checks ------------------------------------------------------------

STATIC_CASES = [
    # (id, builder, words the message must hold)
    ("3000 functions each calling the previous twice", hostile.function_chain, "more than 200000 nodes"),
    ("200 functions nested", lambda: hostile.function_chain(200, calls_per_function=1), "more than 64 levels"),
    ("Loop of 3e7 constant iterations", hostile.constant_loop, "constant trip count of 30000000"),
    ("ConstantOfShape of a literal 20000x20000", hostile.literal_shape_bomb, "would generate 400000000 elements"),
]


@pytest.mark.parametrize(("build", "words"), [c[1:] for c in STATIC_CASES], ids=[c[0] for c in STATIC_CASES])
def test_hostile_model_is_refused_by_validation_at_once(build: Callable[[], onnx.ModelProto], words: str) -> None:
    model = build()

    with measured() as usage, pytest.raises(ModelRejected) as info:
        validate_model(model)

    assert words in str(info.value)
    assert "limit" in str(info.value)
    assert_cheap(usage)


def test_the_same_structures_below_the_limits_pass_validation() -> None:
    validate_model(hostile.function_chain(12))  # 4,096 nodes once inlined
    validate_model(hostile.function_chain(60, calls_per_function=1))
    validate_model(hostile.constant_loop(1000))
    validate_model(hostile.literal_shape_bomb(side=1000))


def test_the_expansion_limit_is_the_node_limit() -> None:
    # F9 alone expands to 2**10 - 1 Relu nodes and their call nodes; one more doubling is too many.
    validate_model(hostile.function_chain(10), ValidationLimits(max_nodes=2100))
    with pytest.raises(ModelRejected, match="'F10' expands to more than 2100 nodes"):
        validate_model(hostile.function_chain(11), ValidationLimits(max_nodes=2100))


def test_functions_that_call_each_other_are_refused() -> None:
    model = hostile.function_chain(3, calls_per_function=1)
    model.functions[0].node[0].op_type = "F2"  # F0 -> F2 -> F1 -> F0

    with pytest.raises(ModelRejected, match="call themselves recursively"):
        validate_model(model)


# ---- input sizes -------------------------------------------------------------------------------

INPUT_CASES = [
    ("declared 1x3x8192x8192", hostile.declared_input, None, "1x3x8192x8192 has 201326592 elements"),
    ("configured batch 130000", hostile.symbolic_batch_model, hostile.HUGE_BATCH_SHAPES, "130000x3x32x32"),
]


@pytest.mark.parametrize(("build", "shapes", "words"), [c[1:] for c in INPUT_CASES], ids=[c[0] for c in INPUT_CASES])
def test_inputs_too_big_to_build_are_refused_before_any_is_built(build, shapes, words: str) -> None:
    model = build()

    for create in (resolve_input_shapes, make_inputs):
        with measured() as usage, pytest.raises(ModelRejected) as info:
            create(model, shapes)
        assert words in str(info.value)
        assert f"limit of {input_shapes.MAX_INPUT_ELEMENTS} per input" in str(info.value)
        assert_cheap(usage)


def test_the_input_limits_are_per_input_and_in_total(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(input_shapes, "MAX_INPUT_ELEMENTS", 3 * 32 * 32)
    monkeypatch.setattr(input_shapes, "MAX_TOTAL_INPUT_ELEMENTS", 3 * 32 * 32)
    model = hostile.symbolic_batch_model()

    assert resolve_input_shapes(model, {hostile.INPUT: [1, 3, 32, 32]}) == {hostile.INPUT: [1, 3, 32, 32]}
    with pytest.raises(ModelRejected, match="more than the limit of 3072 per input"):
        resolve_input_shapes(model, {hostile.INPUT: [2, 3, 32, 32]})
    monkeypatch.setattr(input_shapes, "MAX_INPUT_ELEMENTS", 10**6)
    with pytest.raises(ModelRejected, match="6144 elements in all, more than the limit of 3072"):
        resolve_input_shapes(model, {hostile.INPUT: [2, 3, 32, 32]})


def test_imagenet_batches_stay_within_the_input_limit() -> None:
    model = hostile.declared_input(("N", 3, 224, 224))

    assert resolve_input_shapes(model, {hostile.INPUT: [256, 3, 224, 224]})[hostile.INPUT][0] == 256


# ---- the upload check answers 422 -------------------------------------------------------------

UPLOAD_CASES = [
    ("3000 functions", hostile.function_chain, {}, "more than 200000 nodes"),
    ("Loop of 3e7", hostile.constant_loop, {}, "trip count"),
    ("literal ConstantOfShape", hostile.literal_shape_bomb, {}, "would generate"),
    ("declared 1x3x8192x8192", hostile.declared_input, {}, "201326592 elements"),
    ("configured batch 130000", hostile.symbolic_batch_model, {"input_shapes": hostile.HUGE_BATCH_SHAPES}, "130000"),
]


@pytest.mark.parametrize(("build", "config", "words"), [c[1:] for c in UPLOAD_CASES], ids=[c[0] for c in UPLOAD_CASES])
def test_upload_check_answers_422_with_flat_memory(tmp_path: Path, build, config: dict, words: str) -> None:
    path = tmp_path / "hostile.onnx"
    onnx.save(build(), path)

    with measured() as usage, pytest.raises(ApiError) as info:
        check_model(path, PruneOptions.model_validate(config), max_bytes=1 << 20)

    assert (info.value.status, info.value.code) == (422, "invalid_model")
    assert words in info.value.message
    assert_cheap(usage)


# ---- constant folding: evaluated only within bounds -------------------------------------------


def _ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


FOLD_CASES = [
    # (id, builder, an op that must stay unevaluated in the prepared model)
    ("ConstantOfShape through Abs, 1.6 GB", hostile.abs_shape_bomb, "ConstantOfShape"),
    ("the same, its value_info claiming 1x1", lambda: hostile.abs_shape_bomb(declared_small=True), "ConstantOfShape"),
    ("Loop of 3e7 through Abs", lambda: hostile.constant_loop(through_abs=True), "Loop"),
    ("If on a constant, its branch the Abs bomb", hostile.branch_bomb, "ConstantOfShape"),
    ("MatMul of 3.6e9 multiply-accumulates", hostile.constant_matmul, "MatMul"),
]


@pytest.mark.parametrize(("build", "kept"), [c[1:] for c in FOLD_CASES], ids=[c[0] for c in FOLD_CASES])
def test_folding_leaves_unbounded_constant_subgraphs_unevaluated(build, kept: str) -> None:
    model = build()
    validate_model(model)  # nothing static catches these

    with measured() as usage:
        prepared = prepare_model(model)

    assert kept in _ops(prepared)
    assert_cheap(usage)


def test_all_folding_together_stays_within_the_budget() -> None:
    side = int(FOLD_MAX_ELEMENTS**0.5)  # each generator just under the per-tensor cap
    count = 2 * FOLD_BUDGET_ELEMENTS // side**2  # twice what the budget lets evaluate
    model = hostile.generator_fan(count, side)

    with measured() as usage:
        prepared = prepare_model(model)

    left = _ops(prepared).count("ConstantOfShape")
    assert count // 2 <= left < count  # some folded, the rest left for run time
    assert_cheap(usage)


SMALL_CASES = [
    ("ConstantOfShape 64x64", lambda: hostile.literal_shape_bomb(side=64), "ConstantOfShape", False),
    ("MatMul 64x64", lambda: hostile.constant_matmul(side=64), "MatMul", False),
    ("ConstantOfShape through Abs 8x8", lambda: hostile.abs_shape_bomb(side=8), "ConstantOfShape", True),
    ("Loop of 10", lambda: hostile.constant_loop(10), "Loop", True),
    ("If on a constant, its branch 8x8", lambda: hostile.branch_bomb(8, through_abs=False), "ConstantOfShape", False),
]


@pytest.mark.parametrize(("build", "op", "kept"), [c[1:] for c in SMALL_CASES], ids=[c[0] for c in SMALL_CASES])
def test_small_constant_subgraphs_fold_or_stay_and_compute_the_same(build, op: str, kept: bool) -> None:
    """Below the bounds a generator folds; a Loop, or a shape no rule bounds, stays (at its small
    size it costs nothing at run time); either way the prepared model computes what the original did."""
    model = build()

    prepared = prepare_model(model)

    assert (op in _ops(prepared)) == kept
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    outputs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for m in (model, prepared)
    ]
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5)


def test_generated_calibration_inputs_stay_within_the_total_input_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxprune.workers.quantize import generated_inputs

    monkeypatch.setattr(input_shapes, "MAX_TOTAL_INPUT_ELEMENTS", 10 * 3 * 32 * 32)
    one = {hostile.INPUT: np.zeros((1, 3, 32, 32), np.float32)}

    assert generated_inputs(one, 256, seed=0)[hostile.INPUT].shape == (10, 3, 32, 32)
    assert generated_inputs(one, 4, seed=0)[hostile.INPUT].shape == (4, 3, 32, 32)
