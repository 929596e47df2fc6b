"""Transformer building blocks shared by every stage: RMSNorm, rotary attention with a KV cache, MLP."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no bias, no mean subtraction)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # The gain in the input's dtype: under bf16 autocast a float32 gain keeps PyTorch off its fused kernel
        # (and it warns about it on every call).
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class Rotary(nn.Module):
    """Rotary position embedding (RoPE): angles for given positions, applied to queries and keys."""

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        angles = torch.outer(positions.to(self.inv_freq.dtype), self.inv_freq)  # (time, head_dim/2)
        return angles.cos(), angles.sin()

    def at(self, start: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """cos/sin for positions ``start .. start+length-1`` from a table kept between calls: cached
        decoding asks for one position per step, and recomputing it costs more than the lookup; in training,
        compiled, the angles would be recomputed inside the backward's fused kernels (a vector sine and cosine per
        element)."""
        table = getattr(self, "_table", None)
        if table is None or table[0].shape[0] < start + length or table[0].device != device:
            size = max(2 * (start + length), 256)
            # Plain tensors even when built while generating: training may read the table later.
            with torch.inference_mode(False), torch.no_grad():
                table = self.forward(torch.arange(size, device=device))
            self._table = table
        return table[0][start:start + length], table[1][start:start + length]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (first half, second half) of each head's channels of ``x`` (batch, heads, time, head_dim)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.to(x.dtype)


class CacheView(NamedTuple):
    """One call's view of a :class:`StaticCache`: the buffers of every block (one tensor per block and kind,
    updated in place) and the slots the call's positions go to. All tensors, so a compiled decoding step
    takes it apart into its inputs."""

    keys: list[Tensor]
    """Per block (batch, heads, size, head_dim): rotated keys, one slot per position."""
    values: list[Tensor]
    """Per block (batch, heads, size, head_dim)."""
    last_attn: list[Tensor]
    """Per block (batch, dim): the attention's input stream at the newest position (for token shift)."""
    last_mlp: list[Tensor]
    """Per block (batch, dim): the MLP's input stream at the newest position."""
    slots: Tensor
    """(time,) the consecutive slots of the call's positions."""
    readable: Tensor
    """(batch, size) the slots each row may attend to at all (not its left padding, not a missing prefix)."""


class StaticCache:
    """Keys, values and token-shift inputs of one stage's blocks in ``size`` fixed slots (gpt-fast's static
    KV cache): a prompt's prefill writes a chunk of slots, a decoding step one, with the same shapes every step.

    The current group's units go to slots ``offset, offset + 1, ...``; the slots before ``offset`` hold the
    group before it (the local stage with cross-patch attention: ``offset`` is the group size). A stage whose
    group outgrows the slots (the global stage asked for more than it was sized for) gets twice as many."""

    def __init__(self, blocks: int, heads: int, dim: int, size: int, offset: int, readable: Tensor,
                 kv_dtype: torch.dtype, stream_dtype: torch.dtype) -> None:
        batch, device = readable.shape[0], readable.device
        if readable.shape[1] != size or offset > size:
            raise ValueError(f"{size} slots cannot have {offset} before the group ({readable.shape[1]} readable)")
        head_dim = dim // heads if heads else 0
        # One tensor per block and kind, not views of one: compiled, an in-place write into a view of an input
        # copies the whole input twice per call, into a whole input it writes one slot.
        self.keys = [torch.zeros(batch, heads, size, head_dim, dtype=kv_dtype, device=device) for _ in range(blocks)]
        self.values = [torch.zeros_like(buffer) for buffer in self.keys]
        self.last_attn = [torch.zeros(batch, dim, dtype=stream_dtype, device=device) for _ in range(blocks)]
        self.last_mlp = [torch.zeros_like(buffer) for buffer in self.last_attn]
        self.readable = readable.contiguous()  # read every call: dense, not an expanded view
        self.offset = offset
        self.length = 0  # units of the current group in the slots
        self._slot_index: list[Tensor] = []  # (1,) index tensors, made once per slot

    def view(self, time: int) -> CacheView:
        """The next ``time`` slots (grown if needed), for one call; :meth:`advance` once it has run."""
        first = self.offset + self.length
        while first + time > self.readable.shape[1]:
            self._grow()
        if time == 1:
            while len(self._slot_index) <= first:
                self._slot_index.append(torch.tensor([len(self._slot_index)], device=self.readable.device))
            slots = self._slot_index[first]
        else:
            slots = torch.arange(first, first + time, device=self.readable.device)
        return CacheView(self.keys, self.values, self.last_attn, self.last_mlp, slots, self.readable)

    def advance(self, time: int) -> None:
        self.length += time

    def next_group(self, follows: bool, prefix_real: Tensor) -> None:
        """Start the next group: with slots for a prefix and ``follows`` (the group just completed precedes
        it), that group becomes the prefix; ``prefix_real`` (batch,) is False where it lies in a row's left
        padding. Otherwise the group starts with no prefix and, for token shift, no unit before it."""
        real = prefix_real if self.offset and follows else torch.zeros_like(prefix_real)
        if self.offset and follows:
            for buffer in self.keys + self.values:
                buffer[:, :, :self.offset] = buffer[:, :, self.offset:2 * self.offset]
        self.readable = torch.cat((real[:, None].expand(-1, self.offset), self.readable[:, self.offset:]), dim=1)
        self.length = 0
        keep = real.to(self.last_attn[0].dtype)[:, None] if self.last_attn else None
        for last in self.last_attn + self.last_mlp:  # token shift at the group's first unit: only a real one
            last.mul_(keep)

    def _grow(self) -> None:
        self.keys = [torch.cat((buffer, torch.zeros_like(buffer)), dim=2) for buffer in self.keys]
        self.values = [torch.cat((buffer, torch.zeros_like(buffer)), dim=2) for buffer in self.values]
        self.readable = torch.cat((self.readable, torch.ones_like(self.readable)), dim=1)


