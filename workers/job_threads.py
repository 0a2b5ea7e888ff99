"""The CPU one job can really use, and the thread settings that follow from it.

A job's threads were sized to the machine (torch: every core; OpenMP and onnxruntime threads that spin
while they wait), so on a shared CPU (other jobs of the same worker, a CI runner's neighbours, a
container's quota) the threads spent their time slices spinning for a sibling the kernel had
descheduled: ResNet-20's recovery made 35 fine-tuning steps in 420 s at load 5 to 12 on 2 cores, 1,188
with passive waits alone (issue 29). Here a job gets ``threads`` = the CPUs it may run on (affinity
mask, cgroup v2 ``cpu.max`` or v1 CFS quota) divided among the jobs its worker runs at once, or the
number the operator set, and its waits are passive: a waiting thread sleeps and gives its core back.

Waits are passive always, not only when the CPU looks shared: sharing is judged at a job's start but
changes while it runs (a job that starts on a quiet machine collapses when a neighbour arrives), and
spinning cost 10 to 42 times the fine-tuning rate under load (ResNet-20, 2 threads: 0.02 to 0.22
steps/s spinning, 0.57 to 2.6 passive; ``benchmarks/results/passive_waits*.json``). What spinning buys
is a few microseconds of wake-up per parallel region: onnxruntime's one-image latency of ResNet-20 was
0.79 to 0.87 ms spinning, 0.85 to 0.86 passive (this machine was never quiet enough to measure it
quiet), so the sessions that time latency keep onnxruntime's spinning, as deployed.

The parent (CLI, embedded runner, Celery worker) works the budget out, puts it in the job child's
environment before torch or onnxruntime load (``environment``), and the child records it
(``use``): onnxruntime sessions (``workers.ort_sessions``), the sessions run side by side (output checks,
the sensitivity sweep) and torch's pools (``configure_torch``, when a job first loads its data) follow it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# The child's environment carries the budget (what a fresh interpreter reads before anything loads).
THREADS_VARIABLE = "ONNXPRUNE_JOB_THREADS"
PASSIVE_VARIABLE = "ONNXPRUNE_PASSIVE_WAITS"


@dataclass(frozen=True)
class ThreadBudget:
    """Intra-op threads of one job (torch, onnxruntime) and whether their waits are passive."""

    threads: int
    passive: bool = True
    cpus: float | None = None  # CPUs this process may use (None: not measured, e.g. a given budget)
    jobs_at_once: int = 1

    def describe(self) -> str:
        """One line for the job's log: what the job got, and from what."""
        waits = "passive" if self.passive else "spinning"
        if self.cpus is None:
            return f"{self.threads} thread(s), {waits} waits"
        return (
            f"{self.threads} thread(s) ({self.cpus:g} CPU(s) usable, {self.jobs_at_once} job(s) at once), {waits} waits"
        )


def usable_cpus(*, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float:
    """CPUs this process may run on: its affinity mask, capped by its cgroup's CPU quota if any."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root=cgroup_root, proc_cgroup=proc_cgroup)
    return float(affinity) if quota is None else min(float(affinity), quota)


def cgroup_cpu_quota(*, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota (quota / period, in CPUs) on this process's cgroup and its ancestors;
    None without one. cgroup v2 ``cpu.max`` ("max 100000" or "150000 100000"), else v1's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: none). No library reads these (psutil and
    ``os.process_cpu_count`` know the affinity mask only), hence by hand."""
    quotas = [q for folder in _cgroup_folders(cgroup_root, proc_cgroup) if (q := _quota_in(folder)) is not None]
    return min(quotas) if quotas else None


def plan_threads(cpus: float, jobs_at_once: int = 1, requested: int | None = None) -> int:
    """Threads of one job: ``requested`` when the operator set it, else an equal share of the CPUs
    among the jobs that run at once (whole CPUs: two threads on 1.5 CPUs of quota get throttled)."""
    if requested is not None and requested > 0:
        return requested
    return max(1, math.floor(cpus / max(1, jobs_at_once)))


def budget_for_job(
    jobs_at_once: int = 1,
    requested: int | None = None,
    *,
    cgroup_root: Path = CGROUP_ROOT,
    proc_cgroup: Path = PROC_CGROUP,
) -> ThreadBudget:
    """The budget of one job of a process that runs ``jobs_at_once`` jobs side by side."""
    cpus = usable_cpus(cgroup_root=cgroup_root, proc_cgroup=proc_cgroup)
    return ThreadBudget(plan_threads(cpus, jobs_at_once, requested), True, round(cpus, 3), jobs_at_once)


def environment(budget: ThreadBudget) -> dict[str, str]:
    """What a job child's environment says, read before torch's OpenMP and onnxruntime load: the
    thread count for OpenMP and MKL, and passive waits (``OMP_WAIT_POLICY``)."""
    variables = {
        THREADS_VARIABLE: str(budget.threads),
        PASSIVE_VARIABLE: "1" if budget.passive else "0",
        "OMP_NUM_THREADS": str(budget.threads),
        "MKL_NUM_THREADS": str(budget.threads),
    }
    if budget.passive:
        variables["OMP_WAIT_POLICY"] = "PASSIVE"
    return variables


def from_environment(environ: Mapping[str, str] = os.environ) -> ThreadBudget | None:
    """The budget a job child was given by its parent; None outside a job (a library user's process)."""
    threads = environ.get(THREADS_VARIABLE)
    if not threads:
        return None
    return ThreadBudget(threads=max(1, int(threads)), passive=environ.get(PASSIVE_VARIABLE, "1") != "0")


_current: ThreadBudget | None = None


def use(budget: ThreadBudget | None) -> None:
    """Make ``budget`` this process's (the job child's); sessions and torch made after follow it."""
    global _current
    _current = budget
    if budget is not None:
        for name, value in environment(budget).items():
            os.environ[name] = value  # OpenMP reads these when torch loads, if it has not yet


def current() -> ThreadBudget | None:
    """This process's budget, if it is a job's child (else None: libraries' own defaults apply)."""
    return _current


def configure_torch() -> None:
    """Size torch's intra- and inter-op pools to the budget (called where torch is first used)."""
    budget = _current
    if budget is None:
        return
    import torch

    torch.set_num_threads(budget.threads)
    try:
        torch.set_num_interop_threads(1)  # our executor runs one graph op at a time
    except RuntimeError:  # the inter-op pool has started already: it may only be sized before
        pass


def _cgroup_folders(root: Path, proc_cgroup: Path) -> list[Path]:
    """The folders of this process's cgroup and its ancestors, under v2 and under v1's cpu controller."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    folders: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" or "cpu" in controllers.split(","):
            bases = [root] if controllers == "" else [root / name for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu")]
            for base in bases:
                relative = Path(path.lstrip("/"))
                folders += [base / parent for parent in [relative, *relative.parents]]
    return folders or [root, root / "cpu", root / "cpu,cpuacct"]


def _quota_in(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        period_us = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
