"""Where the analysis registry (``graphops.ops``) and the round trip's executor (``roundtrip.ops``)
differ, each op with the reason. ``tests/graphops/test_op_coverage.py`` keeps both tables exact: an op added
to one registry and not the other fails it until its reason is written here.

Declared as data because graphops sits below roundtrip in the layering and cannot import it.
"""

from __future__ import annotations

_RARE = "not emitted by the CNN exporters the executor is written for; weight-norm criteria do not need it"

# Analysed (channels flow through them) but not run by the executor: data-driven criteria and
# fine-tuning refuse such a model, naming the node; weight-norm pruning handles it.
ANALYSED_NOT_EXECUTABLE: dict[str, str] = {
    **{
        op: f"logical or comparison op: {_RARE}"
        for op in ("And", "Or", "Xor", "GreaterOrEqual", "LessOrEqual", "IsInf", "IsNaN", "Mod")
    },
    **{
        op: f"rare activation or math op: {_RARE}"
        for op in ("Celu", "Cos", "Sin", "Mish", "Round", "Sign", "ThresholdedRelu")
    },
    **{op: f"old converters' experimental op: {_RARE}" for op in ("ScaledTanh", "ParametricSoftplus")},
    **{
        op: f"rare pooling or normalisation: {_RARE}"
        for op in ("GlobalLpPool", "LpPool", "MaxRoiPool", "LpNormalization", "Hardmax")
    },
    **{
        op: f"reduction: {_RARE}"
        for op in ("ArgMin", "ReduceL1", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd", "ReduceSumSquare")
    },
    **{
        op: "QDQ quantization: the executor has no integer arithmetic (fine-tuning would need fake "
        "quantization and an int8 write-back); QDQ models prune by weight norms"
        for op in ("QuantizeLinear", "DequantizeLinear")
    },
}

# Run by the executor but without an analysis handler: channels that reach them are pinned (the
# default handler), which is right for each of these reasons.
EXECUTABLE_NOT_ANALYSED: dict[str, str] = {
    "Constant": "produces a constant: prepare_model folds it into an initializer before analysis",
    "ConstantOfShape": "builds a constant from a shape: folded by prepare_model, or pinned when the shape is run-time",
    "Range": "integer index arithmetic, never channel data",
    "Size": "reads an element count (which pruning changes): channels reaching it stay pinned",
    "Gather": "picks channels by index (or reads shapes, which graphops.ops.shape_values traces); a channel "
    "gather would need its indices rewritten: pinned",
    "Expand": "broadcasts to a shape given as data: pinned unless folded",
    "Tile": "repeats channels by a run-time factor: pinned",
    "DepthToSpace": "moves channel blocks into space (pixel shuffle): pruning must remove whole blocks; pinned",
    "ImageScaler": "its per-channel bias is an attribute: only ever seen on the image input, whose channels are pinned",
}
