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
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bytemodels import tokens
from bytemodels.config import MegabyteConfig
from bytemodels.layers import EMBED_GAIN, HEAD_GAIN, ScaledEmbedding, ScaledLinear, Transformer, init_weights


# ---------------------------------------------------------------------------------------------
# The flat byte-level transformer
# ---------------------------------------------------------------------------------------------


@dataclass
class FlatConfig:
    """Shape of a flat (one token per byte) decoder-only transformer."""

    dim: int = 512
    """Model width."""
    layers: int = 8
    """Transformer blocks."""
    heads: int = 8
    """Attention heads; ``dim / heads`` must be even (rotary positions rotate pairs)."""
    max_seq_len: int = 2048
    """Longest sequence in bytes."""
    num_tags: int = tokens.DEFAULT_NUM_TAGS
    """Modality tag ids reserved after PAD, BOS and EOS."""
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

    def __post_init__(self) -> None:
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"dim={self.dim}, heads={self.heads}: the width must split into heads of even size")

    @property
    def vocab_size(self) -> int:
        return tokens.vocab_size(self.num_tags)

    def flops_per_byte(self, training: bool = True) -> float:
        """Estimated FLOPs per byte, the nanoGPT/PaLM ``6N + 12·L·d·T`` estimate (causal: half of T)."""
        hidden = int(self.mlp_ratio * self.dim)
        block_matmul = 4 * self.dim * self.dim + 2 * self.dim * hidden
        per_byte = 2 * self.layers * block_matmul + 2 * self.layers * 2 * self.dim * self.max_seq_len / 2
        per_byte += 2 * self.dim * self.vocab_size  # output head
        return per_byte * (3 if training else 1)


class ModelOutput(NamedTuple):
    """What a forward pass returns: logits always, the loss when targets were given."""

    logits: torch.Tensor
    loss: torch.Tensor | None


class FlatTransformer(nn.Module):
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
        self.transformer = Transformer(config.dim, config.layers, config.heads, config.mlp_ratio,
                                       config.dropout, config.rope_base, config.norm_eps, config.token_shift,
                                       config.qk_norm)
        self.head = ScaledLinear(config.dim, config.vocab_size, HEAD_GAIN)
        init_weights(self)  # the same initialisation as bytemodels.Megabyte

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        batch, time = ids.shape
        if time > self.config.max_seq_len:
            raise ValueError(f"sequence of {time} bytes is longer than max_seq_len={self.config.max_seq_len}")
        # Shift by one inside the model: the start vector, then the embedding of the id before each position.
        x = torch.cat((self.start.expand(batch, 1, -1), self.embed(ids[:, :-1])), dim=1)  # (batch, time, dim)
        x = self.transformer(self.drop(x))  # (batch, time, dim), final norm included
        logits = self.head(x)  # (batch, time, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=tokens.PAD_ID)
        return ModelOutput(logits, loss)


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
class TokenGptConfig:
    """Shape of a :class:`TokenGpt`: a decoder-only transformer over a tokenizer's ids."""

    vocab_size: int = 4096
    """Token ids, the tokenizer's special tokens included."""
    dim: int = 512
    layers: int = 8
    heads: int = 8
    """Attention heads; ``dim / heads`` must be even (rotary positions rotate pairs)."""
    context: int = 256
    """Longest sequence in tokens."""
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    token_shift: bool = True
    qk_norm: bool = True

    def __post_init__(self) -> None:
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"dim={self.dim}, heads={self.heads}: the width must split into heads of even size")


#: Spread of the tied embedding table at initialisation (nanoGPT's): with a unit-RMS final norm the first
#: logits then spread by 0.02·sqrt(dim), so the untrained loss is near ln(vocabulary).
TIED_EMBED_STD = 0.02


class TokenGpt(nn.Module):
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
        self.transformer = Transformer(config.dim, config.layers, config.heads, config.mlp_ratio,
                                       config.dropout, config.rope_base, config.norm_eps, config.token_shift,
                                       config.qk_norm)
        init_weights(self)
        nn.init.normal_(self.embed.weight, std=TIED_EMBED_STD)  # also the output layer: see TIED_EMBED_STD

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        batch, time = ids.shape
        if time > self.config.context:
            raise ValueError(f"sequence of {time} tokens is longer than context={self.config.context}")
        x = torch.cat((self.start.expand(batch, 1, -1), self.embed(ids[:, :-1])), dim=1)  # (batch, time, dim)
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
