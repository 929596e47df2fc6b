"""Word blocks: transformer blocks that run only where a word has just ended, inside the local stage.

MEGABYTE's fixed patches cut words anywhere, and the global stage's context reaches a byte up to a patch late; on
text the bytes that begin a word carry half of the bits. SpaceByte (Slagle 2024) runs its global blocks at the
positions after a word instead. Here such blocks run beside the fixed patches, inside the local stage: after its
first block, the hidden states at the window's word ends (:func:`word_ends`, the first ``capacity`` of them) are
projected to the word blocks' width, run causally over the word ends alone (rotary positions counted in word ends)
and projected back onto the same positions. Every word's first byte so gets a summary of all the words before it in
the window, as a tokenized model's token would (docs/experiments.md, "Word blocks inside MEGABYTE's local stage").

Training and uncached forwards gather the word ends of each sequence; cached decoding gives the word blocks a
:class:`bytemodels.layers.StaticCache` with a slot per byte position of the window, readable only where the
position is a word end, so a decoding step has the same shapes whether or not its byte ends a word.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bytemodels import tokens
from bytemodels.layers import CacheView, SparseShift, Transformer
from bytemodels.ngrams import is_word_byte


def word_ends(ids: Tensor) -> Tensor:
    """(batch, time) ids → (batch, time) bool: the positions where the word blocks run.

    Position ``t`` predicts ``ids[:, t]`` from the ids before it, so it is a word end where ``ids[t - 1]`` separates
    words and ``ids[t - 2]`` is part of one (``is_word_byte``, the hashed word table's rule: SpaceByte's spacelike
    rule with every byte of 128 or more inside words), or where ``ids[t - 1]`` is PAD (before the sequence: a
    sequence's first position, or a left-padded row's first real one). Causal: position ``t`` reads ``ids[:, :t]``
    only."""
    one_before = F.pad(ids, (1, -1), value=tokens.PAD_ID)
    two_before = F.pad(ids, (2, -2), value=tokens.PAD_ID)
    return (one_before == tokens.PAD_ID) | (~is_word_byte(one_before) & is_word_byte(two_before))


class WordBlocks(nn.Module):
    """``layers`` blocks of width ``width`` over the word ends of a window, between projections in from the local
    width ``dim`` and back out to it.

    Added to the local stage's stream after its first block (:func:`after_first_block`); the first ``capacity`` word
    ends of a window run (a window of English text has about one per 5 bytes), the later ones get nothing. With
    ``shift``, token shift runs over the word ends (each reads the word end before it), as it does over bytes in the
    stages."""

    def __init__(self, dim: int, width: int, layers: int, heads: int, mlp_ratio: float, dropout: float,
                 rope_base: float, eps: float, shift: bool, qk_norm: bool, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.project_in = nn.Linear(dim, width, bias=False)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, dropout, rope_base, eps, shift, qk_norm)
        self.project_out = nn.Linear(width, dim, bias=False)

    def forward(self, x: Tensor, ids: Tensor) -> Tensor:
        """``x`` (batch * groups, group, d) the local stream of whole sequences, their groups in order; ``ids``
        (batch, time) the sequences → ``x`` with the word blocks' output added at the word ends."""
        batch = ids.shape[0]
        ends = word_ends(ids)
        capacity = min(self.capacity, ids.shape[1])
        # Each row's word ends in order, then its other positions: a stable sort of ~ends, cut at the capacity.
        order = torch.sort((~ends).to(torch.uint8), dim=1, stable=True).indices[:, :capacity]
        real = torch.arange(capacity, device=ids.device) < ends.sum(dim=1, keepdim=True)  # (batch, capacity)
        stream = x.reshape(batch, -1, x.shape[-1])  # (batch, time, d)
        where = order[..., None].expand(-1, -1, stream.shape[-1])
        words = self.project_out(self.transformer(self.project_in(stream.gather(1, where))))
        words = (words * real[..., None].to(words.dtype)).to(stream.dtype)  # the rows after the last end add nothing
        return stream.scatter_add(1, where, words).reshape(x.shape)

    def cached(self, x: Tensor, cache: CacheView, rope: tuple[Tensor, Tensor], active: Tensor,
               shift: SparseShift) -> Tensor:
        """``x`` (batch, time, d) the local stream at consecutive byte positions, each in its own slot of ``cache``
        (whose ``readable`` already says which slots are word ends); ``rope`` cos/sin (batch, 1, time, head_dim / 2)
        at each position's rank among the word ends; ``active`` (batch, time) the positions that are word ends
        within the capacity, ``shift`` the word end before each → ``x`` with the word blocks' output added there."""
        return x + self.cached_output(x, cache, rope, active, shift)

    def cached_output(self, x: Tensor, cache: CacheView, rope: tuple[Tensor, Tensor], active: Tensor,
                      shift: SparseShift) -> Tensor:
        """What :meth:`cached` adds to ``x``: the word blocks' output at the active positions, zeros elsewhere."""
        words = self.project_out(self.transformer(self.project_in(x), cache, rope=rope, sparse_shift=shift))
        return words * active[..., None].to(words.dtype)

    def track(self, window: Tensor, count: Tensor, readable: Tensor, slots: Tensor, table: tuple[Tensor, Tensor],
              real: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, SparseShift]:
        """Cached decoding's bookkeeping for the byte positions ``slots`` (time,), consecutive: which are word ends
        within the capacity, made readable in ``readable`` (batch, size); their rotary angles from ``table`` (cos,
        sin at word-end ranks ``0 .. capacity - 1``); ``count`` (batch,) the word ends before them, advanced here.

        ``window`` (batch, time + 2) holds the two ids before the first position, then the ids before the others (its
        last id, a position's own, is never read); ``real`` (batch, time), if given, leaves out a row's left padding.
        Returns cos, sin (batch, 1, time, head_dim / 2), ``active`` (batch, time) and where token shift reads from
        (a ``SparseShift``): what :meth:`cached` takes."""
        ends = word_ends(window)[:, 2:]
        if real is not None:
            ends = ends & real
        counted = ends.long().cumsum(dim=1)
        ranks = count[:, None] + counted - ends.long()
        active = ends & (ranks < self.capacity)
        count.add_(counted[:, -1])
        readable.index_copy_(1, slots, active)
        # Token shift runs over the word ends: each reads the newest word end before it.
        marked = torch.where(active, torch.arange(active.shape[1], device=active.device), -1)
        newest = marked.cummax(dim=1).values  # the newest word end at or before each position
        shift = SparseShift(F.pad(newest, (1, -1), value=-1), newest[:, -1])
        ranks = ranks.clamp(max=self.capacity - 1)  # past the capacity a position is not active: any angle does
        return table[0][ranks][:, None], table[1][ranks][:, None], active, shift

    def adder(self, keys: list[Tensor], values: list[Tensor], last_attn: list[Tensor], last_mlp: list[Tensor],
              slots: Tensor, readable: Tensor, cos: Tensor, sin: Tensor, active: Tensor,
              shift: SparseShift, output_only: bool = False) -> Callable[[Tensor], Tensor]:
        """:meth:`cached` (or with ``output_only`` :meth:`cached_output`) as a function of the local stream, from
        the cache's tensors (a :class:`CacheView`'s fields) and what :meth:`track` returned: what the decoder hands
        the local stage (a compiled step takes tensors, not a view)."""
        view = CacheView(keys, values, last_attn, last_mlp, slots, readable)
        run = self.cached_output if output_only else self.cached
        return lambda hidden: run(hidden, view, (cos, sin), active, shift)

    def rope_table(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """cos/sin (capacity, head_dim / 2) at ranks ``0 .. capacity - 1``: rotary positions counted in word ends."""
        return self.transformer.rotary.at(0, self.capacity, device)


def after_first_block(add: Callable[[Tensor], Tensor]) -> Callable[[int, Tensor], Tensor]:
    """A ``Transformer.forward`` ``after_block`` hook that applies ``add`` to the first block's output."""
    def after_block(index: int, hidden: Tensor) -> Tensor:
        return add(hidden) if index == 0 else hidden

    return after_block
