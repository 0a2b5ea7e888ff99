"""Per-op knowledge, one handler per op kind, found by ``handler_for(op_type)``.

Importing this package registers every handler. An op without a handler pins the channels that
reach it (left unpruned, with the reason in the report): never a guess.
"""

from onnxprune.graphops.ops import (  # noqa: F401  (registration)
    channelwise,
    conv,
    elementwise,
    fused_attention,
    fused_layers,
    linear,
    quantization,
    structure,
)
from onnxprune.graphops.ops.base import AnalysisContext, OpHandler, SurgeryContext, handler_for, registered_op_types

__all__ = ["AnalysisContext", "OpHandler", "SurgeryContext", "handler_for", "registered_op_types"]
