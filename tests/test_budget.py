"""The run budgets' arithmetic (bytemodels.budget) and the RNG states a resume restores (bytemodels.rng_state)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from bytemodels import rng_state
from bytemodels.budget import StepPace, TimeBudget, compile_pays, parse_duration, step_limit


def test_step_limit_is_the_tighter_of_the_step_and_byte_budgets():
    assert step_limit(None, None, 128) is None
    assert step_limit(20, None, 128) == 20
    assert step_limit(None, 1000, 128) == 8  # a started step counts: ceil(1000 / 128)
    assert step_limit(5, 1000, 128) == 5 and step_limit(50, 1000, 128) == 8


def test_the_time_budget_keeps_a_reserve_and_aims_the_horizon_at_what_is_left():
    budget = TimeBudget(100.0, limit=None)
    # 40 s spent, steps of 1 s, 10 s kept for the end: 50 more steps.
    assert budget.horizon(20, elapsed_s=40.0, per_step_s=1.0, reserve_s=10.0) == 70
    assert not budget.time_up(88.0, next_s=2.0, reserve_s=10.0)  # ends the next step at 90, the end at 100
    assert budget.time_up(88.5, next_s=2.0, reserve_s=10.0)
    assert TimeBudget(100.0, limit=40).horizon(20, 40.0, 1.0, 10.0) == 40  # a step budget that ends first
    assert budget.horizon(20, elapsed_s=99.0, per_step_s=1.0, reserve_s=10.0) == 21  # past it: the next step


def test_the_pace_leaves_out_the_first_step_after_a_reset():
    pace = StepPace()
    assert pace.seconds is None
    pace.add(30.0)  # warming up or compiling
    assert pace.seconds == 30.0 and pace.count == 0
    pace.add(1.0), pace.add(3.0)
    assert pace.seconds == 2.0
    pace.reset()
    assert pace.seconds is None


def test_compiling_pays_only_when_what_is_left_makes_up_for_it():
    # 10 minutes left at 0.1 s a step: a minute of compiling, then 1.6x faster, trains more steps.
    assert compile_pays(0.1, 60.0, 1.6, time_left_s=600.0, steps_left=None) == (True, 8640, 6000)
    # 40 s left cannot even pay the compile.
    assert compile_pays(0.1, 120.0, 1.6, time_left_s=40.0, steps_left=None) == (False, 0, 400)
    # Without a time budget: the steps left decide whether it ends sooner.
    assert compile_pays(0.1, 60.0, 1.6, time_left_s=None, steps_left=100) == (False, 100, 100)
    assert compile_pays(0.1, 60.0, 1.6, time_left_s=None, steps_left=100_000)[0]
    # Both budgets: the step budget ends both within the time, so the sooner end decides.
    assert compile_pays(0.1, 60.0, 1.6, time_left_s=600.0, steps_left=100) == (False, 100, 100)
    assert compile_pays(0.1, 1.0, 1.6, time_left_s=600.0, steps_left=100) == (True, 100, 100)


def test_durations_in_any_unit_mix():
    assert parse_duration("1h30m") == 5400 and parse_duration("2d") == 172800 and parse_duration(" 90 ") == 90
    with pytest.raises(ValueError, match="time='1x' is not a duration"):
        parse_duration("1x")


def test_rng_states_come_back_exactly():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    tensors, json_state = rng_state.capture()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    rng_state.restore(tensors, json.loads(json.dumps(json_state)))  # as a checkpoint's state.json stores it
    drawn = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(drawn[0], expected[0]) and np.array_equal(drawn[1], expected[1]) and drawn[2] == expected[2]


def test_step_seeds_differ_by_seed_step_and_rank():
    seeds = {rng_state.step_seed(seed, step, rank) for seed in (0, 1) for step in (0, 1, 2) for rank in (0, 1)}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)
    assert rng_state.step_seed(0, 5, 0) == rng_state.step_seed(0, 5, 0)
