"""Concrete input shapes to analyse, count MACs, benchmark and verify at.

Which channels can be pruned does not depend on the image size, so a model with symbolic spatial
dims (``?x3x?x?``) is pruned without being told one; only MACs, the benchmark and the oracle need a
size, the *probe size*. It is chosen, in this order, from

1. ``--input-shape`` (the user's, always wins);
2. the data's arrays, when a job has data (``from_data``: a sentence length the model leaves symbolic
   is the data's, with batch 1; pruning at another length would refuse the data);
3. the model's metadata: a ``metadata_props`` entry named ``<input>.shape``, ``input_shape``,
   ``input_size``, ``image_size``, ``img_size`` or ``imgsz`` whose value is a list of ints
   (the full shape, the symbolic dims in order, or one size for all of them);
4. :data:`DEFAULT_PROBE_SIZE` for every symbolic non-batch dim, when every layer's shape is then
   known (the common case: convs and global pooling take any size);
5. otherwise the first of :data:`PROBE_CANDIDATES` at which every layer's shape is known: a
   fixed-size layer (a Gemm after Flatten, a fixed Reshape) decides the size.

A symbolic first dim is the batch, probed at 1. The pruned model keeps the symbolic dims; the
choice is reported (``InputShapeChoice.notes``) so users see which size the numbers are for.

Every shape that test inputs are built at passes through here (``resolve_input_shapes``,
``workers.benchmark.make_inputs``, the API's upload check), so the bounds on them live here too:
at most :data:`MAX_INPUT_ELEMENTS` elements per input and :data:`MAX_TOTAL_INPUT_ELEMENTS` over
all inputs, whether the model declares the shape or the user configures it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import onnx

from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.shapes import Shape, declared_input_shapes

DEFAULT_PROBE_SIZE = 224
PROBE_CANDIDATES = (16, 28, 32, 48, 64, 96, 112, 128, 160, 192, 256, 288, 320, 384, 416, 448, 512, 640)
METADATA_KEYS = ("shape", "input_shape", "input_size", "image_size", "img_size", "imgsz")
# 2**26 elements is 256 MB of float32: a batch of 400 ImageNet images (3x224x224), one 3x4096x4096
# image, far above every real model's own input (the largest here is 3x720x720). A model declaring
# 1x3x8192x8192 or a configured batch of 130,000 CIFAR images is refused before anything is built.
MAX_INPUT_ELEMENTS = 2**26
MAX_TOTAL_INPUT_ELEMENTS = 2**27
# Layers whose shapes must all be known at the probe size (MACs are counted on them).
_SIZED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass(frozen=True)
class InputShapeChoice:
    shapes: dict[str, list[int]]
    notes: list[str] = field(default_factory=list)  # one line per input whose size was probed


def choose_input_shapes(
    model: onnx.ModelProto,
    given: Mapping[str, Sequence[int]] | None = None,
    from_data: Mapping[str, Sequence[int]] | None = None,
) -> InputShapeChoice:
    """Concrete shapes for every input of ``model``; see the module docstring for the order.
    ``from_data``: the shape of each input's data array (samples first), where a job has data."""
    given = dict(given or {})
    declared = declared_input_shapes(model)
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ModelRejected(
            f"--input-shape names {unknown[0]!r}, which is not a model input (inputs: {', '.join(declared) or 'none'})"
        )
    shapes: dict[str, list[int]] = {}
    open_dims: dict[str, list[int]] = {}  # input -> symbolic non-batch axes still to probe
    for name, shape in declared.items():
        if name in given:
            shapes[name] = _checked_given(name, shape, given[name])
            continue
        if shape is None:
            raise ModelRejected(f"input {name!r} has no declared shape; pass --input-shape {name}:DxDx...")
        shapes[name] = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
        open_dims[name] = [axis for axis, d in enumerate(shape) if axis > 0 and not (isinstance(d, int) and d > 0)]
    open_dims = {name: axes for name, axes in open_dims.items() if axes}
    check_input_sizes(shapes)  # the fixed dims alone may be too big: refuse before probing
    data_notes = _take_from_data(shapes, open_dims, declared, from_data or {})
    if not open_dims:
        return InputShapeChoice(shapes, data_notes)
    from_metadata = _metadata_sizes(model, declared, open_dims)
    if from_metadata is not None:
        sizes, key = from_metadata
        return _choice(shapes, open_dims, sizes, f"from the model's metadata '{key}'", data_notes)
    default = {name: [DEFAULT_PROBE_SIZE] * len(axes) for name, axes in open_dims.items()}
    if _every_layer_sized(model, _filled(shapes, open_dims, default)):
        return _choice(shapes, open_dims, default, "the default probe size", data_notes)
    for size in PROBE_CANDIDATES:
        sizes = {name: [size] * len(axes) for name, axes in open_dims.items()}
        if _every_layer_sized(model, _filled(shapes, open_dims, sizes)):
            return _choice(
                shapes, open_dims, sizes, "the smallest size at which every layer's shape is known", data_notes
            )
    name, axes = next(iter(open_dims.items()))
    example = "x".join(str(d) if isinstance(d, int) and d > 0 else "N" for d in declared[name] or ())
    raise ModelRejected(
        f"input {name!r} has symbolic dims {axes} and no probe size makes every layer's shape known; "
        f"pass --input-shape {name}:{example}"
    )


