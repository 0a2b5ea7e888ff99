"""A --time-budget run plans its fine-tuning steps from measured step times, and re-measures them; its
learning rate follows the share of the run done, on a clock the tests inject."""

from __future__ import annotations

import itertools
import math

import pytest

from onnxprune.roundtrip.executor import OnnxModule
from onnxprune.roundtrip.training import StepPlan, finetune


def test_the_plan_is_re_measured_once_the_slow_first_steps_are_past():
    plan = StepPlan(1_000_000, deadline=100.0, started=0.0)

    plan.after(5, 5.0)  # warm-up: 1 s a step, so 95 more fit
    assert plan.total == 100

    plan.after(15, 6.25)  # the next 10 steps took 0.125 s each: 93.75 s left fit 750 more
    assert plan.total == 765


def test_the_plan_is_re_measured_at_growing_intervals_and_at_least_every_tenth_of_it():
    plan = StepPlan(1_000_000, deadline=100.0, started=0.0)
    plan.after(5, 5.0)  # 100 steps planned: the next re-plan at min(4 x 5, 5 + 100 / 10) = 15

    for step in range(6, 15):
        plan.after(step, 5.0 + 0.01 * (step - 5))  # no re-plan before step 15
    assert plan.total == 100

    plan.after(15, 5.1)  # 10 steps in 0.1 s: 94.9 s left fit 9,490 more
    assert plan.total == 15 + 9_490


def test_one_slow_window_does_not_end_a_long_run_early():
    plan = StepPlan(1_000_000, deadline=1_000.0, started=0.0)
    now, step = 0.0, 0
    while step < plan.total and now < 1_000.0:
        step += 1
        now += 0.5 if 320 < step <= 1_280 else 0.1  # other work slows these steps fivefold
        plan.after(step, now)

    assert now > 900.0  # the plan caught up once the machine was quiet again


def test_without_a_deadline_the_steps_asked_for_are_run():
    plan = StepPlan(300, deadline=None, started=0.0)

    for step in range(1, 301):
        plan.after(step, float(step))

    assert plan.total == 300


def test_a_deadline_never_adds_steps_beyond_those_asked_for():
    plan = StepPlan(50, deadline=1_000.0, started=0.0)

    plan.after(5, 0.5)

    assert plan.total == 50


def test_a_passed_deadline_ends_the_plan_at_the_current_step():
    plan = StepPlan(1_000, deadline=1.0, started=0.0)

    plan.after(5, 2.0)

    assert plan.total == 5


def rates_of_a_run(plan: StepPlan, step_seconds) -> list[float]:
    """The schedule's factor of every step of ``plan``, the clock injected: step ``k`` takes
    ``step_seconds(k)`` and makes its update at its end."""
    factors, now, step = [], plan.started, 0
    while step < plan.total and (plan.deadline is None or now < plan.deadline):
        now += step_seconds(step)
        factors.append(plan.lr_factor(step, now))
        step += 1
        plan.after(step, now)
    return factors


def test_a_budgeted_run_warms_up_from_its_first_step_and_never_jumps_back_to_its_peak():
    """The bug this pins: the warm-up was a share of a million steps until the first re-plan (factors
    near 0 for five steps), then of the re-planned few dozen, which step 6 was already past (the peak)."""
    plan = StepPlan(1_000_000, deadline=30.0, started=0.0, warmup_fraction=0.1)

    factors = rates_of_a_run(plan, lambda step: 1.0)  # 30 steps of 1 s: the warm-up is the first 3 s

    assert len(factors) == 30
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    peak = factors.index(max(factors))
    assert peak == 2 and factors[3] == 1.0
    assert all(later <= earlier for earlier, later in zip(factors[peak:], factors[peak + 1 :]))
    assert factors[-1] < 0.01


def test_under_a_deadline_the_schedule_follows_the_time_not_the_step_count():
    """Slow first steps (allocator warm-up) make the first re-plan count too few steps; the rate still
    stands where the time says: half the peak halfway through the decay."""
    plan = StepPlan(1_000_000, deadline=100.0, started=0.0)
    plan.after(5, 20.0)  # five steps of 4 s: 20 more planned
    assert plan.total == 25

    plan.after(6, 50.0)
    assert plan.lr_factor(6, 50.5) == pytest.approx(0.5)
    assert plan.lr_factor(6, 50.5) == pytest.approx(plan.lr_factor(6_000, 50.5))  # whatever the count


def test_the_decay_reaches_zero_at_the_deadline_through_a_slow_window():
    plan = StepPlan(1_000_000, deadline=100.0, started=0.0, warmup_fraction=0.05)

    factors = rates_of_a_run(plan, lambda step: 2.0 if 20 <= step < 40 else 0.5)  # other work slows 20 steps

    peak = factors.index(max(factors))
    assert factors[peak] == 1.0
    assert all(later <= earlier for earlier, later in zip(factors[peak:], factors[peak + 1 :]))
    assert factors[-1] < 0.01


def test_with_a_step_cap_and_a_deadline_the_schedule_ends_with_whichever_comes_first():
    capped = StepPlan(10, deadline=1_000.0, started=0.0)  # 10 steps of 1 s end long before the deadline
    assert rates_of_a_run(capped, lambda step: 1.0)[-1] == pytest.approx(0.5 * (1 + math.cos(0.9 * math.pi)))

    timed = StepPlan(1_000, deadline=10.0, started=0.0)  # the deadline ends 1,000 steps of 1 s at 10
    assert rates_of_a_run(timed, lambda step: 1.0)[-1] == pytest.approx(0.5 * (1 + math.cos(0.9 * math.pi)))


def test_without_a_deadline_warm_up_and_decay_are_shares_of_the_steps_asked_for():
    plan = StepPlan(100, deadline=None, started=0.0, warmup_fraction=0.05)

    assert plan.lr_factor(0, 0.0) == pytest.approx(0.2)  # 5 steps of warm-up
    assert plan.lr_factor(4, 0.0) == 1.0
    assert plan.lr_factor(52, 0.0) == pytest.approx(0.5, abs=0.02)
    assert plan.lr_factor(99, 0.0) < 0.01


def test_without_warm_up_the_rate_starts_at_its_peak_and_decays_to_zero():
    plan = StepPlan(200, deadline=None, started=0.0)

    assert plan.lr_factor(0, 0.0) == 1.0
    assert plan.lr_factor(100, 0.0) == pytest.approx(0.5)
    assert plan.lr_factor(200, 0.0) == pytest.approx(0.0)


def test_fine_tuning_takes_each_step_s_rate_from_the_schedule_on_the_clock_it_is_given(pruned):
    context, model = pruned
    reads = itertools.count()

    def clock() -> float:  # each read half a second after the last: a step (two reads) takes 1 s
        return 0.5 * next(reads)

    run = finetune(
        OnnxModule(model), context.objective, context.train, steps=1_000_000, lr=0.1, batch_size=16,
        warmup_fraction=0.1, deadline=20.0, clock=clock,
    )  # fmt: skip

    assert run.steps == len(run.rates) == 20
    assert run.rates[:3] == pytest.approx([0.025, 0.075, 0.1])  # updates at 0.5, 1.5, 2.5 s of a 2 s warm-up
    assert all(later <= earlier for earlier, later in zip(run.rates[2:], run.rates[3:]))
    assert run.rates[-1] < 0.001
