"""The checks that stand between a pruned model and the user: a result that fails one is never written.

The oracle: the original with the removed channels' weights zeroed in every op that reads them
(``graphops.masking``) must compute what the pruned model computes. After recovery, the model with
its new weights written back must compute in onnxruntime what the PyTorch executor computed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from graphops.dependency import DependencyGraph
from graphops.errors import GraphOpsError
from graphops.masking import mask_removed_channels
from graphops.plan import PruningPlan
from workers.benchmark import make_inputs, run_model
from workers.sandbox import RunnerLimits

# The oracle's tolerance at run time: float32 sums in a different order stay far below it.
ORACLE_RTOL = 1e-3


class VerificationFailed(GraphOpsError):
    """The pruned model does not match what it must match: an onnxprune bug, not the user's."""


def relative_error(reference: np.ndarray, actual: np.ndarray) -> float:
    """Max absolute difference relative to the largest magnitude of ``reference`` (0 for empty)."""
    if not reference.size:
        return 0.0
    scale = max(float(np.max(np.abs(reference))), 1e-12)
    return float(np.max(np.abs(np.asarray(actual, np.float64) - reference))) / scale


def check_outputs_match(expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], *, what: str,
                        against: str, rtol: float = ORACLE_RTOL) -> None:
    """Every output of ``expected`` is in ``actual`` with its shape and within ``rtol``."""
    for name, reference in expected.items():
        got = actual.get(name)
        if got is None or got.shape != reference.shape:
            raise VerificationFailed(f"{what} output '{name}' has shape {None if got is None else got.shape}, "
                                     f"{against} gave {reference.shape}")
        error = relative_error(reference, got)
        if not error <= rtol:
            raise VerificationFailed(f"{what} output '{name}' deviates from {against} (relative error {error:.2e})")


def check_model(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise VerificationFailed(f"pruned model fails onnx.checker: {str(exc).splitlines()[0]}") from exc


def verify_against_oracle(dep: DependencyGraph, plan: PruningPlan, pruned: onnx.ModelProto, workdir: Path,
                          input_shapes: Mapping[str, list[int]], *, seed: int, limits: RunnerLimits) -> Path:
    """Check ``pruned`` (onnx.checker, then the oracle); returns the path it was written to in ``workdir``."""
    check_model(pruned)
    pruned_path, masked_path = workdir / "candidate.onnx", workdir / "masked.onnx"
    pruned_path.write_bytes(pruned.SerializeToString())
    masked_path.write_bytes(mask_removed_channels(dep, plan).SerializeToString())
    inputs = make_inputs(dep.model, input_shapes, seed)
    check_outputs_match(run_model(masked_path, inputs, limits=limits), run_model(pruned_path, inputs, limits=limits),
                        what="pruned model", against="the oracle")
    return pruned_path


def verify_write_back(model: onnx.ModelProto, path: Path, inputs: Mapping[str, np.ndarray],
                      expected: Mapping[str, np.ndarray], *, limits: RunnerLimits) -> None:
    """The recovered model, written to ``path``, computes in onnxruntime what the executor computed."""
    check_model(model)
    path.write_bytes(model.SerializeToString())
    check_outputs_match(expected, run_model(path, inputs, limits=limits), what="fine-tuned model",
                        against="the PyTorch executor (the write-back is wrong)")