def check_input_sizes(shapes: Mapping[str, Sequence[int]]) -> None:
    """Refuse inputs too big to build: ``MAX_INPUT_ELEMENTS`` each, ``MAX_TOTAL_INPUT_ELEMENTS`` in all."""
    total = 0
    for name, dims in shapes.items():
        elements = math.prod(int(d) for d in dims)
        total += elements
        if elements > MAX_INPUT_ELEMENTS:
            raise ModelRejected(
                f"input {name!r} of shape {'x'.join(str(d) for d in dims)} has {elements} elements, more than "
                f"the limit of {MAX_INPUT_ELEMENTS} per input; pass a smaller --input-shape"
            )
    if total > MAX_TOTAL_INPUT_ELEMENTS:
        raise ModelRejected(
            f"the model's inputs have {total} elements in all, more than the limit of {MAX_TOTAL_INPUT_ELEMENTS}; "
            "pass smaller --input-shape values"
        )


def _checked_given(name: str, shape: Shape | None, given: Sequence[int]) -> list[int]:
    dims = [int(d) for d in given]
    if any(d <= 0 for d in dims):
        raise ModelRejected(f"--input-shape for {name!r} must have positive dims, got {dims}")
    if shape is not None and len(shape) != len(dims):
        raise ModelRejected(f"--input-shape for {name!r} has rank {len(dims)}, the model declares rank {len(shape)}")
    for axis, (want, have) in enumerate(zip(dims, shape or ())):
        if isinstance(have, int) and have > 0 and have != want:
            raise ModelRejected(f"--input-shape for {name!r} sets dim {axis} to {want}, the model fixes it at {have}")
    return dims


def _filled(
    shapes: Mapping[str, list[int]], open_dims: Mapping[str, list[int]], sizes: Mapping[str, list[int]]
) -> dict[str, list[int]]:
    filled = {name: list(dims) for name, dims in shapes.items()}
    for name, axes in open_dims.items():
        for axis, size in zip(axes, sizes[name]):
            filled[name][axis] = size
    return filled


def _choice(
    shapes: Mapping[str, list[int]],
    open_dims: Mapping[str, list[int]],
    sizes: Mapping[str, list[int]],
    how: str,
    notes: Sequence[str] = (),
) -> InputShapeChoice:
    filled = _filled(shapes, open_dims, sizes)
    check_input_sizes(filled)
    return InputShapeChoice(
        filled, [*notes, *(_note(name, axes, filled[name], how) for name, axes in open_dims.items())]
    )


def _note(name: str, axes: Sequence[int], dims: Sequence[int], how: str) -> str:
    return (
        f"input '{name}' has symbolic dims {list(axes)}: MACs, benchmark and oracle use "
        f"{'x'.join(str(d) for d in dims)} ({how}; --input-shape chooses another); "
        "the pruned model keeps the dims symbolic"
    )


def _take_from_data(
    shapes: dict[str, list[int]],
    open_dims: dict[str, list[int]],
    declared: Mapping[str, Shape | None],
    from_data: Mapping[str, Sequence[int]],
) -> list[str]:
    """Fill the symbolic dims of each input whose data array fits its declared shape (same rank, the
    fixed dims equal) from that array, batch 1; those inputs leave ``open_dims``. Notes say so."""
    notes = []
    for name in [name for name in open_dims if name in from_data]:
        data, shape = [int(d) for d in from_data[name]], declared[name] or ()
        fits = len(data) == len(shape) and all(
            not (isinstance(d, int) and d > 0) or d == have for d, have in zip(shape[1:], data[1:])
        )
        if not fits:
            continue  # the data loader says what is wrong with it, at the size probed
        axes = open_dims.pop(name)
        for axis in axes:
            shapes[name][axis] = data[axis]
        notes.append(_note(name, axes, shapes[name], "the data's arrays, batch 1"))
    check_input_sizes(shapes)
    return notes


def _metadata_sizes(
    model: onnx.ModelProto, declared: Mapping[str, Shape | None], open_dims: Mapping[str, list[int]]
) -> tuple[dict[str, list[int]], str] | None:
    props = {prop.key.lower(): prop.value for prop in model.metadata_props}
    for name, axes in open_dims.items():
        for key in (f"{name.lower()}.shape", *METADATA_KEYS):
            if key not in props:
                continue
            values = [int(v) for v in re.findall(r"\d+", props[key])]
            rank = len(declared[name] or ())
            if len(values) == rank:
                picked = [values[axis] for axis in axes]
            elif len(values) == len(axes):
                picked = values
            elif len(values) == 1:
                picked = values * len(axes)
            else:
                continue
            if all(v > 0 for v in picked):
                sizes = {other: [picked[0]] * len(other_axes) for other, other_axes in open_dims.items()}
                sizes[name] = picked
                return sizes, key
    return None


def _every_layer_sized(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> bool:
    from onnxprune.graphops.shape_completion import complete_shapes
    from onnxprune.graphops.shapes import with_input_shapes

    try:
        inferred = complete_shapes(with_input_shapes(model, shapes))
    except Exception:  # onnx raises InferenceError and plain RuntimeErrors on inconsistent sizes
        return False
    for node in model.graph.node:
        if node.op_type in _SIZED_OPS and node.output:
            shape = inferred.get(node.output[0])
            if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
                return False
    return True
