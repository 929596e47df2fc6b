"""Shared test fixtures: tiny configurations and the location of the offline data in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# One thread: the tests' tiny models run fastest (and reproducibly) on one, and a busy machine's
# cores are not oversubscribed.
torch.set_num_threads(1)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a skip that says why when the checkout has none beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"offline data not found at {SHARED_DATA} (the ../shared folder beside the checkout)")
    return SHARED_DATA
