"""onnxprune.workers.job_process: one job, one sandboxed child; what comes back, and every way it can end."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from onnxprune.graphops.errors import ModelRejected
from onnxprune.workers.job_process import (
    JobLimits,
    JobRequest,
    JobStopped,
    _child_environment,
    run_job_process,
)
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.sandbox import SandboxKilled, SandboxOutOfMemory, SandboxStarved, SandboxTimeout
from onnxprune.workers.stages import STAGE_END
from tests.support.service_models import convnet, no_conv_model, runtime_endless_loop, runtime_memory_bomb, save

pytestmark = pytest.mark.integration  # the pipeline, the CLI or a sandbox, in processes of their own

OPTIONS = PruneOptions(ratio=0.5, benchmark=False, round_to=1)


def test_a_job_comes_back_as_its_report_plan_and_model_with_progress_in_stage_order(tmp_path):
    model = save(convnet(), tmp_path / "m.onnx")
    seen: list[tuple[str, float]] = []

    result = run_job_process(
        JobRequest(model, tmp_path / "out.onnx", OPTIONS), tmp_path / "job", progress=lambda *p: seen.append(p)
    )

    assert (tmp_path / "out.onnx").is_file()
    assert result.report.macs.after < result.report.macs.before
    assert result.plan.to_json() == result.plan_path.read_text()
    # every stage the job asked for, in order (no data: no finetune; no --quantize: no quantize)
    assert list(dict.fromkeys(stage for stage, _ in seen)) == [
        s for s in STAGE_END if s not in ("finetune", "quantize")
    ]
    assert [fraction for _, fraction in seen] == sorted(fraction for _, fraction in seen)


def test_the_user_s_error_comes_back_as_its_own_class_and_message(tmp_path):
    model = save(no_conv_model(), tmp_path / "m.onnx")

    with pytest.raises(ModelRejected, match="^model has no Conv, ConvTranspose, Gemm or MatMul to prune$"):
        run_job_process(JobRequest(model, tmp_path / "out.onnx", OPTIONS), tmp_path / "job")
    assert not (tmp_path / "out.onnx").exists()


def test_a_model_that_allocates_without_bound_hits_the_memory_limit(tmp_path):
    model = save(runtime_memory_bomb(), tmp_path / "m.onnx")

    with pytest.raises(SandboxOutOfMemory):
        run_job_process(JobRequest(model, tmp_path / "out.onnx", OPTIONS), tmp_path / "job", limits=JobLimits(1536))


@pytest.mark.timeout(120)  # a hang guard: the sandbox's own limit (4 s) is what the message proves
def test_a_model_that_never_ends_is_killed_at_the_wall_time_limit(tmp_path):
    model = save(runtime_endless_loop(), tmp_path / "m.onnx")

    with pytest.raises(SandboxTimeout, match="time limit of 4 s"):
        run_job_process(JobRequest(model, tmp_path / "out.onnx", OPTIONS), tmp_path / "job", limits=JobLimits(wall_s=4))


@pytest.mark.timeout(120)  # a hang guard; the poll count below is the check
def test_keep_going_false_stops_the_job_at_the_first_poll_that_says_so(tmp_path):
    model = save(runtime_endless_loop(), tmp_path / "m.onnx")
    answers: list[bool] = []

    def keep_going() -> bool:
        answers.append(len(answers) < 3)  # the job runs for three polls, then is told to stop
        return answers[-1]

    with pytest.raises(JobStopped):
        run_job_process(JobRequest(model, tmp_path / "out.onnx", OPTIONS), tmp_path / "job", keep_going=keep_going)
    assert answers == [True, True, True, False]  # stopped at the first False: never polled again


def test_the_child_inherits_no_secrets_and_works_in_its_own_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("ONNXPRUNE_API_TOKENS", "secret")
    monkeypatch.setenv("ONNXPRUNE_REDIS_URL", "redis://user:password@host/0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    environment = _child_environment(tmp_path)

    assert not {"ONNXPRUNE_API_TOKENS", "ONNXPRUNE_REDIS_URL", "AWS_SECRET_ACCESS_KEY"} & set(environment)
    assert environment["OMP_NUM_THREADS"] == "1"
    assert environment["HOME"] == str(tmp_path) and environment["TMPDIR"] == str(tmp_path / "tmp")


def _job_children_nice_values() -> list[int]:
    """Nice values of this process's job sandboxes, from /proc (field 19 of ``stat``)."""
    values = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and b"job_process" in command:  # fields[1]: the parent pid
            values.append(int(fields[16]))
    return values


