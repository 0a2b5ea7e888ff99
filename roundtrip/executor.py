"""Run an ONNX graph as a ``torch.nn.Module``: the nodes in topological order, with torch ops.

Float initializers read as weights (conv and gemm weights and biases, norm scales, per-channel
constants) become trainable parameters; BatchNormalization running statistics become buffers that
training mode updates; everything else (shapes, pads, clip bounds, scalars) stays constant. Every
tensor keeps its ONNX name, so trained weights go back into the same graph (``roundtrip.writeback``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from onnxprune.graphops.errors import GraphOpsError, ModelRejected
from onnxprune.graphops.ops import handler_for
from onnxprune.graphops.ops.base import constant_shapes
from onnxprune.graphops.shapes import graph_inputs
from onnxprune.roundtrip.ops import OpContext, op_for


class ExecutorError(GraphOpsError):
    """A graph the analysis accepted failed to run in the PyTorch executor: an onnxprune bug, never the
    user's (the CLI exits 1, the service retries the job as an internal error)."""


EdgeHook = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Execution:
    """A run of a graph stopped before node ``position``: the tensors later nodes still read (``env``).
    Layer-wise reconstruction takes runs over many batches forward together, a layer at a time."""

    env: dict[str, torch.Tensor | None]
    context: OpContext
    position: int = 0


