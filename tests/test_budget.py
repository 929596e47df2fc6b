"""The run budgets' arithmetic (bytemodels.budget) and the RNG states a resume restores (bytemodels.rng_state)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from bytemodels import rng_state
from bytemodels.budget import TimeBudget, parse_duration, step_limit


def test_step_limit_is_the_tighter_of_the_step_and_byte_budgets():
    assert step_limit(None, None, 128) is None
    assert step_limit(20, None, 128) == 20
    assert step_limit(None, 1000, 128) == 8  # a started step counts: ceil(1000 / 128)
    assert step_limit(5, 1000, 128) == 5 and step_limit(50, 1000, 128) == 8


def test_the_time_budget_aims_the_horizon_at_the_pace_after_two_steps():
    budget = TimeBudget(100.0, limit=None, first_step=10)  # resumed at step 10
    # Step 11 compiles (slow) and step 12 starts the clock: no horizon yet.
    assert budget.record(11, elapsed_s=30.0) is None and budget.record(12, elapsed_s=31.0) is None
    assert budget.record(14, elapsed_s=33.0) == 14 + 67  # 1 s a step since step 12, 67 s left
    assert budget.record(16, elapsed_s=39.0) == 16 + 30  # slower (2 s a step on average): sooner
    assert not budget.spent(99.9) and budget.spent(100.0)
    capped = TimeBudget(100.0, limit=40, first_step=0)
    capped.record(2, 2.0)
    assert capped.record(3, 3.0) == 40  # a step budget that ends first stays the horizon
    late = TimeBudget(10.0, limit=None, first_step=0)
    late.record(2, 2.0)
    assert late.record(3, 12.0) == 4  # past the budget, the horizon is the next step


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
