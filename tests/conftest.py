"""Shared test fixtures: tiny configurations and the location of the offline data in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Two threads at most: CI machines have two cores and the suite must stay quick and predictable.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a skip that says why when the checkout has none beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"offline data not found at {SHARED_DATA} (the ../shared folder beside the checkout)")
    return SHARED_DATA
