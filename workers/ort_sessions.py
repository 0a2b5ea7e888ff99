"""Every onnxruntime session the workers make, made here: CPU only, our thread settings, and
onnxruntime's own log kept to errors.

onnxruntime's C++ logger writes to file descriptor 2 itself, not through Python logging, so the rate
limit of ``jobs.logs`` cannot reach it, and an unusual model makes it warn once per node or
initializer ("Removing initializer ... not used by any node") into the job's log. Each session we
build asks for errors only; ``quiet_onnxruntime`` also lowers the process's default logger, which the
sessions that libraries build inside our processes (the quantizer's pre-processing and calibration)
log through. Import and call these in the sandboxed child, where sessions run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnxruntime

ERRORS_ONLY = 3  # onnxruntime severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal

# onnxruntime graph optimisation levels by the names the options use.
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "layout": "ORT_ENABLE_LAYOUT",
    "all": "ORT_ENABLE_ALL",
}


def quiet_onnxruntime() -> None:
    """Lower this process's default onnxruntime logger to errors only."""
    import onnxruntime as ort

    ort.set_default_logger_severity(ERRORS_ONLY)


def cpu_session(
    data: bytes,
    *,
    threads: int | None = None,
    optimization: str = "all",
    prepack: bool = True,
    timing: bool = False,
) -> onnxruntime.InferenceSession:
    """A CPU session with the deploy settings: ``threads`` intra-op threads (None: the job's CPU budget,
    ``workers.job_threads``; 1 outside a job), sequential execution. Its threads wait passively when the
    budget says so, except in a session that times latency (``timing``): that one keeps onnxruntime's
    spinning default, as deployed, and its explicit thread count. ``prepack`` False for a single run,
    which would not pay back the time and memory of weights repacked for speed."""
    import onnxruntime as ort

    from onnxprune.workers.job_threads import current

    budget = current()
    quiet_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads if threads is not None else budget.threads if budget else 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    options.log_severity_level = ERRORS_ONLY
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if budget is not None and budget.passive and not timing:
        # A spinning pool thread burns the time slice of a sibling the kernel descheduled (issue 29).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session: onnxruntime.InferenceSession = ort.InferenceSession(
        data, sess_options=options, providers=["CPUExecutionProvider"]
    )
    return session
