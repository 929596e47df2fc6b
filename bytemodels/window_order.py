"""The order in which training reads its windows: shuffled epochs, each a keyed permutation.

A run's ``i``-th training window is a pure function of ``(seed, i)``: epoch ``e`` lays a grid of window starts
``stride`` apart over the data (under a random shift, so the cuts fall elsewhere each time) and visits it in a
random order, so every part of the data is read once per epoch. Drawing each window at random instead reads some
stretches of text twice as often as others by the fifth pass, and a model that reads its data many times learns
less from that uneven reading (docs/experiments.md, "Shuffled epochs").

The permutation is a Feistel network computed per index rather than a shuffled array, so its memory is that of the
batch, never that of the data set.
"""

from __future__ import annotations

import numpy as np

_ROUNDS = 4
_ORDER_SALT = 0xE90C


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 values (wrapping arithmetic): every input bit reaches every output bit."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def _feistel(values: np.ndarray, half_bits: int, keys: np.ndarray) -> np.ndarray:
    """One keyed permutation of ``[0, 4 ** half_bits)``: a balanced Feistel network of ``len(keys)`` rounds."""
    low = np.uint64((1 << half_bits) - 1)
    left, right = values >> np.uint64(half_bits), values & low
    for key in keys:
        left, right = right, left ^ (_mix(right ^ key) & low)
    return (left << np.uint64(half_bits)) | right


def permute(positions: np.ndarray, size: int, keys: np.ndarray) -> np.ndarray:
    """``positions`` (each in ``[0, size)``) under the permutation of ``[0, size)`` that ``keys`` (uint64) choose.

    The network permutes the smallest power of 4 at or above ``size``; a value that lands outside ``[0, size)`` is
    sent through again until it lands inside (cycle walking), which keeps the map one-to-one on ``[0, size)``."""
    if size < 1:
        raise ValueError(f"size={size} must be at least 1")
    half_bits = max(((size - 1).bit_length() + 1) // 2, 1)
    values = _feistel(np.asarray(positions, dtype=np.uint64), half_bits, keys)
    outside = values >= np.uint64(size)
    while outside.any():  # the domain is at most 4x size: a few walks per value on average
        values[outside] = _feistel(values[outside], half_bits, keys)
        outside = values >= np.uint64(size)
    return values.astype(np.int64)


def epoch_choices(seed: int, indices: np.ndarray, num_choices: int, stride: int) -> np.ndarray:
    """The choices (window starts or window numbers, ``0 .. num_choices - 1``) of training windows ``indices``.

    ``stride`` is the distance between two windows of one epoch: ``seq_len`` for a stream a window may start
    anywhere in, 1 for a fixed set of windows (then an epoch is that set in a random order)."""
    if num_choices < 1 or stride < 1:
        raise ValueError(f"num_choices={num_choices} and stride={stride} must be at least 1")
    indices = np.asarray(indices, dtype=np.int64)
    per_epoch = max(num_choices // stride, 1)
    epochs, positions = np.divmod(indices, per_epoch)
    # The grid's shift: under one stride, and small enough for the last window of the epoch to start in range.
    shift_limit = max(min(stride, num_choices - (per_epoch - 1) * stride), 1)
    out = np.empty(len(indices), dtype=np.int64)
    for epoch in np.unique(epochs).tolist():
        rng = np.random.default_rng([seed, epoch, _ORDER_SALT])
        keys = rng.integers(0, 2**63, size=_ROUNDS, dtype=np.uint64)
        shift = int(rng.integers(0, shift_limit))
        mine = epochs == epoch
        out[mine] = permute(positions[mine], per_epoch, keys) * stride + shift
    return out


def step_choices(seed: int, step: int, batch_size: int, num_choices: int, stride: int, rank: int = 0,
                 world_size: int = 1) -> np.ndarray:
    """Rank ``rank``'s ``batch_size`` choices of training step ``step``: the step reads the run's windows
    ``step * B .. (step + 1) * B - 1`` for a global batch of ``B = batch_size * world_size``, and each rank its own
    slice of them, so any split of one global batch across ranks reads the same windows."""
    first = (step * world_size + rank) * batch_size
    return epoch_choices(seed, np.arange(first, first + batch_size), num_choices, stride)
