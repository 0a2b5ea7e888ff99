"""Write trained weights back into the ONNX graph they came from, by initializer name.

No re-export: nodes, names, opsets and the graph's interface stay exactly as they were; only the
values of trained initializers (and re-estimated BatchNorm statistics) change, in their own dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.graphops.errors import GraphOpsError

if TYPE_CHECKING:  # the executor needs torch; writing back does not
    from onnxprune.roundtrip.executor import OnnxModule


class WriteBackError(GraphOpsError):
    """The module and the graph disagree about a weight: an onnxprune bug, not the user's."""


def write_back(model: onnx.ModelProto, module: OnnxModule) -> onnx.ModelProto:
    """A copy of ``model`` whose trainable initializers and BatchNorm statistics hold ``module``'s values."""
    names = set(module.trainable_names) | set(module.statistics_names)
    updated = onnx.ModelProto()
    updated.CopyFrom(model)
    for init in updated.graph.initializer:
        if init.name not in names:
            continue
        old = numpy_helper.to_array(init)
        value = module.tensor(init.name).detach().cpu().numpy()
        if value.shape != old.shape:
            raise WriteBackError(
                f"initializer '{init.name}' has shape {old.shape} in the graph, {value.shape} in the module"
            )
        init.CopyFrom(numpy_helper.from_array(value.astype(old.dtype, copy=False), init.name))
    return updated


def changed_initializers(before: onnx.ModelProto, after: onnx.ModelProto) -> list[str]:
    """Names of initializers whose values differ (for reports and tests)."""
    old = {init.name: numpy_helper.to_array(init) for init in before.graph.initializer}
    return [
        init.name
        for init in after.graph.initializer
        if init.name in old and not np.array_equal(old[init.name], numpy_helper.to_array(init))
    ]
