"""Per-op knowledge, one handler per op kind, found by ``handler_for(op_type)``.

Importing this package registers every handler. An op without a handler pins the channels that
reach it (left unpruned, with the reason in the report): never a guess.
"""

from onnxprune.graphops.ops import channelwise, conv, elementwise, linear, quantization, structure  # noqa: F401  (registration)
from onnxprune.graphops.ops.base import AnalysisContext, OpHandler, SurgeryContext, handler_for, registered_op_types

__all__ = ["AnalysisContext", "OpHandler", "SurgeryContext", "handler_for", "registered_op_types"]
