"""What a job needs beyond its model (a data file, PyTorch), derived from the strategies it will run.

Each strategy declares its own needs (``needs(options, given)``); :func:`job_needs` builds the
strategies ``choose_schedule`` would build and asks them. The CLI, the API (at upload) and the worker
(before the pipeline starts) all ask this one function, so a job is refused for what it lacks before
any of it runs -- never half-way, as an internal error (a job with data picks layer-wise
reconstruction by default, which runs in PyTorch).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxprune.workers.options import PruneOptions, criterion_needs_data, data_options_set, option_flag


@dataclass(frozen=True)
class Given:
    """What the job comes with besides its model and options."""

    data: bool = False
    plan: bool = False  # a saved plan (--plan-in): nothing is scored
    sensitivity: bool = False  # a sensitivity file (--sensitivity): ratio 'auto' needs no data


@dataclass(frozen=True)
class Needs:
    """Why a job needs each thing, in the options' words; None where it does not.

    ``data``: a full reason ("criterion 'taylor' needs data"); ``torch``: what runs in PyTorch
    ("criterion 'taylor'"), completed by the caller ("... needs PyTorch, which is not installed")."""

    data: str | None = None
    torch: str | None = None

    def __or__(self, other: Needs) -> Needs:
        """Both jobs' needs; where both need a thing, the first reason is kept."""
        return Needs(self.data or other.data, self.torch or other.torch)


NOTHING = Needs()


def criterion_needs(options: PruneOptions) -> Needs:
    """A data-driven criterion (``needs_data`` on its registry entry) scores channels in PyTorch."""
    if criterion_needs_data(options.criterion):
        return Needs(data=f"criterion '{options.criterion}' needs data", torch=f"criterion '{options.criterion}'")
    return NOTHING


def named_recovery_needs(options: PruneOptions, given: Given) -> Needs:
    """A recovery the options name (``recovery 'reconstruct'``) needs what its registration declares, even
    where a job without data would not build it: run without it, the job would silently skip what was asked."""
    from onnxprune.workers.strategies.registry import entry

    if given.data or options.recovery == "auto":
        return NOTHING
    if entry("recovery", options.recovery).requires.data:
        return Needs(data=f"recovery '{options.recovery}' needs data")
    return NOTHING


def ignored_without_data(options: PruneOptions, given: Given) -> str | None:
    """The report's warning for options that act only on data (``needs_data`` in the schema) set in a job
    that has none, or None. Those that ask for work on data (a data criterion, fine-tuning steps, a named
    recovery) are refused by :func:`job_needs` instead; these only tune that work, so the job runs as it would
    without them, and says so."""
    if given.data:
        return None
    from onnxprune.workers.strategies.registry import entry

    # A recovery that needs no data ("none") asks for no work on data: naming it is no option ignored.
    names = [
        name
        for name in data_options_set(options)
        if name != "recovery" or entry("recovery", options.recovery).requires.data
    ]
    if not names:
        return None
    shown = ", ".join(_spelled(name, getattr(options, name)) for name in names)
    return (
        f"without data these options change nothing: {shown} (they tune the work done on a data file: "
        "give one, --data or the upload's 'data' part, or drop them)"
    )


def idle_finetune(options: PruneOptions, given: Given) -> str | None:
    """The report's warning for ``recovery 'finetune'`` named in a job with data that gives it no step to
    make (no ``finetune_steps``, no ``time_budget``, one pruning step), or None: fine-tuning is sized by
    one of those, so without them it would be skipped, and the user who asked for it would not know."""
    if not given.data or given.plan or options.recovery != "finetune" or options.criterion == "learned":
        return None
    if options.finetune_steps > 0 or options.time_budget is not None or options.iterative_steps > 1:
        return None
    return (
        "--recovery finetune made no training step: it trains for --finetune-steps N, or as long as "
        "--time-budget SECONDS allows; give one of them"
    )


def _spelled(name: str, value: object) -> str:
    """An option as the CLI spells it: ``--lr 0.01``, ``--no-augment``, ``--image-mean 0.5,0.5,0.5``."""
    flag = option_flag(name)
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    if isinstance(value, list):
        value = ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    elif isinstance(value, float):
        value = f"{value:g}"
    return f"{flag} {value}"


def job_needs(
    options: PruneOptions, *, has_data: bool, plan_given: bool = False, sensitivity_given: bool = False
) -> Needs:
    """The union of what the job's strategies need (see ``workers.strategies.choose_schedule``)."""
    from onnxprune.graphops.plan import PruningPlan
    from onnxprune.workers.strategies import choose_schedule

    given = Given(data=has_data, plan=plan_given, sensitivity=sensitivity_given)
    stand_in = PruningPlan({}) if plan_given else None  # which plan does not change what the job needs
    schedule = choose_schedule(options, stand_in, has_data=has_data)
    return schedule.needs(options, given) | named_recovery_needs(options, given)
