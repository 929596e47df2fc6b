"""Peers that bytemodels' MEGABYTE is measured against.

Three models, built at the shape of a :class:`bytemodels.MegabyteConfig`:

- :class:`MegabytePytorch` wraps ``MEGABYTE-pytorch`` 0.3.6 (the ``bench`` extra), the reference
  implementation. It is configured as close to ours as its constructor allows: same widths, depths,
  heads, head size, MLP ratio, patch size and vocabulary, rotary positions on, and ``pad_id`` set
  to our ``PAD_ID`` (256) instead of its default 0, so that it does not ignore byte 0x00.
- :class:`FlatTransformer` is the paper's baseline: a decoder-only transformer over bytes, one
  token per byte, built from the very blocks our stages use (``bytemodels.layers.Transformer``:
  RoPE, RMSNorm, ``scaled_dot_product_attention``, the same MLP, token shift), so the hierarchy is the only
  difference between the two. It has our model's call signature, ``model(ids, targets=None) ->
  (logits, loss)`` with logits[:, t] predicting ids[:, t], so training and evaluation code can use
  it unchanged. It has no KV cache and no ``generate``.
  :func:`flat_config_matching` sizes it to a given parameter count.
- :class:`TokenGpt` is the peer a user would pick instead of a byte model: a nanoGPT-style GPT over
  byte-level BPE tokens (pre-norm blocks, causal ``scaled_dot_product_attention``, tied input and output
  embeddings), again built from ``bytemodels.layers.Transformer`` so tokenization is the difference.
  :func:`token_gpt_config_matching` sizes it to a given parameter count.
- :class:`SpaceByteModel` is a byte model whose patches follow the data (SpaceByte, Slagle 2024): local
  blocks at every byte, wider global blocks only where a patcher starts a patch, their output added back
  there, then more local blocks. Two patchers: :func:`space_boundaries` (SpaceByte's rule) and
  :func:`entropy_boundaries` (BLT's global entropy threshold, the entropy from a byte n-gram table:
  :func:`ngram_entropy_table`, :func:`entropy_threshold`). :func:`spacebyte_config_matching` sizes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from bytemodels import tokens
from bytemodels.config import MegabyteConfig, blocks_flops
from bytemodels.layers import EMBED_GAIN, HEAD_GAIN, ScaledEmbedding, ScaledLinear, Transformer, init_weights


# ---------------------------------------------------------------------------------------------
# The flat byte-level transformer
# ---------------------------------------------------------------------------------------------


@dataclass
class BlockSettings:
    """What the peers' transformer blocks share with bytemodels' stages (the fields of the same names)."""

    mlp_ratio: float = 4.0
    """Hidden width of each MLP as a multiple of the width."""
    dropout: float = 0.0
    """Dropout on attention outputs, MLP outputs and embeddings while training."""
    rope_base: float = 10000.0
    """Base of the rotary position frequencies."""
    norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""
    token_shift: bool = True
    """Token shift in every block, as in bytemodels' stages."""
    qk_norm: bool = True
    """RMSNorm of each head's queries and keys, as in bytemodels' stages."""

    def stack(self, dim: int, layers: int, heads: int) -> Transformer:
        """``layers`` blocks of width ``dim`` with these settings."""
        return Transformer(dim, layers, heads, self.mlp_ratio, self.dropout, self.rope_base, self.norm_eps,
                           self.token_shift, self.qk_norm)


