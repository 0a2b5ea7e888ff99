"""A refit's ridge strength is the one of least error on rows held aside (``roundtrip.ridge``).

    fit rows (x, y)  --ridge_solve at each strength-->  W(s)  --error on held-aside rows-->  chosen s

Noisy targets on few rows call for a strong pull toward the prior (the weights as pruned); exact targets
on many rows for a weak one. The held-aside errors come from one eigendecomposition, and equal those of
each strength's own solve. A layer's refit keeps the default strength (RIDGE) when its refit beats the
weights as pruned on the held-aside samples and fits on at least as many samples as it has inputs, and
chooses among RIDGES otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxprune.roundtrip.executor import OnnxModule
from onnxprune.roundtrip.reconstruction import RIDGE, RIDGES, LayerFit, _Refit
from onnxprune.roundtrip.ridge import chosen_strength, held_aside_errors, ridge_solve


def problem(rows: int, noise: float, distance: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """y = x W + noise, W the prior moved by ``distance`` (per weight, at random); 400 rows held aside."""
    rng = np.random.default_rng(seed)
    inputs, outputs = 30, 6
    mixing = rng.standard_normal((inputs, inputs)) / np.sqrt(inputs)  # correlated inputs, as a layer's are
    prior = rng.standard_normal((inputs, outputs))
    truth = prior + distance * rng.standard_normal((inputs, outputs))

    def draw(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = rng.standard_normal((count, inputs)) @ mixing
        y = x @ truth + noise * rng.standard_normal((count, outputs))
        return torch.from_numpy(x).float(), torch.from_numpy(y).float()

    x, y = draw(rows)
    check_x, check_y = draw(400)
    return {
        "gram": (x.T @ x).double(),
        "cross": (x.T @ y).double(),
        "prior": torch.from_numpy(prior).float(),
        "rows": check_x,
        "targets": check_y,
    }


def direct_error(case: dict[str, torch.Tensor], strength: float, scale: torch.Tensor | None = None) -> float:
    solution = ridge_solve(case["gram"], case["cross"], strength, case["prior"]).float()
    factor = torch.ones(solution.shape[1]) if scale is None else scale
    residual = (case["rows"] @ solution - case["targets"]) * factor
    return float(residual.pow(2).sum() / (case["targets"] * factor).pow(2).sum())


def test_noisy_targets_on_few_rows_choose_a_strong_pull_toward_the_prior():
    case = problem(rows=40, noise=3.0, distance=0.05)

    errors = held_aside_errors(**case, strengths=RIDGES)
    chosen = chosen_strength(errors, RIDGES)

    assert chosen >= 0.1
    assert direct_error(case, chosen) < 0.7 * direct_error(case, min(RIDGES))  # the weak pull overfits the noise


def test_exact_targets_on_many_rows_choose_the_weakest_pull():
    case = problem(rows=2000, noise=0.0, distance=1.0)

    errors = held_aside_errors(**case, strengths=RIDGES)

    assert chosen_strength(errors, RIDGES) == min(RIDGES)
    assert errors == sorted(errors)  # every stronger pull is further from the truth


@pytest.mark.parametrize("scaled", [False, True])
def test_the_held_aside_errors_are_those_of_each_strengths_own_solve(scaled):
    case = problem(rows=60, noise=1.0, distance=0.3)
    scale = torch.linspace(0.1, 2.0, 6) if scaled else None

    errors = held_aside_errors(**case, strengths=RIDGES, column_scale=scale)

    assert errors == pytest.approx([direct_error(case, s, scale) for s in RIDGES], rel=1e-4)


def test_a_tie_goes_to_the_stronger_pull():
    assert chosen_strength([0.5, 0.2, 0.2, 0.9], [1e-3, 1e-2, 1e-1, 1.0]) == 1e-1


def one_layer(weight: np.ndarray) -> onnx.ModelProto:
    """x [N, T, 8] -> MatMul W (8 -> 3) -> y"""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        "one_layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 3])],
        [numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def refit_on(noise: float, fit_samples: int, ridges: Sequence[float] = RIDGES) -> LayerFit:
    """The refit of a layer whose target is its own output (as pruned) moved toward a truth, plus ``noise``:
    what a layer's removed inputs add that its kept ones cannot explain; 40 samples held aside."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 3))
    truth = torch.from_numpy(weight + 0.3 * rng.standard_normal((8, 3))).float()
    model = one_layer(weight)
    module, (node,) = OnnxModule(model).eval(), model.graph.node
    refit = _Refit(module, node, None, RIDGE, ridges)
    for samples, check in ((fit_samples, False), (40, True)):
        x = torch.from_numpy(rng.standard_normal((samples, 4, 8))).float()
        refit.add(x, x @ truth + noise * torch.from_numpy(rng.standard_normal((samples, 4, 3))).float(), check=check)
    return refit.solve()


def test_a_refit_that_carries_over_keeps_the_default_strength():
    fit = refit_on(noise=0.0, fit_samples=40)

    assert fit.kept and fit.ridge == RIDGE


def test_a_refit_that_overfits_at_the_default_strength_takes_the_one_the_held_aside_samples_choose():
    fixed = refit_on(noise=1.0, fit_samples=2, ridges=())  # 8 rows for 8 weights per output, noisy

    fit = refit_on(noise=1.0, fit_samples=2)

    assert not fixed.kept and fixed.ridge == RIDGE  # at the default the refit loses to the weights as pruned
    assert fit.ridge is not None and fit.ridge > RIDGE
    assert fit.kept and fit.error_after < 0.95 * fit.error_before  # a stronger pull helps where the default did not