class BlockCache(NamedTuple):
    """One block's part of a :class:`CacheView`, and what every block of the call shares."""

    keys: Tensor
    values: Tensor
    last_attn: Tensor
    last_mlp: Tensor
    slots: Tensor
    """(time,) where the call's keys and values go."""
    allowed: Tensor
    """(batch, 1, time, size) the slots each new position attends to."""
    has_previous: Tensor | None
    """(batch, time) whether the position before each is real (token shift reads zeros otherwise); None for
    one position, whose token before is real or was zeroed in the cache (:meth:`StaticCache.next_group`)."""
    sparse_shift: SparseShift | None = None
    """For a stream whose real positions are a subset (the word blocks'), where token shift reads from."""


class SparseShift(NamedTuple):
    """Token shift over a subset of a call's positions (the word ends, for the word blocks): each position reads the
    newest real position before it, and the cache's token-shift state becomes the call's newest real position."""

    sources: Tensor
    """(batch, time) the index of the real position before each, among the call's; -1: the cache's newest."""
    newest: Tensor
    """(batch,) the index of the call's newest real position; -1: none (the cache's state stays)."""


def causal_mask(time: int, device: torch.device) -> Tensor:
    """(time, time) boolean mask: each position attends to itself and the positions before it."""
    return torch.ones(time, time, dtype=torch.bool, device=device).tril()


class GroupLayout(NamedTuple):
    """Rows of a batch that are consecutive groups of longer sequences (the local stage's patches), for
    cross-patch attention: each group also attends to the whole group before it in its sequence."""

    groups: int
    """Groups per sequence; rows ``s * groups .. (s + 1) * groups - 1`` are sequence ``s`` in order."""
    allowed: Tensor
    """(batch * groups, 1, time, 2 * time) attention mask over [previous group's keys, own keys]."""
    rope: tuple[Tensor, Tensor]
    """cos/sin (groups, 1, time, head_dim / 2) at byte positions counted across the groups."""

    @classmethod
    def build(cls, rows: int, groups: int, time: int, rotary: "Rotary", device: torch.device) -> "GroupLayout":
        causal = causal_mask(time, device)
        has_previous = (torch.arange(groups, device=device) > 0)[:, None, None].expand(groups, time, time)
        allowed = torch.cat((has_previous, causal.expand(groups, time, time)), dim=-1)  # (groups, time, 2 time)
        allowed = allowed.repeat(rows // groups, 1, 1)[:, None]
        cos, sin = rotary.at(0, groups * time, device)
        return cls(groups, allowed, (cos.view(groups, 1, time, -1), sin.view(groups, 1, time, -1)))


def masked_attention(q: Tensor, keys: Tensor, values: Tensor, allowed: Tensor, dropout: float) -> Tensor:
    """Attention of ``q`` to ``keys``/``values`` where the boolean mask ``allowed`` says so."""
    if attention_written_out(q, keys):
        return cpu_bf16_attention(q, keys, values, allowed, dropout)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, dropout_p=dropout)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout: float) -> Tensor:
    """Causal attention of ``q`` to ``k``/``v`` (batch, heads, time, head_dim), each position to itself and those
    before it."""
    if attention_written_out(q, k):
        return cpu_bf16_attention(q, k, v, causal_mask(q.shape[-2], q.device), dropout)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)