def check_heads(dim: int, heads: int) -> None:
    if dim % heads or (dim // heads) % 2:
        raise ValueError(f"dim={dim}, heads={heads}: the width must split into heads of even size")


@dataclass
class StackConfig(BlockSettings):
    """Shape of one decoder-only transformer stack."""

    dim: int = 512
    """Model width."""
    layers: int = 8
    """Transformer blocks."""
    heads: int = 8
    """Attention heads; ``dim / heads`` must be even (rotary positions rotate pairs)."""

    def __post_init__(self) -> None:
        check_heads(self.dim, self.heads)


@dataclass
class FlatConfig(StackConfig):
    """Shape of a flat (one token per byte) decoder-only transformer."""

    max_seq_len: int = 2048
    """Longest sequence in bytes."""
    num_tags: int = tokens.DEFAULT_NUM_TAGS
    """Modality tag ids reserved after PAD, BOS and EOS."""

    @property
    def vocab_size(self) -> int:
        return tokens.vocab_size(self.num_tags)

    def flops_per_byte(self, training: bool = True) -> float:
        """Estimated FLOPs per byte, the nanoGPT/PaLM ``6N + 12·L·d·T`` estimate (causal: half of T)."""
        per_byte = blocks_flops(self.dim, self.layers, self.mlp_ratio, self.max_seq_len / 2)  # causal: half
        per_byte += 2 * self.dim * self.vocab_size  # output head
        return per_byte * (3 if training else 1)


class ModelOutput(NamedTuple):
    """What a forward pass returns: logits always, the loss when targets were given."""

    logits: torch.Tensor
    loss: torch.Tensor | None


class ShiftedPeer(nn.Module):
    """What the peers built from our blocks share: a parameter count, and inputs shifted by one inside the model (a
    learned start vector, then the embedding of the id before each position), so logits[:, t] predict ids[:, t]."""

    start: nn.Parameter
    embed: nn.Module

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def shifted_inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """(batch, time, width): the start vector, then the embeddings of ``ids[:, :-1]``."""
        return torch.cat((self.start.expand(ids.shape[0], 1, -1), self.embed(ids[:, :-1])), dim=1)


def with_loss(logits: torch.Tensor, targets: torch.Tensor | None) -> ModelOutput:
    """The peers' output: logits, and with ``targets`` the mean cross-entropy in nats (``PAD_ID`` ignored)."""
    loss = None
    if targets is not None:
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=tokens.PAD_ID)
    return ModelOutput(logits, loss)


