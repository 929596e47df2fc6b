"""8-bit sample formats in numpy: mu-law companding (mu = 255) and plain linear 8-bit.

Mu-law spends its 256 levels logarithmically, so quiet sounds keep detail that linear 8-bit loses;
it is the continuous mu = 255 curve of ITU-T G.711 (as used by WaveNet), not G.711's bit layout.
Written with numpy because ``audioop`` left the standard library in Python 3.13.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MU", "mulaw_decode", "mulaw_encode", "linear8_decode", "linear8_encode"]

MU = 255.0


def mulaw_encode(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] (clipped) -> uint8 codes; 0 and 255 are the extremes."""
    x = np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0)
    y = np.sign(x) * np.log1p(MU * np.abs(x)) / np.log1p(MU)  # companded, in [-1, 1]
    return np.rint((y + 1.0) * 127.5).astype(np.uint8)


def mulaw_decode(codes: np.ndarray) -> np.ndarray:
    """uint8 codes -> float32 samples in [-1, 1]; the inverse of ``mulaw_encode`` up to quantisation."""
    y = np.asarray(codes, dtype=np.float64) / 127.5 - 1.0
    x = np.sign(y) * np.expm1(np.abs(y) * np.log1p(MU)) / MU
    return x.astype(np.float32)


def linear8_encode(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] (clipped) -> unsigned 8-bit codes, 128 for silence (as WAV PCM_U8)."""
    x = np.asarray(samples, dtype=np.float64)
    return np.clip(np.rint(x * 128.0) + 128.0, 0, 255).astype(np.uint8)


def linear8_decode(codes: np.ndarray) -> np.ndarray:
    """Unsigned 8-bit codes -> float32 samples in [-1, 1)."""
    return ((np.asarray(codes, dtype=np.float32) - 128.0) / 128.0).astype(np.float32)