#: Longest run of keys that bf16 attention on a CPU is written out for: its scores take memory that grows with the
#: square of the length, where PyTorch's kernel needs none.
WRITTEN_OUT_KEYS = 1024


def attention_written_out(q: Tensor, keys: Tensor) -> bool:
    """Whether :func:`cpu_bf16_attention` runs instead of PyTorch's kernel: for bf16 queries on a CPU (bf16 autocast
    makes the projections' outputs bf16) and at most ``WRITTEN_OUT_KEYS`` keys."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and keys.shape[-2] <= WRITTEN_OUT_KEYS


def cpu_bf16_attention(q: Tensor, keys: Tensor, values: Tensor, allowed: Tensor, dropout: float) -> Tensor:
    """Attention written out as two bf16 matrix products around an fp32 softmax.

    PyTorch's CPU kernel for bf16 ``scaled_dot_product_attention`` is slow for the short sequences a byte model
    attends over (a forward and backward pass took 3x the time of this one for the global stage's 128 patches and
    11x for the local stage's 16 keys); written out, the products run at bf16 speed and the compiler fuses the rest."""
    scores = (q @ keys.mT).float() * q.shape[-1] ** -0.5
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    if dropout:
        weights = F.dropout(weights, dropout)
    return weights.to(values.dtype) @ values


class Attention(nn.Module):
    """Causal multi-head self-attention through ``scaled_dot_product_attention`` (flash kernels on GPU), written out
    in bf16 on a CPU (:func:`cpu_bf16_attention`)."""

    def __init__(self, dim: int, heads: int, dropout: float, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.qkv.fused_matrices = 3  # queries, keys and values: Muon orthogonalises each on its own
        self.out = nn.Linear(dim, dim, bias=False)
        self.dropout = dropout
        # RMSNorm of each head's queries and keys (one gain per channel, shared by the heads): bounded
        # attention logits, so a higher learning rate stays stable.
        self.q_norm = RMSNorm(dim // heads, eps) if qk_norm else None
        self.k_norm = RMSNorm(dim // heads, eps) if qk_norm else None

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` (batch, time, dim) → queries, keys, values (batch, heads, time, head_dim), before rotary."""
        batch, time, _ = x.shape
        q, k, v = self.qkv(x).view(batch, time, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: BlockCache | None = None,
                layout: GroupLayout | None = None) -> Tensor:
        """``x`` (batch, time, dim): a whole causal sequence; or, with ``cache``, positions written into the
        cache's slots that attend to the slots it allows (a prompt's chunk, or one decoding step).

        ``layout`` (no cache): the rows of ``x`` are consecutive groups, and each also attends to the
        group before it (cross-patch attention); ``rope`` is then unused."""
        q, k, v = self.project(x)
        dropout = self.dropout if self.training else 0.0
        if layout is not None:
            q, k = (rotate_groups(t, layout) for t in (q, k))
            keys = torch.cat((previous_group(k, layout.groups), k), dim=2)
            values = torch.cat((previous_group(v, layout.groups), v), dim=2)
            y = masked_attention(q, keys, values, layout.allowed, dropout)
        elif cache is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            cache.keys.index_copy_(2, cache.slots, k if k.dtype == cache.keys.dtype else k.to(cache.keys.dtype))
            cache.values.index_copy_(2, cache.slots, v if v.dtype == cache.keys.dtype else v.to(cache.keys.dtype))
            y = F.scaled_dot_product_attention(q, cache.keys, cache.values, attn_mask=cache.allowed,
                                               dropout_p=dropout)
        else:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            y = causal_attention(q, k, v, dropout)
        return self.out(rearrange(y, "b h t d -> b t (h d)"))


def previous_group(x: Tensor, groups: int) -> Tensor:
    """``x`` (batch * groups, ...) with rows in sequence order → each row's value for the group before
    it in its sequence (zeros for a sequence's first group)."""
    grouped = x.reshape(x.shape[0] // groups, groups, -1)
    return F.pad(grouped, (0, 0, 1, -1)).view(x.shape)  # shift by one group, cropping the last


def rotate_groups(x: Tensor, layout: GroupLayout) -> Tensor:
    """Rotary positions for ``x`` (batch * groups, heads, time, head_dim) counted across each sequence's groups."""
    grouped = x.view(-1, layout.groups, *x.shape[1:])
    return apply_rotary(grouped, *layout.rope).view(x.shape)


def relu_squared(x: Tensor) -> Tensor:
    """Squared ReLU (So et al. 2021, "Primer")."""
    return F.relu(x).square()


class MLP(nn.Module):
    """Two Linear layers with squared ReLU between them (Primer's MLP)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(relu_squared(self.up(x)))


def token_shift(x: Tensor, last: Tensor | None, has_previous: Tensor | None) -> Tensor:
    """Replace the second half of each position's channels by those of the position before it
    (RWKV's token shift, as in MEGABYTE-pytorch): every layer sees the previous token directly.

    ``x`` (batch, time, dim); ``last`` (batch, dim) is the token before ``x[:, 0]`` (None: zeros);
    ``has_previous`` (batch, time) zeroes the shifted half where the previous token is not real."""
    half = x.shape[-1] // 2
    moved = x[..., half:]
    before = moved.new_zeros(moved.shape[0], 1, moved.shape[-1]) if last is None else last[:, None, half:]
    if before.dtype != moved.dtype:
        before = before.to(moved.dtype)
    previous = before if x.shape[1] == 1 else torch.cat((before, moved[:, :-1]), dim=1)
    if has_previous is not None:
        previous = previous * has_previous[..., None].to(previous.dtype)
    return torch.cat((x[..., :half], previous), dim=-1)


def sparse_token_shift(x: Tensor, last: Tensor, shift: SparseShift) -> Tensor:
    """:func:`token_shift` over a subset of the positions of ``x`` (batch, time, dim): the second half of each
    position's channels from the real position before it (``shift.sources``), or from ``last`` (batch, dim), the
    newest real position of an earlier call, which becomes the newest real position of this one."""
    half = x.shape[-1] // 2
    with_last = torch.cat((last[:, None].to(x.dtype), x), dim=1)  # index i + 1 holds position i, index 0 ``last``
    previous = with_last[..., half:].gather(1, (shift.sources + 1)[..., None].expand(-1, -1, x.shape[-1] - half))
    newest = with_last.gather(1, (shift.newest + 1)[:, None, None].expand(-1, 1, x.shape[-1]))[:, 0]
    last.copy_(newest)
    return torch.cat((x[..., :half], previous), dim=-1)


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x)); with
    ``shift``, each sublayer reads the token-shifted stream (see :func:`token_shift`).

    The one implementation for training (a whole sequence), a prompt's prefill (a chunk written into a
    :class:`StaticCache`) and decoding (one position)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, eps: float, shift: bool,
                 qk_norm: bool) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim, eps)
        self.attn = Attention(dim, heads, dropout, qk_norm, eps)
        self.mlp_norm = RMSNorm(dim, eps)
        self.mlp = MLP(dim, int(mlp_ratio * dim))
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()  # no op per decoding step without dropout
        self.shift = shift

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: BlockCache | None = None,
                layout: GroupLayout | None = None) -> Tensor:
        attn_input = self._shifted(x, cache.last_attn if cache is not None else None, cache, layout)
        x = x + self.drop(self.attn(self.attn_norm(attn_input), rope, cache, layout))
        mlp_input = self._shifted(x, cache.last_mlp if cache is not None else None, cache, layout)
        return x + self.drop(self.mlp(self.mlp_norm(mlp_input)))

    def _shifted(self, x: Tensor, last: Tensor | None, cache: BlockCache | None,
                 layout: GroupLayout | None) -> Tensor:
        """``x`` token-shifted (with ``shift``): the token before ``x[:, 0]`` is the cache's newest (updated
        here to ``x``'s last), or with a group layout the last token of the group before (cross-patch)."""
        if not self.shift:
            return x
        if layout is not None:
            return token_shift(x, previous_group(x[:, -1], layout.groups), None)
        if cache is None:
            return token_shift(x, None, None)
        if cache.sparse_shift is not None:
            return sparse_token_shift(x, last, cache.sparse_shift)
        shifted = token_shift(x, last, cache.has_previous)
        last.copy_(x[:, -1])
        return shifted


#: How much faster than other weights the input-skip scales move: Adam moves every parameter by about the
#: learning rate per step, which is slow for a scale that starts at 0 or 1, so each is stored divided by this.
#: 3 was best of 1, 3, 10 and 30 after 300 steps on TinyStories (docs/experiments.md).
INPUT_SKIP_GAIN = 3.0

#: Byte embeddings are stored divided by this (:class:`ScaledEmbedding`): embeddings want a far higher learning
#: rate than matrices (as in the nanoGPT speedruns); 30 was best of 1, 3, 10, 30 and 100 (docs/experiments.md).
EMBED_GAIN = 30.0

#: The output layer's weight is stored divided by this (:class:`ScaledLinear`); 8 was best of 0.5 to 8 in short
#: runs and level with 4 in the TinyStories recipe (docs/experiments.md).
HEAD_GAIN = 8.0


class Transformer(nn.Module):
    """A stack of causal blocks with rotary positions and a final norm; one per MEGABYTE stage.

    Every block reads a learned mix of the residual stream and the stack's own input:
    ``x ← a·x + b·x0`` before block ``i``, one ``(a, b)`` per block starting at (1, 0) (as in the nanoGPT
    speedruns), so deep blocks keep direct access to the embeddings."""

    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: float, dropout: float,
                 rope_base: float, eps: float, shift: bool, qk_norm: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout, eps, shift, qk_norm)
                                    for _ in range(layers))
        self.rotary = Rotary(dim // heads, rope_base)
        self.norm = RMSNorm(dim, eps)
        # Row 0: a - 1, row 1: b, each divided by INPUT_SKIP_GAIN (see there); zeros are the plain stack.
        self.skip_scales = nn.Parameter(torch.zeros(2, layers))

    def mix_input(self, index: int, x: Tensor, inputs: Tensor) -> Tensor:
        """Block ``index``'s input: ``x`` with the stack's ``inputs`` mixed in (input skip)."""
        stream, skip = (INPUT_SKIP_GAIN * self.skip_scales[:, index]).to(x.dtype).unbind()
        return (1 + stream) * x + skip * inputs

    def forward(self, x: Tensor, cache: CacheView | None = None, groups: int | None = None,
                rope: tuple[Tensor, Tensor] | None = None,
                after_block: Callable[[int, Tensor], Tensor] | None = None,
                sparse_shift: SparseShift | None = None) -> Tensor:
        """``x`` (batch, time, dim) → (batch, time, dim).

        ``cache``: ``x`` continues what the cache holds, its positions go to ``cache.slots`` and ``rope``
        (cos, sin (time, head_dim / 2)) gives their rotary angles (cross-patch attention counts them in bytes
        across groups). Without it ``x`` is a whole sequence at positions 0, 1, ...; with ``groups`` its rows
        are consecutive groups, ``groups`` per sequence, and each group also attends to the one before it
        (cross-patch attention), rotary positions counting across the groups. ``after_block(index, x)``, if
        given, replaces each block's output (the word blocks run there: ``bytemodels.words``); ``sparse_shift``, with
        ``cache``, shifts tokens over a subset of the positions (see :class:`SparseShift`)."""
        time = x.shape[1]
        layout = None
        if groups is not None:
            layout = GroupLayout.build(x.shape[0], groups, time, self.rotary, x.device)
        elif cache is None:
            rope = self.rotary.at(0, time, x.device)
        shared = None
        if cache is not None:
            slot = torch.arange(cache.readable.shape[1], device=x.device)
            query = cache.slots[:, None]
            # Causal over the slots, within what each row may read; a query in a row's left padding (or, in the word
            # blocks, at a position that is no word end) still sees itself, so its (ignored) output stays finite.
            allowed = (slot <= query) & (cache.readable[:, None, :] | (slot == query))  # (batch, time, size)
            if time == 1:  # a decoding step: the cache zeroed a token before it that is not real
                has_previous = None
            else:
                before = cache.slots - 1
                has_previous = (before >= 0) & cache.readable[:, before.clamp(min=0)]  # (batch, time)
            shared = (cache.slots, allowed[:, None], has_previous, sparse_shift)
        inputs = x
        for index, block in enumerate(self.blocks):
            x = self.mix_input(index, x, inputs)
            block_cache = None
            if shared is not None:
                block_cache = BlockCache(cache.keys[index], cache.values[index], cache.last_attn[index],
                                         cache.last_mlp[index], *shared)
            x = block(x, rope, block_cache, layout)
            if after_block is not None:
                x = after_block(index, x)
        return self.norm(x)


class ScaledEmbedding(nn.Embedding):
    """An embedding table stored divided by ``gain`` and multiplied back on lookup: the same function,
    but Adam, which moves every weight by about the learning rate per step, moves the embeddings ``gain``
    times as fast as the other weights (``EMBED_GAIN``)."""

    def __init__(self, num_embeddings: int, dim: int, gain: float = 1.0) -> None:
        super().__init__(num_embeddings, dim)
        self.gain = gain

    def forward(self, ids: Tensor) -> Tensor:
        if self.gain == 1:
            return super().forward(ids)
        # Multiply whichever is smaller, the table or the rows looked up (the same numbers either way): a
        # training batch looks up far more rows than the table has, a decoding step one per sequence.
        if ids.numel() < self.num_embeddings:
            return super().forward(ids) * self.gain
        return F.embedding(ids, self.weight * self.gain, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


class ScaledLinear(nn.Linear):
    """A Linear layer without bias whose weight is stored divided by ``gain`` (see :class:`ScaledEmbedding`):
    Adam moves it ``gain`` times as fast as the other weights (``HEAD_GAIN``)."""

    def __init__(self, in_features: int, out_features: int, gain: float = 1.0) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.gain = gain

    def forward(self, x: Tensor) -> Tensor:
        if self.gain == 1:
            return F.linear(x, self.weight)
        # Multiply whichever is smaller, the weight or the output: a training batch has far more rows than
        # the layer has inputs, a decoding step one row per sequence.
        if x.numel() < self.in_features * self.in_features:  # fewer rows than inputs
            return F.linear(x, self.weight) * self.gain
        return F.linear(x, self.weight * self.gain)


def _linear_std(layer: nn.Linear) -> float:
    return (3 * layer.in_features) ** -0.5


def _init_module(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=_linear_std(module) / getattr(module, "gain", 1.0))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=1.0 / getattr(module, "gain", 1.0))  # unit spread after the gain


def init_weights(model: nn.Module) -> None:
    """GPT-2-style initialisation scaled to the width: Linear weights normal(0, 1/sqrt(3 * fan_in))
    (PyTorch's default spread; GPT-2's fixed 0.02 is this value at width 768 and far too small for the
    narrow stages trained here), embeddings normal(0, 1), zero biases, and the residual projections of
    each transformer shrunk by sqrt(2 * depth) so the stream's variance stays put. Spreads are of the
    weights as used: a :class:`ScaledEmbedding` or :class:`ScaledLinear` stores them divided by its gain.

    The fixed 0.02 cost 0.5 bits/byte after 300 steps on TinyStories (docs/experiments.md)."""
    model.apply(_init_module)
    for transformer in (m for m in model.modules() if isinstance(m, Transformer)):
        depth = max(len(transformer.blocks), 1)
        for block in transformer.blocks:
            for layer in (block.attn.out, block.mlp.down):
                nn.init.normal_(layer.weight, std=_linear_std(layer) / math.sqrt(2 * depth))
