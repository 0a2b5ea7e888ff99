"""The checks that stand between a pruned model and the user: a result that fails one is never written.

The oracle: the original with the removed channels' weights zeroed in every op that reads them
(``graphops.masking``) must compute what the pruned model computes. After recovery, the model with
its new weights written back must compute in onnxruntime what the PyTorch executor computed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphops.dependency import DependencyGraph
from graphops.errors import GraphOpsError
from graphops.masking import mask_removed_channels
from graphops.plan import PruningPlan
from workers.benchmark import make_inputs, run_model
from workers.output_compare import FLOAT32_RTOL, oracle_rtol, output_mismatch
from workers.sandbox import RunnerLimits

# The oracle's tolerance at run time for float32 models; float16 models get
# ``workers.output_compare.FLOAT16_RTOL`` (``oracle_rtol``).
ORACLE_RTOL = FLOAT32_RTOL


class VerificationFailed(GraphOpsError):
    """The pruned model does not match what it must match: an onnxprune bug, not the user's."""


def check_outputs_match(
    expected: Mapping[str, Any], actual: Mapping[str, Any], *, what: str, against: str, rtol: float = ORACLE_RTOL
) -> None:
    """Every output of ``expected`` is in ``actual`` with its shape and within ``rtol``; outputs
    of any kind compare by what they hold (``workers.output_compare``: string labels are not compared)."""
    for name, reference in expected.items():
        problem = output_mismatch(name, reference, actual.get(name), rtol)
        if problem is not None:
            raise VerificationFailed(f"{what} {problem} from {against}")


def check_model(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise VerificationFailed(f"pruned model fails onnx.checker: {str(exc).splitlines()[0]}") from exc


def verify_against_oracle(
    dep: DependencyGraph,
    plan: PruningPlan,
    pruned: onnx.ModelProto,
    workdir: Path,
    input_shapes: Mapping[str, list[int]],
    *,
    seed: int,
    limits: RunnerLimits,
) -> Path:
    """Check ``pruned`` (onnx.checker, then the oracle); returns the path it was written to in ``workdir``."""
    check_model(pruned)
    pruned_path, masked_path = workdir / "candidate.onnx", workdir / "masked.onnx"
    pruned_path.write_bytes(pruned.SerializeToString())
    masked_path.write_bytes(mask_removed_channels(dep, plan).SerializeToString())
    inputs = make_inputs(dep.model, input_shapes, seed)
    check_outputs_match(
        run_model(masked_path, inputs, limits=limits),
        run_model(pruned_path, inputs, limits=limits),
        what="pruned model",
        against="the oracle",
        rtol=oracle_rtol(dep.model),
    )
    return pruned_path


def verify_write_back(
    model: onnx.ModelProto,
    path: Path,
    inputs: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    *,
    limits: RunnerLimits,
) -> None:
    """The recovered model, written to ``path``, computes in onnxruntime what the executor computed."""
    check_model(model)
    path.write_bytes(model.SerializeToString())
    check_outputs_match(
        expected,
        run_model(path, inputs, limits=limits),
        what="fine-tuned model",
        against="the PyTorch executor (the write-back is wrong)",
    )
