"""A --time-budget run plans its fine-tuning steps from measured step times, and re-measures them."""

from __future__ import annotations

import pytest

from onnxprune.roundtrip.training import StepPlan


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


def test_under_a_deadline_warm_up_and_decay_follow_the_steps_that_fit_not_the_cap():
    plan = StepPlan(1_000_000, deadline=100.0, started=0.0, warmup_fraction=0.05)

    plan.after(5, 5.0)  # 100 steps fit: 5 of warm-up, then the cosine decay

    assert plan.lr_factor(0) == 0.2
    assert plan.lr_factor(5) == 1.0
    assert plan.lr_factor(52) == pytest.approx(0.5, abs=0.02)
    assert plan.lr_factor(99) < 0.01


def test_without_warm_up_the_rate_starts_at_its_peak_and_decays_to_zero():
    plan = StepPlan(200, deadline=None, started=0.0)

    assert plan.lr_factor(0) == 1.0
    assert plan.lr_factor(100) == pytest.approx(0.5)
    assert plan.lr_factor(200) == pytest.approx(0.0)