def toposort(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Kahn's algorithm over tensor names; exporters usually write topological order already."""
    available = {init.name for init in graph.initializer} | {inp.name for inp in graph.input} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            node = pending[0]
            missing = next(name for name in node.input if name not in available)
            raise ExecutorError(f"node '{node.name}' reads tensor '{missing}', which nothing produces")
        ready_ids = {id(node) for node in ready}
        pending = [node for node in pending if id(node) not in ready_ids]
        for node in ready:
            ordered.append(node)
            available.update(node.output)
    return ordered


def _roles(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """(trainable initializer names, BatchNorm statistics names): the inputs each op's handler says
    are learnt weights or running statistics, of initializers no op reads otherwise."""
    initializers = {init.name: init for init in model.graph.initializer}
    constant_shape = constant_shapes(model)
    slots: dict[str, set[str]] = {}
    for node in model.graph.node:
        handler = handler_for(node.op_type, node.domain)
        parameters, running = handler.parameter_inputs(node, constant_shape), handler.statistics_inputs(node)
        for index, name in enumerate(node.input):
            if name not in initializers:
                continue
            role = "parameter" if index in parameters else "statistics" if index in running else "constant"
            slots.setdefault(name, set()).add(role)
    floats = {
        name
        for name, init in initializers.items()
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    }
    trainable = {name for name, roles in slots.items() if roles == {"parameter"} and name in floats}
    statistics = {name for name, roles in slots.items() if roles == {"statistics"} and name in floats}
    return trainable, statistics


def _opset(model: onnx.ModelProto) -> int:
    return next((int(e.version) for e in model.opset_import if e.domain in ("", "ai.onnx")), 1)


def _image_like(tensor: torch.Tensor) -> bool:
    """4-D floating point: what channels-last memory applies to (NCHW activations, OIHW weights)."""
    return tensor.dim() == 4 and tensor.is_floating_point()


class OnnxModule(torch.nn.Module):
    """The graph of ``model`` as a module; ``run`` takes and returns tensors by ONNX name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        self.opset = _opset(model)
        self.nodes = toposort(model.graph)
        for node in self.nodes:
            op_for(node)  # refuse unsupported ops now, not halfway through training
        self.input_names = [inp.name for inp in graph_inputs(model)]
        self.output_names = [out.name for out in model.graph.output]
        self.trainable_names, self.statistics_names = _roles(model)
        self.parameters_by_key = torch.nn.ParameterDict()
        self._keys: dict[str, str] = {}
        for index, init in enumerate(model.graph.initializer):
            key = f"t{index}"
            self._keys[init.name] = key
            array = numpy_helper.to_array(init)
            if array.dtype == np.float16:
                array = array.astype(np.float32)
            tensor = torch.from_numpy(np.array(array))
            if init.name in self.trainable_names:
                self.parameters_by_key[key] = torch.nn.Parameter(tensor)
            else:
                self.register_buffer(key, tensor)
        first = graph_inputs(model)[0].type.tensor_type.shape.dim if self.input_names else []
        self.static_batch = int(first[0].dim_value) if len(first) and first[0].HasField("dim_value") else None
        self.bn_momentum: float | None = None
        self.dropout: bool | None = None  # None: active exactly in training mode
        last_use: dict[str, int] = {}
        for position, node in enumerate(self.nodes):
            for name in node.input:
                last_use[name] = position
        self._last_use = last_use
        self._channels_last = False

    @contextmanager
    def channels_last(self) -> Iterator[OnnxModule]:
        """4-D weights and inputs held channels-last while inside, contiguous again after.

        oneDNN's CPU convolutions work in NHWC; NCHW tensors are reordered in and out of every conv,
        forward and backward (on a pruned ResNet-20, 1 thread, batch 32, the student's step took 15-20%
        longer and the teacher's forward 10-25%). Only the memory layout changes, not the values
        (results agree to float rounding)."""

        def lay_out(memory_format: torch.memory_format) -> None:
            with torch.no_grad():
                for name in self._keys:
                    tensor = self.tensor(name)
                    if _image_like(tensor):
                        tensor.data = tensor.data.contiguous(memory_format=memory_format)

        lay_out(torch.channels_last)
        self._channels_last = True
        try:
            yield self
        finally:
            self._channels_last = False
            lay_out(torch.contiguous_format)

    def tensor(self, name: str) -> torch.Tensor:
        """The parameter or buffer holding initializer ``name``."""
        key = self._keys[name]
        if key in self.parameters_by_key:
            parameter: torch.nn.Parameter = self.parameters_by_key[key]
            return parameter
        buffer: torch.Tensor = getattr(self, key)
        return buffer

    def initializer_names(self) -> list[str]:
        return list(self._keys)

    def named_trainable(self) -> dict[str, torch.nn.Parameter]:
        return {name: self.parameters_by_key[self._keys[name]] for name in self._keys if name in self.trainable_names}

    def forward(self, *args: torch.Tensor) -> list[torch.Tensor]:
        return self.run(dict(zip(self.input_names, args)))

    def position(self, node: str) -> int:
        """Where node ``node`` runs in ``nodes`` (topological order)."""
        found = next((index for index, candidate in enumerate(self.nodes) if candidate.name == node), None)
        if found is None:
            raise ExecutorError(f"the graph has no node '{node}'")
        return found

    def begin(self, feeds: Mapping[str, torch.Tensor | np.ndarray]) -> Execution:
        """A run on ``feeds`` stopped before its first node (``advance`` takes it further)."""
        env: dict[str, torch.Tensor | None] = {"": None}
        for name in self._keys:
            env[name] = self.tensor(name)
        for name in self.input_names:
            if name not in feeds:
                raise ModelRejected(f"no data for model input '{name}'")
            fed = feeds[name]
            given = torch.from_numpy(np.asarray(fed)) if isinstance(fed, np.ndarray) else fed
            if self._channels_last and _image_like(given):
                given = given.contiguous(memory_format=torch.channels_last)
            env[name] = given
        leading = env[self.input_names[0]] if self.input_names else None
        batch = int(leading.shape[0]) if leading is not None and leading.dim() else None
        dropout = self.training if self.dropout is None else self.dropout
        return Execution(env, OpContext(self.opset, self.training, self.static_batch, batch, self.bn_momentum, dropout))

    def advance(
        self,
        execution: Execution,
        stop: int,
        *,
        keep: Collection[str] = (),
        edge_hooks: Mapping[tuple[str, int], EdgeHook] | None = None,
    ) -> None:
        """Run ``execution``'s nodes up to position ``stop`` (not included), freeing each tensor after its
        last reader unless named in ``keep``: a run can stop where a layer is about to read its input."""
        env, ctx, hooks = execution.env, execution.context, edge_hooks or {}
        for position in range(execution.position, min(stop, len(self.nodes))):
            node = self.nodes[position]
            inputs = [env[name] for name in node.input]
            for index, edge in enumerate(inputs):
                hook = hooks.get((node.name, index))
                if hook is not None and edge is not None:  # an omitted input carries no tensor to see
                    inputs[index] = hook(edge)
            try:
                results = op_for(node)(node, inputs, ctx)
            except (RuntimeError, ValueError, IndexError, KeyError, TypeError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ExecutorError(
                    f"node '{node.name}' ({node.op_type}) failed in the PyTorch executor: {first}"
                ) from exc
            for name, value in zip(node.output, results):
                if name:
                    env[name] = value
            for name in node.input:
                if self._last_use.get(name) == position and name not in keep and name not in self._keys:
                    env.pop(name, None)
            execution.position = position + 1

    def run(
        self,
        feeds: Mapping[str, torch.Tensor | np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
        edge_hooks: Mapping[tuple[str, int], EdgeHook] | None = None,
    ) -> list[torch.Tensor]:
        """Tensors ``outputs`` (default: the graph outputs). ``edge_hooks[(node, i)]`` sees and may
        replace input ``i`` of ``node`` on that edge only (used to take per-consumer gradients)."""
        wanted = list(outputs or self.output_names)
        execution = self.begin(feeds)
        self.advance(execution, len(self.nodes), keep=set(wanted), edge_hooks=edge_hooks)
        computed: list[torch.Tensor] = []
        for name in wanted:
            tensor = execution.env.get(name)
            if tensor is None:
                raise ExecutorError(f"tensor '{name}' is not computed by the graph")
            computed.append(tensor)
        return computed


def build_executor(model: onnx.ModelProto) -> OnnxModule:
    """An executor in float32 inference mode (call ``.train()`` for fine-tuning)."""
    return OnnxModule(model).eval()