class FlatTransformer(ShiftedPeer):
    """Decoder-only transformer with one token per byte: the baseline of the MEGABYTE paper.

    ``forward(ids, targets=None)`` matches :class:`bytemodels.Megabyte`: position t sees
    ids[:, :t] (a learned start vector stands before ids[:, 0]), so logits[:, t] predicts
    ids[:, t] and ``targets = ids``; the loss (nats per byte) ignores ``PAD_ID``.
    """

    def __init__(self, config: FlatConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = ScaledEmbedding(config.vocab_size, config.dim, EMBED_GAIN)
        self.start = nn.Parameter(torch.randn(config.dim))
        self.drop = nn.Dropout(config.dropout)
        self.transformer = config.stack(config.dim, config.layers, config.heads)
        self.head = ScaledLinear(config.dim, config.vocab_size, HEAD_GAIN)
        init_weights(self)  # the same initialisation as bytemodels.Megabyte

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        time = ids.shape[1]
        if time > self.config.max_seq_len:
            raise ValueError(f"sequence of {time} bytes is longer than max_seq_len={self.config.max_seq_len}")
        x = self.shifted_inputs(ids)  # (batch, time, dim)
        x = self.transformer(self.drop(x))  # (batch, time, dim), final norm included
        logits = self.head(x)  # (batch, time, vocab)
        return with_loss(logits, targets)


def flat_parameter_count(config: FlatConfig) -> int:
    """Parameters of a FlatTransformer, counted without allocating it."""
    with torch.device("meta"):
        return FlatTransformer(config).num_parameters()


def flat_config_matching(megabyte: MegabyteConfig, num_parameters: int, max_seq_len: int | None = None) -> FlatConfig:
    """The flat transformer at the global stage's width and head count whose depth best matches
    ``num_parameters`` (the paper compares models of equal size)."""
    # Every other field (MLP, norms, switches) has the same name in both configs: copied, so a new switch
    # of the model reaches the baseline without a line here.
    shape = ("dim", "layers", "heads", "max_seq_len")
    shared = {f.name: getattr(megabyte, f.name) for f in fields(FlatConfig) if f.name not in shape}

    def at_depth(layers: int) -> FlatConfig:
        return FlatConfig(dim=megabyte.global_dim, layers=layers, heads=megabyte.heads[0],
                          max_seq_len=max_seq_len or megabyte.max_seq_len, **shared)

    per_block = flat_parameter_count(at_depth(2)) - flat_parameter_count(at_depth(1))
    shell = flat_parameter_count(at_depth(1)) - per_block  # embeddings, start, norm, head
    layers = max(1, round((num_parameters - shell) / per_block))
    return at_depth(layers)


# ---------------------------------------------------------------------------------------------
# The tokenized GPT (nanoGPT-style, byte-level BPE tokens)
# ---------------------------------------------------------------------------------------------


@dataclass
class TokenGptConfig(StackConfig):
    """Shape of a :class:`TokenGpt`: a decoder-only transformer over a tokenizer's ids."""

    vocab_size: int = 4096
    """Token ids, the tokenizer's special tokens included."""
    context: int = 256
    """Longest sequence in tokens."""


#: Spread of the tied embedding table at initialisation (nanoGPT's): with a unit-RMS final norm the first
#: logits then spread by 0.02·sqrt(dim), so the untrained loss is near ln(vocabulary).
TIED_EMBED_STD = 0.02


class TokenGpt(ShiftedPeer):
    """nanoGPT-style GPT over token ids: pre-norm blocks with causal ``scaled_dot_product_attention``,
    rotary positions and our MLP (the blocks of ``bytemodels.layers.Transformer``, as the flat baseline
    and our stages use), and one embedding table that is also the output layer (tied, as in nanoGPT).

    ``forward(ids, targets=None)`` follows the other peers: a learned start vector stands before ids[:, 0],
    so logits[:, t] predicts ids[:, t] from ids[:, :t]; every id is a real token (no padding id), so the
    loss, in nats per token, counts all of them.
    """

    def __init__(self, config: TokenGptConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.start = nn.Parameter(torch.randn(config.dim))
        self.drop = nn.Dropout(config.dropout)
        self.transformer = config.stack(config.dim, config.layers, config.heads)
        init_weights(self)
        nn.init.normal_(self.embed.weight, std=TIED_EMBED_STD)  # also the output layer: see TIED_EMBED_STD

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        time = ids.shape[1]
        if time > self.config.context:
            raise ValueError(f"sequence of {time} tokens is longer than context={self.config.context}")
        x = self.shifted_inputs(ids)  # (batch, time, dim)
        x = self.transformer(self.drop(x))  # final norm included
        logits = F.linear(x, self.embed.weight)  # (batch, time, vocab): the tied output layer
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return ModelOutput(logits, loss)

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss (nats) over every id of ``ids`` (batch, time)."""
        return self(ids, targets=ids).loss


def token_gpt_parameter_count(config: TokenGptConfig) -> int:
    """Parameters of a TokenGpt, counted without allocating it."""
    with torch.device("meta"):
        return TokenGpt(config).num_parameters()


def token_gpt_config_matching(megabyte: MegabyteConfig, num_parameters: int, vocab_size: int,
                              context: int) -> TokenGptConfig:
    """The GPT at the global stage's width and head count (and our blocks' switches) whose depth best matches
    ``num_parameters``; at least one block, so a large vocabulary at a small preset can overshoot."""
    shape = ("vocab_size", "dim", "layers", "heads", "context")
    shared = {f.name: getattr(megabyte, f.name) for f in fields(TokenGptConfig) if f.name not in shape}

    def at_depth(layers: int) -> TokenGptConfig:
        return TokenGptConfig(vocab_size=vocab_size, dim=megabyte.global_dim, layers=layers,
                              heads=megabyte.heads[0], context=context, **shared)

    per_block = token_gpt_parameter_count(at_depth(2)) - token_gpt_parameter_count(at_depth(1))
    shell = token_gpt_parameter_count(at_depth(1)) - per_block  # the tied table, start vector and final norm
    layers = max(1, round((num_parameters - shell) / per_block))
    return at_depth(layers)


# ---------------------------------------------------------------------------------------------
# The reference implementation: MEGABYTE-pytorch 0.3.6
# ---------------------------------------------------------------------------------------------


class MegabytePytorch(nn.Module):
    """MEGABYTE-pytorch 0.3.6 built at the shape of a two-stage :class:`MegabyteConfig`.

    The package shares one head count and head size across stages, so it is built with the global
    stage's heads and the local stage's transformer is then rebuilt (with the package's own
    ``Transformer`` class) with the local head count: both stages then have our widths, depths,
    heads and head sizes. Rotary positions are on (the package's default is none at all) and
    ``pad_id`` is our ``PAD_ID``: its default, 0, would drop byte 0x00 from the loss.
    ``flash=True`` routes attention through ``scaled_dot_product_attention`` instead of its
    explicit einsum-softmax-einsum.
    """

    def __init__(self, config: MegabyteConfig, flash: bool = False) -> None:
        super().__init__()
        from MEGABYTE_pytorch import MEGABYTE
        from MEGABYTE_pytorch.megabyte import Transformer

        if config.num_stages != 2:
            raise ValueError(f"patch_sizes={config.patch_sizes}: the reference is compared with two-stage models only")
        head_dims = {dim // heads for dim, heads in zip(config.dims, config.heads)}
        if len(head_dims) != 1:
            raise ValueError(f"dims={config.dims}, heads={config.heads}: the reference needs one head size "
                             "for all stages")
        head_dim = head_dims.pop()
        patches = config.max_seq_len // config.patch_size
        self.config = config
        self.model = MEGABYTE(
            num_tokens=config.vocab_size,
            dim=tuple(config.dims),
            depth=tuple(config.layers),
            max_seq_len=(patches, config.patch_size),
            dim_head=head_dim,
            heads=config.heads[0],
            ff_mult=int(config.mlp_ratio),
            pad_id=tokens.PAD_ID,
            rel_pos=True,
            flash_attn=flash,
        )
        self.model.transformers[-1] = Transformer(
            dim=config.local_dim, layers=config.layers[-1], dim_head=head_dim, heads=config.heads[-1],
            ff_mult=int(config.mlp_ratio), rel_pos=True, flash_attn=flash,
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean next-byte loss over ids (batch, time), through the package's own loss path."""
        return self.model(ids, return_loss=True)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_bytes: int, temperature: float = 1.0) -> torch.Tensor:
        """prompt (batch, time) followed by ``max_new_bytes`` sampled ids, via the package's ``generate``.

        The package always samples up to ``prod(max_seq_len)`` ids, re-running the whole prefix
        for each one; its first length is set (for this call) so that this total is prompt + new.
        """
        total = prompt.shape[1] + max_new_bytes
        patch = self.config.patch_size
        if total % patch:
            raise ValueError(f"prompt + max_new_bytes = {total} must be a multiple of the patch size {patch}")
        saved = self.model.max_seq_len
        self.model.max_seq_len = (total // patch, patch)
        try:
            out = self.model.generate(prompt, temperature=temperature)
        finally:
            self.model.max_seq_len = saved
        return out.reshape(prompt.shape[0], total)


# ---------------------------------------------------------------------------------------------
# Patches that follow the data: SpaceByte's model, its space patcher and BLT's entropy patcher
# ---------------------------------------------------------------------------------------------
#
# A patcher maps ids (batch, time) to ``starts`` (batch, time) bool: ``starts[:, t]`` means a patch starts at
# byte t, so position t (which predicts ids[:, t] from ids[:, :t]) runs the global blocks. It must read ids
# before t only, so that the model stays causal; position 0 always starts a patch.

#: Symbols of the n-gram entropy model: the 256 bytes, then one for every special id and for "before the window".
NGRAM_SYMBOLS = tokens.NUM_BYTES + 1


def is_spacelike(ids: torch.Tensor) -> torch.Tensor:
    """SpaceByte's "spacelike" bytes: not an ASCII letter or digit and not a UTF-8 continuation byte
    (0x80-0xBF); so spaces, punctuation, control bytes and UTF-8 lead bytes (0xC0-0xFF). Special ids are too."""
    digit = (ids >= ord("0")) & (ids <= ord("9"))
    letter = ((ids >= ord("A")) & (ids <= ord("Z"))) | ((ids >= ord("a")) & (ids <= ord("z")))
    continuation = (ids >= 0x80) & (ids <= 0xBF)
    return ~(digit | letter | continuation)


def space_boundaries(ids: torch.Tensor) -> torch.Tensor:
    """SpaceByte's patches: (batch, time) ids → (batch, time) bool patch starts.

    SpaceByte runs its global blocks at each spacelike byte not preceded by another (and at every special id,
    as it does at BOS), where the model predicts the byte after it: here that is a start at t + 1."""
    spacelike = is_spacelike(ids)
    after_other = torch.cat((torch.ones_like(spacelike[:, :1]), ~spacelike[:, :-1]), dim=1)
    global_at = (spacelike & after_other) | (ids >= tokens.NUM_BYTES)
    return torch.cat((torch.ones_like(global_at[:, :1]), global_at[:, :-1]), dim=1)


def ngram_contexts(ids: torch.Tensor | np.ndarray, order: int):
    """Each position's context index for an n-gram of ``order``: the ``order - 1`` ids before it (special ids and
    positions before the window as one extra symbol), as a base-``NGRAM_SYMBOLS`` number. Same shape as ``ids``."""
    lib = torch if isinstance(ids, torch.Tensor) else np
    symbols = lib.clip(ids, 0, tokens.NUM_BYTES)  # every special id is symbol 256
    context = lib.zeros_like(symbols)
    for back in range(1, order):
        before = lib.full_like(symbols, tokens.NUM_BYTES)
        before[:, back:] = symbols[:, :-back]
        context = context * NGRAM_SYMBOLS + before
    return context


def ngram_entropy_table(windows: np.ndarray, order: int = 3, smoothing: float = 0.1) -> torch.Tensor:
    """Next-byte entropy in bits for every context of a byte n-gram model counted from ``windows`` (n, time) of
    training ids, with add-``smoothing`` counts: (NGRAM_SYMBOLS ** (order - 1),) float32.

    BLT trains a small byte transformer for this entropy; a counted n-gram gives the same kind of signal
    (high where the next byte is hard to guess: word starts, digits) at no training or inference cost on a CPU,
    so its time does not distort an equal-time comparison."""
    if order < 1:
        raise ValueError(f"order={order}: an n-gram needs order 1 or more")
    windows = np.asarray(windows, dtype=np.int64)
    joint = ngram_contexts(windows, order) * NGRAM_SYMBOLS + np.clip(windows, 0, tokens.NUM_BYTES)
    counts = np.bincount(joint.ravel(), minlength=NGRAM_SYMBOLS ** order).reshape(-1, NGRAM_SYMBOLS)
    probs = (counts + smoothing) / (counts.sum(axis=1, keepdims=True) + smoothing * NGRAM_SYMBOLS)
    return torch.from_numpy(-(probs * np.log2(probs)).sum(axis=1).astype(np.float32))


def ngram_order(entropy_table: torch.Tensor) -> int:
    """The n-gram order a table from :func:`ngram_entropy_table` was counted at."""
    order, size = 1, 1
    while size < len(entropy_table):
        order, size = order + 1, size * NGRAM_SYMBOLS
    if size != len(entropy_table):
        raise ValueError(f"an entropy table of {len(entropy_table)} contexts is not a power of {NGRAM_SYMBOLS}")
    return order


def next_byte_entropy(ids: torch.Tensor, entropy_table: torch.Tensor) -> torch.Tensor:
    """H(ids[:, t] | the n-gram context before t) in bits for every position: (batch, time) float32."""
    return entropy_table[ngram_contexts(ids.long(), ngram_order(entropy_table))]


def entropy_boundaries(ids: torch.Tensor, entropy_table: torch.Tensor, threshold: float) -> torch.Tensor:
    """BLT's global-threshold entropy patches: (batch, time) ids → (batch, time) bool patch starts, a start
    wherever the next-byte entropy (from the bytes before it only) exceeds ``threshold``, and at position 0."""
    starts = next_byte_entropy(ids, entropy_table) > threshold
    starts[:, 0] = True
    return starts


def entropy_threshold(windows: np.ndarray, entropy_table: torch.Tensor, mean_patch: float) -> float:
    """The threshold whose patches on ``windows`` (n, time) have a mean size (positions per start) nearest
    ``mean_patch``. Entropies take few distinct values (one per context), so the choice is among them."""
    if not mean_patch >= 1:
        raise ValueError(f"mean patch size {mean_patch}: give 1 or more")
    entropy = next_byte_entropy(torch.from_numpy(np.asarray(windows, dtype=np.int64)), entropy_table)[:, 1:]
    values, counts = np.unique(entropy.numpy(), return_counts=True)
    thresholds = np.concatenate(([values[0] - 1.0], values))  # the first: a start at every position
    above = counts.sum() - np.concatenate(([0], np.cumsum(counts)))  # starts past position 0 at each threshold
    wanted = windows.size / mean_patch - len(windows)
    return float(thresholds[int(np.argmin(np.abs(above - wanted)))])


def mean_patch_size(starts: torch.Tensor) -> float:
    """Positions per patch start."""
    return starts.numel() / max(int(starts.sum()), 1)


@dataclass
class SpaceByteConfig(BlockSettings):
    """Shape of a :class:`SpaceByteModel`: local blocks at every byte around wider global blocks at patch starts."""

    local_dim: int = 256
    """Width of the byte-level (local) blocks."""
    local_layers_before: int = 2
    """Local blocks before the global ones."""
    local_layers_after: int = 2
    """Local blocks after the global ones."""
    local_heads: int = 4
    global_dim: int = 512
    """Width of the patch-level (global) blocks."""
    global_layers: int = 4
    global_heads: int = 8
    max_seq_len: int = 2048
    """Longest sequence in bytes."""
    num_tags: int = tokens.DEFAULT_NUM_TAGS

    def __post_init__(self) -> None:
        check_heads(self.local_dim, self.local_heads)
        check_heads(self.global_dim, self.global_heads)

    @property
    def vocab_size(self) -> int:
        return tokens.vocab_size(self.num_tags)

    def flops_per_byte(self, mean_patch: float, training: bool = True) -> float:
        """Estimated FLOPs per byte with patches of ``mean_patch`` bytes on average (the BLT paper's count):
        2 x the block matmuls plus causal attention, local blocks at every byte, global blocks and the two
        projections once per patch, and the output head; x3 for training (forward and backward)."""
        local_layers = self.local_layers_before + self.local_layers_after
        # causal attention: half of the context on average
        per_byte = blocks_flops(self.local_dim, local_layers, self.mlp_ratio, self.max_seq_len / 2)
        patches = self.max_seq_len / mean_patch
        per_byte += (blocks_flops(self.global_dim, self.global_layers, self.mlp_ratio, patches / 2)
                     + 2 * 2 * self.local_dim * self.global_dim) / mean_patch
        per_byte += 2 * self.local_dim * self.vocab_size
        return per_byte * (3 if training else 1)


class SpaceByteModel(ShiftedPeer):
    """SpaceByte-style byte model over any patcher (Slagle 2024, arXiv:2404.14408), built from
    ``bytemodels.layers.Transformer`` stacks: local blocks over every byte, then at the positions where
    ``boundaries(ids)`` starts a patch the hidden state is projected to the global width, the global blocks run
    causally over those positions only, and their output is projected back and added there; then the last local
    blocks and the output head.

    Batched with different patch counts per row: each row's start positions are gathered in order and padded
    at the end to the batch's largest count; causal attention keeps real positions from seeing the padding,
    whose outputs are dropped before the scatter. ``forward(ids, targets=None)`` follows the other peers:
    logits[:, t] predicts ids[:, t] from ids[:, :t] (a learned start vector stands before ids[:, 0]).

    Differences from SpaceByte's code: learned projections between the widths (it zero-pads and slices),
    rotary positions (it learns absolute ones), full causal attention in the local blocks (it uses a window of
    ``local_dim`` bytes) and no cap on the patches of a window (it drops the targets past its cap)."""

    def __init__(self, config: SpaceByteConfig, boundaries: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.config = config
        self.boundaries = boundaries
        stack = config.stack
        self.embed = ScaledEmbedding(config.vocab_size, config.local_dim, EMBED_GAIN)
        self.start = nn.Parameter(torch.randn(config.local_dim))
        self.drop = nn.Dropout(config.dropout)
        self.local_before = stack(config.local_dim, config.local_layers_before, config.local_heads)
        self.to_global = nn.Linear(config.local_dim, config.global_dim, bias=False)
        self.global_blocks = stack(config.global_dim, config.global_layers, config.global_heads)
        self.from_global = nn.Linear(config.global_dim, config.local_dim, bias=False)
        self.local_after = stack(config.local_dim, config.local_layers_after, config.local_heads)
        self.head = ScaledLinear(config.local_dim, config.vocab_size, HEAD_GAIN)
        init_weights(self)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        time = ids.shape[1]
        if time > self.config.max_seq_len:
            raise ValueError(f"sequence of {time} bytes is longer than max_seq_len={self.config.max_seq_len}")
        x = self.shifted_inputs(ids)  # (batch, time, local)
        x = self.local_before(self.drop(x))
        starts = self.boundaries(ids)  # (batch, time) bool, reads ids[:, :t] for position t
        counts = starts.sum(dim=1)
        patches = int(counts.max())
        # Each row's start positions in order, then (padding) the other positions: a stable sort of ~starts.
        order = torch.sort((~starts).to(torch.uint8), dim=1, stable=True).indices[:, :patches]  # (batch, patches)
        real = torch.arange(patches, device=ids.device) < counts[:, None]  # (batch, patches)
        where = order[..., None].expand(-1, -1, x.shape[-1])
        y = self.global_blocks(self.to_global(x.gather(1, where)))  # (batch, patches, global)
        x = x.scatter_add(1, where, self.from_global(y) * real[..., None].to(y.dtype))
        logits = self.head(self.local_after(x))  # (batch, time, vocab)
        return with_loss(logits, targets)


def spacebyte_parameter_count(config: SpaceByteConfig) -> int:
    """Parameters of a SpaceByteModel, counted without allocating it."""
    with torch.device("meta"):
        return SpaceByteModel(config, space_boundaries).num_parameters()


def spacebyte_config_matching(megabyte: MegabyteConfig, num_parameters: int,
                              max_seq_len: int | None = None) -> SpaceByteConfig:
    """The SpaceByte model at MEGABYTE's two widths and head counts: its local blocks as deep as MEGABYTE's local
    stage (split before and after the global blocks, at least one each), and the global depth that best matches
    ``num_parameters``."""
    shape = ("local_dim", "local_layers_before", "local_layers_after", "local_heads", "global_dim", "global_layers",
             "global_heads", "max_seq_len")
    shared = {f.name: getattr(megabyte, f.name) for f in fields(SpaceByteConfig) if f.name not in shape}
    local_layers = megabyte.layers[-1]

    def at_depth(layers: int) -> SpaceByteConfig:
        return SpaceByteConfig(local_dim=megabyte.local_dim, local_layers_before=max(1, local_layers // 2),
                               local_layers_after=max(1, local_layers - local_layers // 2),
                               local_heads=megabyte.heads[-1], global_dim=megabyte.global_dim, global_layers=layers,
                               global_heads=megabyte.heads[0], max_seq_len=max_seq_len or megabyte.max_seq_len,
                               **shared)

    per_block = spacebyte_parameter_count(at_depth(2)) - spacebyte_parameter_count(at_depth(1))
    shell = spacebyte_parameter_count(at_depth(1)) - per_block
    return at_depth(max(1, round((num_parameters - shell) / per_block)))
