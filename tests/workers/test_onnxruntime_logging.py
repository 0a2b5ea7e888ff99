"""onnxruntime's C++ logger writes warnings to file descriptor 2 itself (Python logging never sees
them): the sessions we make, and those the quantizer makes in our processes, log errors only.

Each case runs in a fresh Python process (the default logger is per process) whose fd 2 the test
reads; the control case shows that the model does make onnxruntime warn when nothing quiets it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.integration  # the pipeline, the CLI or a sandbox, in processes of their own

REPO = Path(__file__).resolve().parents[2]
ORT_WARNING = "[W:onnxruntime"


def model_with_unused_initializer() -> onnx.ModelProto:
    """x [1,3,8,8] -> Conv(w) -> y [1,4,8,8]; initializer 'unused' feeds nothing, and onnxruntime
    warns "Removing initializer 'unused'. It is not used by any node" when it loads the graph."""
    weights = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    unused = numpy_helper.from_array(np.ones((2,), np.float32), "unused")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "unused_initializer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [weights, unused],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


CASES = {
    "control: a session nothing quiets": (
        "import onnxruntime as ort\nort.InferenceSession(open(MODEL, 'rb').read(), providers=['CPUExecutionProvider'])",
        True,
    ),
    "onnxprune.workers.ort_sessions.cpu_session (benchmark, evaluation, latency)": (
        "from onnxprune.workers.ort_sessions import cpu_session\ncpu_session(open(MODEL, 'rb').read(), threads=1)",
        False,
    ),
    "the quantizer's own sessions, as the sandboxed child runs them": (
        "from onnxprune.workers.quantize import _quantize_in_child\n"
        "_quantize_in_child(MODEL, OUT, 'dynamic', 'minmax', None, False)",
        False,
    ),
}


@pytest.mark.parametrize(("code", "warns"), CASES.values(), ids=CASES.keys())
def test_onnxruntime_warnings_do_not_reach_stderr(tmp_path, code, warns):
    model = tmp_path / "unused.onnx"
    onnx.save(model_with_unused_initializer(), model)
    prelude = f"MODEL = {str(model)!r}\nOUT = {str(tmp_path / 'out.onnx')!r}\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert (ORT_WARNING in done.stderr) is warns, done.stderr[-2000:]
