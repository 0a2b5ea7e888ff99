"""The checks that stand between a pruned model and the user: a result that fails one is never written.

The oracle: the original with the removed channels' weights zeroed in every op that reads them
(``graphops.masking``) must compute what the pruned model computes. After recovery, the model with
its new weights written back must compute in onnxruntime what the PyTorch executor computed.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.errors import GraphOpsError
from onnxprune.graphops.masking import masked_graph
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.unrounded import unrounded_model, without_activation_rounding
from onnxprune.graphops.weights import ModelWeights
from onnxprune.workers.benchmark import run_models
from onnxprune.workers.ort_models import FedModel, fed_graph, fed_model
from onnxprune.workers.output_compare import FLOAT32_RTOL, oracle_atol, oracle_rtol, output_mismatch
from onnxprune.workers.sandbox import RunnerLimits

Outputs = dict[str, Any]

# The oracle's tolerance at run time for float32 models; float16 models get
# ``workers.output_compare.FLOAT16_RTOL`` (``oracle_rtol``).
ORACLE_RTOL = FLOAT32_RTOL


class VerificationFailed(GraphOpsError):
    """The pruned model does not match what it must match: an onnxprune bug, not the user's."""


def check_outputs_match(
    expected: Mapping[str, Any],
    actual: Mapping[str, Any],
    *,
    what: str,
    against: str,
    rtol: float = ORACLE_RTOL,
    atol: float = 0.0,
) -> None:
    """Every output of ``expected`` is in ``actual`` with its shape and within ``rtol`` (or ``atol``);
    outputs of any kind compare by what they hold (``workers.output_compare``: string labels are not compared)."""
    for name, reference in expected.items():
        problem = output_mismatch(name, reference, actual.get(name), rtol, atol)
        if problem is not None:
            raise VerificationFailed(f"{what} {problem} from {against}")


def checker_complaint(model: onnx.ModelProto | bytes) -> str | None:
    """The first line of onnx.checker's complaint (full shape inference), or None when it has none."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        return str(exc).splitlines()[0]
    return None


def check_model(model: onnx.ModelProto | bytes, *, original: onnx.ModelProto | None = None) -> None:
    """onnx.checker with full shape inference (of a serialised model: it is not serialised again).

    A complaint the ``original`` has too is not the surgery's: exporters write graphs the checker
    rejects and onnxruntime runs (onnxruntime's optimizer puts LayerNormalization in the default
    domain below opset 17), and onnxruntime, which runs both models next, is the judge of those.
    """
    complaint = checker_complaint(model)
    if complaint is None or (original is not None and checker_complaint(fed_model(original).graph) == complaint):
        return
    raise VerificationFailed(f"pruned model fails onnx.checker: {complaint}")


@dataclass(frozen=True)
class Verified:
    """A pruned model that passed onnx.checker and the oracle, written once to ``path``."""

    model: onnx.ModelProto = field(repr=False)
    path: Path
    sha256: str
    outputs: Outputs = field(repr=False)  # its outputs on the check inputs
    reference: Outputs | None = field(default=None, repr=False)  # the unpruned model's, when asked for


def checked_fed_model(model: onnx.ModelProto, original: onnx.ModelProto | None = None) -> FedModel:
    """``model`` as the checks run it (``workers.ort_models``), once onnx.checker has passed its graph.

    The checker reads the graph with the large weights as typed inputs: nodes, types and shapes are
    checked as in the whole model, without parsing hundreds of MB of weights once more. The weights
    are checked by decoding them (their sizes must match their dims) and by running these arrays.
    ``original``: the unpruned model, whose own checker complaint is not held against ``model``."""
    fed = fed_model(model)
    check_model(fed.graph, original=original)
    return fed


def write_model(model: onnx.ModelProto, path: Path) -> str:
    """Serialise ``model`` once, write it to ``path``; returns the SHA-256 of the bytes written."""
    data = model.SerializeToString()
    with ThreadPoolExecutor(1) as pool:  # hashing and writing both release the GIL
        digest = pool.submit(hashlib.sha256, data)
        path.write_bytes(data)
        return digest.result().hexdigest()


def verify_against_oracle(
    dep: DependencyGraph,
    plan: PruningPlan,
    pruned: onnx.ModelProto,
    workdir: Path,
    inputs: Mapping[str, np.ndarray],
    *,
    limits: RunnerLimits,
    weights: ModelWeights | None = None,
    with_reference: bool = False,
) -> Verified:
    """Check ``pruned`` (onnx.checker, then the oracle); once it passes, write it to ``workdir``.

    The masked original and the pruned model run on the same ``inputs`` in the job's sandbox, with
    ``dep.model`` itself when ``with_reference`` (its outputs give the fidelity numbers without a
    second run). ``weights``: ``dep.model``'s decoded weights, shared with the surgery that made
    ``pruned``. They are released, and the masked copies collected, before the pruned model's weights
    are decoded: the two runs never hold their arrays at once.
    """
    weights = weights or ModelWeights(dep.model)
    masked_original = masked_graph(dep, plan, weights)
    # QDQ: compared without activation rounding, which float sums in another order flip (graphops.unrounded)
    unrounded = without_activation_rounding(masked_original, dep.shapes) > 0
    originals = [fed_graph(masked_original, dep.model)]
    del masked_original
    if with_reference:
        originals.append(fed_model(dep.model, weights))
    masked, *reference = run_models(originals, inputs, limits=limits)
    del originals
    weights.release()
    gc.collect()  # the masked onnx-graphsurgeon graph is a reference cycle holding the masked weights
    outputs = run_models([checked_fed_model(pruned, dep.model)], inputs, limits=limits)[0]
    compared = outputs
    if unrounded:
        pruned_unrounded = unrounded_model(pruned)
        if pruned_unrounded is None:
            raise VerificationFailed("the pruned model lost the activation quantization of the original")
        compared = run_models([fed_model(pruned_unrounded)], inputs, limits=limits)[0]
    check_outputs_match(
        masked,
        compared,
        what="pruned model",
        against="the oracle",
        rtol=oracle_rtol(dep.model),
        atol=oracle_atol(dep.model),
    )
    path = workdir / "candidate.onnx"
    sha256 = write_model(pruned, path)
    return Verified(pruned, path, sha256, outputs, reference[0] if reference else None)


def verify_write_back(
    model: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    *,
    limits: RunnerLimits,
    original: onnx.ModelProto | None = None,
) -> None:
    """The recovered model passes onnx.checker (as far as ``original`` does) and computes in onnxruntime
    what the executor computed (it is written once, by the job's finish)."""
    check_outputs_match(
        expected,
        run_models([checked_fed_model(model, original)], inputs, limits=limits)[0],
        what="fine-tuned model",
        against="the PyTorch executor (the write-back is wrong)",
    )
