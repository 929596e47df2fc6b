"""Helpers shared by the model and generation tests (imported by name: tests/ is on the path under pytest)."""

from __future__ import annotations

import torch


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
