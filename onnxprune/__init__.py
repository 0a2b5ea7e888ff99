"""onnxprune as a library: prune conv filters directly on ONNX models.

    import onnxprune
    result = onnxprune.prune("model.onnx", ratio=0.3)
    onnx.save(result.model, "model.pruned.onnx")

Every function takes a path or an ``onnx.ModelProto`` and returns typed results; they are thin over
the same pipeline, analysis and benchmark code the CLI and the service run.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from onnxprune.api import PruneResult, analyze, bench, prune, sensitivity

try:
    __version__ = version("onnxprune")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"

__all__ = ["PruneResult", "__version__", "analyze", "bench", "prune", "sensitivity"]
