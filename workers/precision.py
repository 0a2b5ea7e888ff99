"""What a model that arrives already quantized (QDQ) can go through, checked before any work is done.

A QDQ model prunes in its own precision by weight magnitude (``graphops.dequantized``). Two things
cannot take it: quantizing it again (onnxruntime's quantizer would write an invalid model), and
anything that runs the graph in PyTorch (data-driven scores, reconstruction, fine-tuning: the round
trip has no integer arithmetic). Both are the user's to change, so both are refused in one line that
says what works instead: exit 2 from the CLI, 422 at upload.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from onnxprune.graphops.dequantized import first_quantization_node
from onnxprune.graphops.errors import ModelRejected
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.quantize import check_not_quantized
from onnxprune.workers.strategies import round_trip_reason


def is_quantized_file(path: Path) -> bool:
    """Whether the model at ``path`` is already QDQ, read without its external data; a file that does not
    parse counts as not quantized (the job itself then says what is wrong with it)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any parse failure is reported by the job, with its own message
        return False
    return first_quantization_node(model) is not None


class QuantizedModelRejected(ModelRejected):
    """A QDQ model asked to go through a path that needs a float model."""


def check_precision(model: onnx.ModelProto, options: PruneOptions, *, has_data: bool, plan_given: bool = False) -> None:
    """Raise :class:`ModelRejected` when a QDQ ``model`` is asked to be quantized again or to run in PyTorch."""
    if options.quantize != "none":
        check_not_quantized(model)
    node = first_quantization_node(model)
    if node is None:
        return
    reason = round_trip_reason(options, has_data=has_data, plan_given=plan_given)
    if reason is not None:
        raise QuantizedModelRejected(
            f"model is already quantized ({node.op_type} node {node.name!r}): {reason} runs the graph in "
            "PyTorch, which has no integer arithmetic; prune it by weight magnitude with no recovery "
            "(criterion 'l1' or 'l2', recovery 'none', no fine-tuning or time budget), or prune the float "
            "model with the data and add quantize 'int8'"
        )
