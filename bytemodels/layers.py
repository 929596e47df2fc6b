"""Transformer building blocks shared by every stage: RMSNorm, rotary attention with a KV cache, MLP."""

from __future__ import annotations

import math
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
        decoding asks for one position per step, and recomputing it costs more than the lookup."""
        table = getattr(self, "_table", None)
        if table is None or table[0].shape[0] < start + length or table[0].device != device:
            size = max(2 * (start + length), 256)
            table = self.forward(torch.arange(size, device=device))
            self._table = table
        return table[0][start:start + length], table[1][start:start + length]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (first half, second half) of each head's channels of ``x`` (batch, heads, time, head_dim)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.to(x.dtype)


class KVCache:
    """What one block keeps for the tokens seen so far: attention keys and values (batch, heads,
    time, head_dim) and, for token shift, the newest token's inputs to the attention and the MLP.

    Storage grows by doubling, so appending one token per step copies only the new token."""

    def __init__(self) -> None:
        self._keys: Tensor | None = None
        self._values: Tensor | None = None
        self.length = 0
        self.prefix = 0  # leading keys carried over from the previous group (cross-patch attention)
        self.last_attn_input: Tensor | None = None  # (batch, dim)
        self.last_mlp_input: Tensor | None = None

    def append(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Add ``keys``/``values`` for new tokens; returns those of every token so far."""
        new_length = self.length + keys.shape[2]
        if self._keys is None or new_length > self._keys.shape[2]:
            capacity = max(new_length, 2 * (0 if self._keys is None else self._keys.shape[2]), 16)
            grown_keys = keys.new_empty(*keys.shape[:2], capacity, keys.shape[3])
            grown_values = values.new_empty(*values.shape[:2], capacity, values.shape[3])
            if self._keys is not None:
                grown_keys[:, :, :self.length] = self._keys[:, :, :self.length]
                grown_values[:, :, :self.length] = self._values[:, :, :self.length]
            self._keys, self._values = grown_keys, grown_values
        self._keys[:, :, self.length:new_length] = keys
        self._values[:, :, self.length:new_length] = values
        self.length = new_length
        return self._keys[:, :, :new_length], self._values[:, :, :new_length]

    def stored(self) -> tuple[Tensor, Tensor]:
        """Keys and values of every token so far (the carried prefix first)."""
        return self._keys[:, :, :self.length], self._values[:, :, :self.length]

    def carried(self) -> "KVCache":
        """A new cache whose prefix is this group's own keys and values (cross-patch attention: the next
        group attends to them; rotary positions count bytes across groups, so the keys stay as they are)."""
        new = KVCache()
        new.append(self._keys[:, :, self.prefix:self.length], self._values[:, :, self.prefix:self.length])
        new.prefix = new.length
        # Token shift runs across the boundary too: the next group's first token reads this group's last.
        new.last_attn_input, new.last_mlp_input = self.last_attn_input, self.last_mlp_input
        return new


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
        causal = torch.ones(time, time, dtype=torch.bool, device=device).tril()
        has_previous = (torch.arange(groups, device=device) > 0)[:, None, None].expand(groups, time, time)
        allowed = torch.cat((has_previous, causal.expand(groups, time, time)), dim=-1)  # (groups, time, 2 time)
        allowed = allowed.repeat(rows // groups, 1, 1)[:, None]
        cos, sin = rotary(torch.arange(groups * time, device=device))
        return cls(groups, allowed, (cos.view(groups, 1, time, -1), sin.view(groups, 1, time, -1)))


class Attention(nn.Module):
    """Causal multi-head self-attention through ``scaled_dot_product_attention`` (flash kernels on GPU)."""

    def __init__(self, dim: int, heads: int, dropout: float, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
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

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        cache: KVCache | None = None,
        key_mask: Tensor | None = None,
        layout: GroupLayout | None = None,
    ) -> Tensor:
        """``x`` (batch, time, dim). With a cache, ``x`` continues the cached tokens; ``key_mask``
        (batch, keys) marks keys that may be attended to (left padding in batched generation).

        ``layout`` (no cache): the rows of ``x`` are consecutive groups, and each also attends to the
        group before it (cross-patch attention); ``rope`` is then unused."""
        q, k, v = self.project(x)
        dropout = self.dropout if self.training else 0.0
        if layout is not None:
            q, k = (rotate_groups(t, layout) for t in (q, k))
            keys = torch.cat((previous_group(k, layout.groups), k), dim=2)
            values = torch.cat((previous_group(v, layout.groups), v), dim=2)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=layout.allowed, dropout_p=dropout)
            return self.out(rearrange(y, "b h t d -> b t (h d)"))
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)
        if past == 0 and key_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        elif q.shape[2] == 1 and key_mask is None:  # one new token sees every cached key: no mask to build
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            time, keys = q.shape[2], k.shape[2]
            query_pos = torch.arange(past, past + time, device=x.device)[:, None]
            key_pos = torch.arange(keys, device=x.device)[None, :]
            allowed = key_pos <= query_pos  # (time, keys)
            if key_mask is not None:
                # A padded query still sees itself, so its (ignored) output stays finite.
                allowed = allowed & (key_mask[:, None, :] | (key_pos == query_pos))
                allowed = allowed[:, None]  # (batch, 1, time, keys)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
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
    ``has_previous`` (batch, time) zeroes the shifted half where the previous token is padding."""
    half = x.shape[-1] // 2
    moved = x[..., half:]
    before = moved.new_zeros(moved.shape[0], 1, moved.shape[-1]) if last is None else last[:, None, half:]
    if x.shape[1] == 1 and has_previous is None:  # one cached decoding step: no copy of the sequence
        return torch.cat((x[..., :half], before.to(x.dtype)), dim=-1)
    previous = torch.cat((before.to(moved.dtype), moved[:, :-1]), dim=1)
    if has_previous is not None:
        previous = previous * has_previous[..., None].to(previous.dtype)
    return torch.cat((x[..., :half], previous), dim=-1)


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x)); with
    ``shift``, each sublayer reads the token-shifted stream (see :func:`token_shift`)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, eps: float, shift: bool,
                 qk_norm: bool) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim, eps)
        self.attn = Attention(dim, heads, dropout, qk_norm, eps)
        self.mlp_norm = RMSNorm(dim, eps)
        self.mlp = MLP(dim, int(mlp_ratio * dim))
        self.drop = nn.Dropout(dropout)
        self.shift = shift

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], cache: KVCache | None, key_mask: Tensor | None,
                has_previous: Tensor | None = None, layout: GroupLayout | None = None) -> Tensor:
        attn_input = x
        if self.shift:
            attn_input = token_shift(x, self._before(x, cache.last_attn_input if cache else None, layout),
                                     has_previous)
            if cache is not None:
                cache.last_attn_input = x[:, -1]
        x = x + self.drop(self.attn(self.attn_norm(attn_input), rope, cache, key_mask, layout))
        mlp_input = x
        if self.shift:
            mlp_input = token_shift(x, self._before(x, cache.last_mlp_input if cache else None, layout),
                                    has_previous)
            if cache is not None:
                cache.last_mlp_input = x[:, -1]
        return x + self.drop(self.mlp(self.mlp_norm(mlp_input)))

    @staticmethod
    def _before(x: Tensor, cached: Tensor | None, layout: GroupLayout | None) -> Tensor | None:
        """The token before ``x[:, 0]`` for token shift: the cached one, or with a group layout the last
        token of the group before (cross-patch), else none."""
        return previous_group(x[:, -1], layout.groups) if layout is not None else cached


#: How much faster than other weights the input-skip scales move: Adam moves every parameter by about the
#: learning rate per step, which is slow for a scale that starts at 0 or 1, so each is stored divided by this.
#: 3 was best of 1, 3, 10 and 30 after 300 steps on TinyStories (docs/benchmarks.md).
INPUT_SKIP_GAIN = 3.0

#: Byte embeddings are stored divided by this (:class:`ScaledEmbedding`): embeddings want a far higher learning
#: rate than matrices (as in the nanoGPT speedruns); 30 was best of 1, 3, 10, 30 and 100 (docs/benchmarks.md).
EMBED_GAIN = 30.0

#: The output layer's weight is stored divided by this (:class:`ScaledLinear`); 8 was best of 0.5 to 8 in short
#: runs and level with 4 in the TinyStories recipe (docs/benchmarks.md).
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

    def new_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]

    def carry_cache(self, cache: list[KVCache]) -> list[KVCache]:
        """Caches for the next group that start with this group's keys and values as its prefix
        (cross-patch attention)."""
        return [layer.carried() for layer in cache]

    def forward(self, x: Tensor, cache: list[KVCache] | None = None, key_mask: Tensor | None = None,
                groups: int | None = None, position: int = 0) -> Tensor:
        """``x`` (batch, time, dim) → (batch, time, dim); with ``cache`` it continues after the cached tokens.

        ``groups`` (no cache): the rows of ``x`` are consecutive groups, ``groups`` per sequence, and each
        group also attends to the one before it (cross-patch attention); rotary positions then count
        across the groups. ``position``: the rotary position of the cached group's first token (cached
        cross-patch decoding, where it is the group's first byte)."""
        past = cache[0].length if cache else 0  # keys before x, a carried prefix included
        time = x.shape[1]
        layout, rope = None, None
        if groups is not None:
            layout = GroupLayout.build(x.shape[0], groups, time, self.rotary, x.device)
        elif cache is None:
            rope = self.rotary(torch.arange(time, device=x.device))
        else:
            rope = self.rotary.at(position + past - cache[0].prefix, time, x.device)
        has_previous = None
        if key_mask is not None:  # token shift must not read a padding token
            before = torch.arange(past - 1, past + time - 1, device=x.device)
            has_previous = (before >= 0) & key_mask[:, before.clamp(min=0)]
        inputs = x
        for index, block in enumerate(self.blocks):
            x = self.mix_input(index, x, inputs)
            x = block(x, rope, cache[index] if cache else None, key_mask, has_previous, layout)
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

    The fixed 0.02 cost 0.5 bits/byte after 300 steps on TinyStories (docs/benchmarks.md)."""
    model.apply(_init_module)
    for transformer in (m for m in model.modules() if isinstance(m, Transformer)):
        depth = max(len(transformer.blocks), 1)
        for block in transformer.blocks:
            for layer in (block.attn.out, block.mlp.down):
                nn.init.normal_(layer.weight, std=_linear_std(layer) / math.sqrt(2 * depth))
