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


def use_input_skip(model: torch.nn.Module, seed: int = 4) -> torch.nn.Module:
    """Give every stage's input-skip scales random values, as training does: they start at zero, where the
    mix is the identity and tests of caching or causality would not exercise it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            scales = getattr(module, "skip_scales", None)
            if isinstance(scales, torch.nn.Parameter):
                scales.copy_(0.3 * torch.randn(scales.shape, generator=generator))
    return model


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a skip that says why when the checkout has none beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"offline data not found at {SHARED_DATA} (the ../shared folder beside the checkout)")
    return SHARED_DATA
