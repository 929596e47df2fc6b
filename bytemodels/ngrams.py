"""Hashed byte n-grams (the Byte Latent Transformer's hash n-gram embeddings, Pagnoni et al. 2024): the rows of
the embedding tables that the n-grams ending at each position select. Training and decoding both call
``hash_ngrams``, so a decoded byte's rows are those its training forward used."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bytemodels import tokens


def hash_ngrams(ids: Tensor, powers: Tensor, buckets: int) -> Tensor:
    """(batch, time) ids → (batch, time, lengths) table rows: for each n-gram length (a column of ``powers``, from
    ``ngram_powers``), a hash of the n ids ending at each position (PAD before the sequence) into ``buckets`` rows,
    offset by ``k * buckets`` for the k-th length. Causal: a position's rows depend on it and the ids before it
    only.

    The hash is a polynomial in the ids modulo a prime, ``sum((id + 1) * MULTIPLIER**back) % PRIME`` over the n ids
    (``back`` positions before), computed for every length at once: a few operations whatever the lengths, which
    keeps a decoding step's share small."""
    reach = powers.shape[0]
    windows = F.pad(ids, (reach - 1, 0), value=tokens.PAD_ID).unfold(-1, reach, 1)  # (..., time, reach), oldest first
    return hash_windows(windows, powers, buckets)


def hash_windows(windows: Tensor, powers: Tensor, buckets: int) -> Tensor:
    """(..., longest length) ids, oldest first → (..., lengths) table rows of the n-grams ending at each window's last
    id: ``hash_ngrams`` for one position (a decoding step hashes the last ids it has)."""
    code = ((windows + 1)[..., None] * powers).sum(-2) % _HASH_PRIME
    return code % buckets + torch.arange(powers.shape[1], device=windows.device) * buckets


def ngram_powers(lengths: tuple[int, ...]) -> Tensor:
    """(longest length, len(lengths)) int64, what ``hash_ngrams`` weighs the ids of a window with: for each length,
    MULTIPLIER**back modulo PRIME for the ids of its n-gram (the newest id last, back 0), 0 for older ids."""
    reach = max(lengths)
    backs = range(reach - 1, -1, -1)
    powers = torch.tensor([pow(_HASH_MULTIPLIER, back, _HASH_PRIME) for back in backs], dtype=torch.long)
    used = torch.tensor([[back < length for length in lengths] for back in backs])
    return powers[:, None] * used


# Below 2**31: a term (id + 1) * power is below 2**40, and a sum of 64 of them far inside int64.
_HASH_PRIME = 2_147_483_647
_HASH_MULTIPLIER = 1_000_003
