"""A model's weights as numpy arrays, each decoded from the protobuf once and shared.

Reading a TensorProto's data copies it (protobuf has no zero-copy view of a bytes field), and
onnx-graphsurgeon copies it twice more when it loads a constant. Surgery, the oracle's masking and
the onnxruntime runs of one job all read the same weights, so they read them from here: one decoded
copy, shared read-only (a pass that changes values makes its own array, which is how callers tell
changed constants from untouched ones).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper


class ModelWeights:
    """The initializers of ``model`` by name, decoded on first use (``model`` must not change meanwhile)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._tensors = {init.name: init for init in model.graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def array(self, name: str) -> np.ndarray:
        """The read-only array of initializer ``name``."""
        array = self._arrays.get(name)
        if array is None:
            array = numpy_helper.to_array(self._tensors[name])
            array.flags.writeable = False
            self._arrays[name] = array
        return array

    def release(self) -> None:
        """Drop the decoded arrays (whoever still holds one keeps it); they are decoded again if asked for."""
        self._arrays.clear()

    def shares(self, name: str, values: object) -> bool:
        """Whether ``values`` is this model's own array for ``name`` (the constant was left as it was)."""
        return self._arrays.get(name) is values

    def bind(self, graph: gs.Graph) -> gs.Graph:
        """Let the constants ``graph`` imported from this model read their values from here (not
        decode their own copies); returns ``graph``."""
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and _is_lazy(tensor) and tensor.name in self._tensors:
                array = self.array(tensor.name)
                if array.shape == tuple(tensor.shape) and array.dtype == tensor.dtype:
                    tensor.values = array
        return graph


def _is_lazy(tensor: gs.Constant) -> bool:
    """Not yet loaded (onnx-graphsurgeon keeps the TensorProto until ``values`` is read), and not sparse."""
    values = tensor._values  # onnx-graphsurgeon exposes no public test for this
    return isinstance(values, gs.ir.tensor.LazyValues) and not isinstance(values, gs.ir.tensor.SparseValues)
