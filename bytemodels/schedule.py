"""Learning-rate schedules: pure functions of the optimizer step, so a resumed run matches exactly."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear", "wsd", "constant")
#: ``wsd``'s default decay fraction, one for the trainer and the benchmarks: the last fifth of the steps.
WSD_DECAY_FRACTION = 0.2


def learning_rate(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int | None,
                  schedule: str = "cosine", decay_fraction: float = WSD_DECAY_FRACTION) -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    Linear warmup over ``warmup_steps``, then ``cosine`` decay to ``min_lr`` at ``total_steps``,
    ``linear`` decay to ``min_lr`` at ``total_steps`` (with ``min_lr=0`` the "decay to zero" that beats a
    cosine to a tenth of the peak at a fixed budget, Bergsma et al. 2025), ``wsd`` (warmup-stable-decay:
    hold ``lr``, then decay linearly to ``min_lr`` over the last ``decay_fraction`` of the steps) or
    ``constant``. With ``total_steps=None`` (horizon not known yet)
    the rate after warmup is ``lr``; past ``total_steps`` it is ``min_lr``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if schedule == "constant" or total_steps is None:
        return lr
    if step >= total_steps:
        return min_lr
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
    fraction = 1.0 if schedule == "linear" else decay_fraction
    decay_start = max(warmup_steps, total_steps - round(fraction * total_steps))
    if step < decay_start:
        return lr
    progress = (step - decay_start) / max(total_steps - decay_start, 1)
    return lr + (min_lr - lr) * progress