def test_the_child_runs_at_the_lower_priority_it_is_given(tmp_path):
    model = save(runtime_endless_loop(), tmp_path / "m.onnx")
    started = time.monotonic()
    seen: list[int] = []

    def keep_going() -> bool:
        seen.extend(_job_children_nice_values())
        return time.monotonic() - started < 3

    with pytest.raises(JobStopped):
        run_job_process(
            JobRequest(model, tmp_path / "out.onnx", OPTIONS),
            tmp_path / "job",
            limits=JobLimits(nice=7),
            keep_going=keep_going,
        )
    assert seen and max(seen) == min(19, os.nice(0) + 7)  # 19: the lowest priority there is


def _children() -> set[int]:
    """This process's child processes now (the sandbox of the job running, among others)."""
    return {int(pid) for pid in Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()}


def _signal_the_sandbox_once(signum: int, sent: list[int]) -> Callable[[str, float], None]:
    """A progress callback that sends ``signum`` once to the children started after this call (the
    job's sandbox), never to servers this test process started earlier for other tests (moto, Redis);
    the pids it signalled are appended to ``sent``."""
    others = _children()

    def signal_once(stage: str, fraction: float) -> None:
        if not sent:
            for pid in _children() - others:
                os.kill(pid, signum)
                sent.append(pid)

    return signal_once


def test_a_sandbox_killed_from_outside_below_its_limits_is_a_machine_fault(tmp_path):
    """SIGKILL that is not ours (the host's OOM killer, an operator) is not the model's fault."""
    model = save(runtime_endless_loop(), tmp_path / "m.onnx")
    killed: list[int] = []
    with pytest.raises(SandboxKilled, match="killed \\(SIGKILL\\) from outside"):
        run_job_process(
            JobRequest(model, tmp_path / "out.onnx", OPTIONS),
            tmp_path / "job",
            limits=JobLimits(wall_s=60),
            progress=_signal_the_sandbox_once(signal.SIGKILL, killed),
        )
    assert killed


def test_a_report_larger_than_the_limit_fails_the_job_and_names_both_sizes(tmp_path):
    model = save(convnet(), tmp_path / "m.onnx")
    with pytest.raises(ModelRejected, match=r"report would be 0\.\d MiB, over this server's limit of 0\.001 MiB"):
        run_job_process(
            JobRequest(model, tmp_path / "out.onnx", OPTIONS), tmp_path / "job", limits=JobLimits(max_result_mib=0.001)
        )


def test_a_job_asked_for_its_page_draws_it_in_the_sandbox(tmp_path):
    model = save(convnet(), tmp_path / "m.onnx")
    result = run_job_process(
        JobRequest(model, tmp_path / "out.onnx", OPTIONS, report_page_title="page of m"), tmp_path / "job"
    )
    assert result.report_page_path is not None and "<title>page of m</title>" in result.report_page_path.read_text()


def test_a_job_that_reaches_its_time_limit_without_getting_the_cpu_is_a_machine_fault(tmp_path):
    """Stopped (SIGSTOP: no CPU at all, as on a badly overloaded host) until its wall-time limit passes."""
    model = save(runtime_endless_loop(), tmp_path / "m.onnx")
    stopped: list[int] = []
    with pytest.raises(SandboxStarved, match="less than 10% of a core"):
        run_job_process(
            JobRequest(model, tmp_path / "out.onnx", OPTIONS),
            tmp_path / "job",
            limits=JobLimits(wall_s=20),
            progress=_signal_the_sandbox_once(signal.SIGSTOP, stopped),
        )
    assert stopped
