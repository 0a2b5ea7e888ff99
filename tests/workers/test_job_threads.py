"""A job's threads follow the CPU it can really use (affinity mask, cgroup quota, jobs at once, the
operator's setting), and its waits are passive: what torch and onnxruntime see in the job's process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from onnxprune.workers import job_threads
from onnxprune.workers.job_process import JobLimits, _child_environment

REPO = Path(__file__).resolve().parents[2]

# What a job's child does first (``job_process._child_main``), then what torch and an onnxruntime
# session made by ``workers.ort_sessions`` see.
_SEEN_BY_A_JOB = """
import json, os, sys
from onnxprune.workers import job_threads
job_threads.use(job_threads.from_environment())
job_threads.configure_torch()
import torch
from onnxprune.workers.ort_sessions import cpu_session
options = cpu_session(open(sys.argv[1], "rb").read()).get_session_options()
print(json.dumps({
    "torch": torch.get_num_threads(),
    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    "ort_intra": options.intra_op_num_threads,
    "ort_spinning": options.get_session_config_entry("session.intra_op.allow_spinning"),
}))
"""

# The parent (CLI, runner, worker) works the budget out under its affinity mask and starts the job.
_PARENT = """
import json, os, subprocess, sys
from pathlib import Path
cpus = json.loads(sys.argv[1])
if cpus:
    os.sched_setaffinity(0, cpus)
from onnxprune.workers.job_process import JobLimits, _child_environment
limits = JobLimits(jobs_at_once=int(sys.argv[2]))
env = _child_environment(Path(sys.argv[3]), limits.thread_budget())
done = subprocess.run([sys.executable, "-c", sys.argv[4], sys.argv[5]], env=env, capture_output=True, text=True)
print(done.stdout or done.stderr)
"""


# session, not module: cheap to build, and a module-scoped fixture puts every test of the module on one
# xdist worker (tests/conftest.py), where these long tests would queue behind each other.
@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """x -> Relu -> y: a session to read the options of."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def seen_by_a_job(tiny_model: Path, tmp_path: Path, cpus: set[int] | None, jobs_at_once: int = 1) -> dict:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(job_threads.THREADS_VARIABLE, None)
    arguments = [json.dumps(sorted(cpus) if cpus else []), str(jobs_at_once), str(tmp_path), _SEEN_BY_A_JOB]
    done = subprocess.run(
        [sys.executable, "-c", _PARENT, *arguments, str(tiny_model)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="affinity masks are Linux's")
def test_a_job_under_an_affinity_mask_of_one_cpu_runs_one_thread(tiny_model, tmp_path):
    one_cpu = {min(os.sched_getaffinity(0))}

    seen = seen_by_a_job(tiny_model, tmp_path, one_cpu)

    assert seen == {"torch": 1, "omp_wait_policy": "PASSIVE", "ort_intra": 1, "ort_spinning": "0"}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="affinity masks are Linux's")
def test_a_job_gets_every_cpu_of_its_mask_and_a_share_when_jobs_run_side_by_side(tiny_model, tmp_path):
    cpus = max(1, int(job_threads.usable_cpus()))  # the mask, capped by a container's CPU quota if any

    alone = seen_by_a_job(tiny_model, tmp_path, None)
    beside_another = seen_by_a_job(tiny_model, tmp_path, None, jobs_at_once=2)

    assert alone["torch"] == alone["ort_intra"] == cpus
    assert beside_another["torch"] == beside_another["ort_intra"] == max(1, cpus // 2)
    assert beside_another["ort_spinning"] == "0"


def fake_cgroup(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup filesystem under ``tmp_path/cgroup`` and a ``/proc/self/cgroup`` saying where we are."""
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(membership)
    return root, proc


QUOTA_CASES = [
    # (/proc/self/cgroup, files, quota in CPUs)
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),
    # the tightest of the cgroup and its ancestors
    ("0::/jobs/one\n", {"jobs/cpu.max": "50000 100000\n", "jobs/one/cpu.max": "max 100000\n"}, 0.5),
    # cgroup v1: the cpu controller's CFS quota (-1: none)
    (
        "5:cpu,cpuacct:/docker/abc\n",
        {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"},
        3.0,
    ),
    ("5:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ("0::/\n", {}, None),  # no cgroup files at all (not Linux, or not mounted)
]


@pytest.mark.parametrize(("membership", "files", "quota"), QUOTA_CASES)
def test_the_cgroup_cpu_quota_is_read_from_v2_and_v1_files(tmp_path, membership, files, quota):
    root, proc = fake_cgroup(tmp_path, membership, files)

    assert job_threads.cgroup_cpu_quota(cgroup_root=root, proc_cgroup=proc) == quota


def test_a_job_under_a_cpu_quota_runs_as_many_threads_as_whole_cpus_it_may_use(tmp_path):
    root, proc = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": "150000 100000\n"})
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    budget = job_threads.budget_for_job(cgroup_root=root, proc_cgroup=proc)

    assert budget.cpus == min(affinity, 1.5)
    assert budget.threads == max(1, math.floor(min(affinity, 1.5)))  # 1.5 CPUs: one thread, never throttled
    assert budget.passive


def test_half_a_cpu_of_quota_still_gets_one_thread_and_the_operators_setting_wins(tmp_path):
    root, proc = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": "50000 100000\n"})

    assert job_threads.budget_for_job(cgroup_root=root, proc_cgroup=proc).threads == 1
    assert job_threads.budget_for_job(requested=3, cgroup_root=root, proc_cgroup=proc).threads == 3
    assert job_threads.plan_threads(16.0, jobs_at_once=4) == 4
    assert job_threads.plan_threads(3.0, jobs_at_once=2) == 1


def test_the_job_childs_environment_carries_its_threads_and_passive_waits(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "64")  # the parent's own setting does not leak into the job

    env = _child_environment(tmp_path, job_threads.ThreadBudget(threads=3))

    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env[job_threads.THREADS_VARIABLE] == "3"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert job_threads.from_environment(env) == job_threads.ThreadBudget(threads=3, passive=True)


def test_onnxprune_job_threads_sets_the_cli_jobs_threads(monkeypatch):
    monkeypatch.setenv(job_threads.THREADS_VARIABLE, "5")

    assert JobLimits.from_environment().thread_budget().threads == 5
