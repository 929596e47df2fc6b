"""Hashed byte n-grams (the Byte Latent Transformer's hash n-gram embeddings, Pagnoni et al. 2024): the rows of
the embedding tables that the n-grams ending at each position select, and optionally one more row for the word
so far. Training and decoding both call ``hash_ngrams``, so a decoded byte's rows are those its training forward
used."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bytemodels import tokens


def hash_ngrams(ids: Tensor, powers: Tensor, buckets: int, words: bool = False) -> Tensor:
    """(batch, time) ids → (batch, time, lengths) table rows: for each n-gram length (a column of ``powers``, from
    ``ngram_powers``), a hash of the n ids ending at each position (PAD before the sequence) into ``buckets`` rows,
    offset by ``k * buckets`` for the k-th length. With ``words`` the last column is the word so far instead (see
    ``hash_windows``). Causal: a position's rows depend on it and the ids before it only.

    The hash is a polynomial in the ids modulo a prime, ``sum((id + 1) * MULTIPLIER**back) % PRIME`` over the n ids
    (``back`` positions before), computed for every length at once: a few operations whatever the lengths, which
    keeps a decoding step's share small."""
    reach = powers.shape[0]
    windows = F.pad(ids, (reach - 1, 0), value=tokens.PAD_ID).unfold(-1, reach, 1)  # (..., time, reach), oldest first
    return hash_windows(windows, powers, buckets, words)


def hash_windows(windows: Tensor, powers: Tensor, buckets: int, words: bool = False) -> Tensor:
    """(..., longest length) ids, oldest first → (..., lengths) table rows of the n-grams ending at each window's last
    id: ``hash_ngrams`` for one position (a decoding step hashes the last ids it has).

    With ``words``, the last column hashes the word so far: the ids from the last separator before the newest id
    (that separator included) to the newest, within the column's reach. A separator is any id but a word byte
    (``is_word_byte``), as in SpaceByte's rule. So inside a word the row names the word's beginning with the space
    before it (" wor"), and on a space the whole word before it (" word "): a tokenizer's piece, whatever its
    length, where the n-grams see a fixed number of bytes."""
    terms = windows + 1
    if not words:
        code = (terms[..., None] * powers).sum(-2)
    else:
        separator = ~is_word_byte(windows[..., :-1])
        # Separators after each older id (the newest id does not count: a space ends the word it follows).
        later = separator.flip(-1).long().cumsum(-1).flip(-1) - separator.long()
        in_word = torch.cat((later == 0, torch.ones_like(separator[..., :1])), dim=-1)  # (..., reach)
        word = (terms * in_word * powers[:, -1]).sum(-1, keepdim=True)
        code = torch.cat(((terms[..., None] * powers[:, :-1]).sum(-2), word), dim=-1)
    code = code % _HASH_PRIME
    return code % buckets + torch.arange(powers.shape[1], device=windows.device) * buckets


def ngram_powers(lengths: tuple[int, ...], word_bytes: int = 0) -> Tensor:
    """(reach, columns) int64, what ``hash_ngrams`` weighs the ids of a window with: for each length,
    MULTIPLIER**back modulo PRIME for the ids of its n-gram (the newest id last, back 0), 0 for older ids; with
    ``word_bytes``, one more column reaching that many ids back, for the word so far (``hash_windows``)."""
    reaches = (*lengths, word_bytes) if word_bytes else tuple(lengths)
    backs = range(max(reaches) - 1, -1, -1)
    powers = torch.tensor([pow(_HASH_MULTIPLIER, back, _HASH_PRIME) for back in backs], dtype=torch.long)
    used = torch.tensor([[back < reach for reach in reaches] for back in backs])
    return powers[:, None] * used


def is_word_byte(ids: Tensor) -> Tensor:
    """Whether each id is part of a word: an ASCII letter or digit, or a byte of 128 or more (every byte of a UTF-8
    character beyond ASCII, so accented letters and other scripts stay inside their words). Spaces, punctuation,
    control bytes and the special ids separate words."""
    lower = ids | 0x20  # ASCII letters in lower case; digits unchanged
    return (((lower >= ord("a")) & (lower <= ord("z"))) | ((ids >= ord("0")) & (ids <= ord("9")))
            | ((ids >= 128) & (ids < 256)))


# Below 2**31: a term (id + 1) * power is below 2**40, and a sum of 64 of them far inside int64.
_HASH_PRIME = 2_147_483_647
_HASH_MULTIPLIER = 1_000_003
