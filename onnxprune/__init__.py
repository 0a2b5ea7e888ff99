"""onnxprune as a library: prune conv filters directly on ONNX models.

    import onnxprune
    result = onnxprune.prune("model.onnx", ratio=0.3)
    onnx.save(result.model, "model.pruned.onnx")

Every function takes a path or an ``onnx.ModelProto`` and returns typed results; they are thin over
the same pipeline, analysis and benchmark code the CLI and the service run.

The API is loaded on first use (PEP 562): ``import onnxprune.graphops`` must not pull in the workers,
the service or torch, since a graph library user pays for none of them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onnxprune.api import PruneResult, analyze, bench, prune, sensitivity

try:
    __version__ = version("onnxprune")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"

__all__ = ["PruneResult", "__version__", "analyze", "bench", "prune", "sensitivity"]
_API_NAMES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    """``onnxprune.prune`` and friends: imports ``onnxprune.api`` the first time one is asked for."""
    if name in _API_NAMES:
        from onnxprune import api

        value = getattr(api, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'onnxprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
