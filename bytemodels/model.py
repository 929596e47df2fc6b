"""The MEGABYTE model (Yu et al. 2023, arXiv 2305.07185): a global transformer over patches of bytes
and a local transformer over the bytes of each patch, optionally with middle stages in between.

Axes in the einops patterns: ``b`` batch, ``n`` units of a stage (patches for the global stage),
``g`` units of a stage inside one unit of the stage above (a group), ``u`` bytes per unit,
``e`` byte-embedding width, ``d`` model width. ``logits[:, t]`` is the distribution of ``ids[:, t]``
given ``ids[:, :t]``: the model shifts its inputs itself, so training targets are the ids.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from bytemodels import tokens
from bytemodels.config import MegabyteConfig
from bytemodels.layers import EMBED_GAIN, HEAD_GAIN, ScaledEmbedding, ScaledLinear, Transformer, init_weights
from bytemodels.ngrams import hash_ngrams, ngram_powers
from bytemodels.words import WordBlocks, after_first_block


class MegabyteOutput(NamedTuple):
    """What ``Megabyte.forward`` returns: logits for every position and, with targets, the loss."""

    logits: Tensor
    """(batch, time, vocab): ``logits[:, t]`` scores ``ids[:, t]`` given the ids before it."""
    loss: Tensor | None
    """Mean cross-entropy in nats over targets that are not PAD; None without targets."""


class UnitEmbedder(nn.Module):
    """Embeds the units of one stage: a byte, or a patch of ``unit`` bytes whose byte embeddings are
    concatenated and projected to the stage width (the paper's patch embedder). With hashed n-grams, each
    byte's embedding is the mean of its own and those of the n-grams ending at it (one table per length, and one
    for the word so far with ``hash_word_bytes``)."""

    def __init__(self, vocab_size: int, unit: int, byte_dim: int, dim: int, gain: float = 1.0,
                 ngram_tables: int = 0, buckets: int = 0, ngram_dropout: tuple[float, ...] = (0.0,)) -> None:
        super().__init__()
        self.unit = unit
        self.ngram_dropout = tuple(ngram_dropout)
        width = dim if unit == 1 else byte_dim
        self.bytes = ScaledEmbedding(vocab_size, width, gain)
        self.project = None if unit == 1 else nn.Linear(unit * byte_dim, dim, bias=False)
        # One table holds every length's rows, length k's from k * buckets (hash_ngrams gives the offsets).
        self.ngrams = ScaledEmbedding(ngram_tables * buckets, width, gain) if ngram_tables else None

    def forward(self, units: Tensor, ngrams: Tensor | None = None) -> Tensor:
        """``units`` (..., unit) ids and, with n-gram tables, ``ngrams`` (..., unit, lengths) rows → (..., dim)."""
        vectors = self.bytes(units)  # (..., unit, width)
        if self.ngrams is not None:
            # The mean keeps the embedding's spread that of one table's rows, whatever the number of lengths.
            found = self.ngrams(ngrams)  # (..., unit, lengths, width)
            if self.training and any(self.ngram_dropout):
                # Whole n-grams left out: tables of millions of weights learn a few MB of text by heart, and a byte
                # read without some of its contexts has to lean on what generalises.
                found = found * self.kept_rows(found)
            vectors = (vectors + found.sum(-2)) / (1 + ngrams.shape[-1])
        if self.project is None:
            return vectors.squeeze(-2)
        return self.project(rearrange(vectors, "... u e -> ... (u e)"))

    def kept_rows(self, found: Tensor) -> Tensor:
        """(..., lengths, 1): 0 for each looked-up row left out, 1 / (1 - rate) for each kept, at its table's rate."""
        if len(set(self.ngram_dropout)) == 1:
            return F.dropout(found.new_ones(found.shape[:-1] + (1,)), self.ngram_dropout[0])
        rates = found.new_tensor(self.ngram_dropout)[:, None]  # (lengths, 1), one per table
        kept = torch.rand(found.shape[:-1] + (1,), device=found.device) >= rates
        return kept.to(found.dtype) / (1 - rates)


def lookup_tables(model: nn.Module) -> list[Tensor]:
    """The hashed n-gram tables of ``model`` (what ``bytemodels.optim.TableAdamW`` updates by rows); none in
    other models."""
    return [module.ngrams.weight for module in model.modules()
            if isinstance(module, UnitEmbedder) and module.ngrams is not None]


class Stage(nn.Module):
    """One level of the hierarchy: embeds its units, runs its transformer over a group of units
    (shifted right by one unit, a learned start vector in front) and hands a context vector to each
    position of the stage below."""

    def __init__(self, config: MegabyteConfig, index: int) -> None:
        super().__init__()
        units, dims = config.unit_sizes, config.dims
        self.unit = units[index]
        dim = dims[index]
        self.embed = UnitEmbedder(config.vocab_size, self.unit, config.byte_embed_dim, dim, EMBED_GAIN,
                                  config.hash_tables, config.hash_buckets, config.ngram_dropout)
        self.start = nn.Parameter(torch.randn(dim))
        self.drop = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.transformer = Transformer(dim, config.layers[index], config.heads[index], config.mlp_ratio,
                                       config.dropout, config.rope_base, config.norm_eps, config.token_shift,
                                       config.qk_norm)
        self.is_local = index == config.num_stages - 1
        self.cross_patch = self.is_local and config.cross_patch
        if self.is_local:
            self.to_next = None
        else:
            # Per-position projection: one context vector for each unit of the stage below.
            self.sub_units = self.unit // units[index + 1]
            self.to_next = nn.Linear(dim, self.sub_units * dims[index + 1], bias=False)

    def inputs(self, before: Tensor, starts: Tensor, context: Tensor | None, ngrams: Tensor | None = None) -> Tensor:
        """The inputs of some positions of a group, for training, a prompt's prefill and decoding alike.

        ``before`` (batch, time, unit) ids of the unit before each position; ``starts`` (bool, broadcast to
        (batch, time)) marks positions that begin a row (a group's first, or a left-padded row's first real
        unit); ``context`` (batch, time, d) or None. A position's input is the embedding of the unit before it,
        or at a start the learned start vector, plus, in the local stage, the embedding of the byte before the
        group where it is real (not PAD); then its context is added. With hashed n-grams, ``ngrams`` (batch, time,
        unit, lengths) are the table rows of the n-grams ending at each id of ``before`` (``hash_ngrams``)."""
        embedded = self.embed(before, ngrams)  # (batch, time, d)
        starts = starts.expand(embedded.shape[:2])[..., None]
        seen = ~starts
        if self.is_local:  # the byte before the group: PAD means none (sequence start, padding)
            seen = seen | (before[..., -1:] != tokens.PAD_ID)
        # Weights of 0 and 1 rather than a choice: the same arithmetic for one position as for a sequence.
        x = embedded * seen + self.start * starts
        if context is not None:
            x = x + context
        return self.drop(x)

    def contexts(self, hidden: Tensor) -> Tensor:
        """(batch, n, d) outputs → (batch, n, sub_units, d_next) contexts for the stage below."""
        return rearrange(self.to_next(hidden), "b n (g d) -> b n g d", g=self.sub_units)


class Megabyte(nn.Module):
    """MEGABYTE over token ids (bytes 0-255 plus special ids); knows no modality.

    ``model(ids)`` returns logits for every position; ``model(ids, targets)`` also the mean
    cross-entropy over targets that are not PAD. Any length works: it is padded internally to whole
    patches with PAD (never with a byte value)."""

    def __init__(self, config: MegabyteConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.stages = nn.ModuleList(Stage(config, index) for index in range(config.num_stages))
        self.head = ScaledLinear(config.local_dim, config.vocab_size, HEAD_GAIN)
        self.words = None
        if config.word_layers:
            self.words = WordBlocks(config.local_dim, config.word_width, config.word_layers, config.word_heads,
                                    config.mlp_ratio, config.dropout, config.rope_base, config.norm_eps,
                                    config.token_shift, config.qk_norm, config.word_capacity)
        # The hash's weights (not saved: ngram_powers rebuilds them from the config); none without n-grams.
        powers = ngram_powers(config.hash_ngrams, config.hash_word_bytes) if config.hash_tables else None
        self.register_buffer("ngram_powers", powers, persistent=False)
        init_weights(self)

    # -- training forward ------------------------------------------------------------------
    def forward(self, ids: Tensor, targets: Tensor | None = None) -> MegabyteOutput:
        """``ids`` (batch, time) → ``MegabyteOutput(logits (batch, time, vocab), loss or None)``."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be (batch, time), got shape {tuple(ids.shape)}")
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"ids must be integer ids, got {ids.dtype}")
        ids = ids.long()  # int32 or uint8 ids too (uint8 cannot hold the PAD id the padding needs)
        batch, time = ids.shape
        patch = self.config.patch_size
        padded_time = max(patch, -(-time // patch) * patch)
        if padded_time != time:
            ids = F.pad(ids, (0, padded_time - time), value=tokens.PAD_ID)

        # The global stage's group is the whole sequence; each stage below runs on the units of one
        # unit of the stage above, folded into the batch.
        local_groups = padded_time // self.config.unit_sizes[-2]  # groups of the local stage per sequence
        ngrams = self.ngram_rows(ids)
        rows, context = batch, None
        for stage in self.stages:
            # Each stage's inputs read the unit before each of its positions (PAD before the sequence): the ids
            # shifted by one unit, grouped as the stage runs them.
            before = F.pad(ids, (stage.unit, -stage.unit), value=tokens.PAD_ID)
            before = rearrange(before, "b (n g u) -> (b n) g u", b=batch, u=stage.unit, n=rows // batch)
            before_ngrams = None
            if ngrams is not None:  # shifted alike; the rows before the sequence are never read (start vectors)
                before_ngrams = F.pad(ngrams, (0, 0, stage.unit, -stage.unit))
                before_ngrams = rearrange(before_ngrams, "b (n g u) k -> (b n) g u k", b=batch, u=stage.unit,
                                          n=rows // batch)
            starts = torch.arange(before.shape[1], device=ids.device) == 0
            x = stage.inputs(before, starts, context, before_ngrams)
            if stage.is_local:
                hidden = self.local_hidden(stage, x, ids, local_groups if stage.cross_patch else None)
                break
            hidden = stage.transformer(x)
            context = rearrange(stage.contexts(hidden), "b n g d -> (b n) g d")
            rows *= hidden.shape[1]
        logits = rearrange(self.head(hidden), "(b n) u v -> b (n u) v", b=batch)[:, :time]

        loss = None
        if targets is not None:
            if targets.shape != (batch, time):
                raise ValueError(f"targets must have the shape of ids {(batch, time)}, got {tuple(targets.shape)}")
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1).long(),
                                   ignore_index=tokens.PAD_ID)
        return MegabyteOutput(logits, loss)

    def local_hidden(self, stage: Stage, x: Tensor, ids: Tensor, groups: int | None) -> Tensor:
        """The local stage's transformer over its inputs ``x`` (batch * patches, patch, d) in training and uncached
        forwards: ``groups`` patches per sequence for cross-patch attention (None without it), the word blocks after
        its first block at the word ends of ``ids`` (batch, padded time)."""
        if self.words is None:
            return stage.transformer(x, groups=groups)
        add_words = after_first_block(lambda hidden: self.words(hidden, ids))
        return stage.transformer(x, groups=groups, after_block=add_words)

    def ngram_rows(self, ids: Tensor) -> Tensor | None:
        """(batch, time) ids → (batch, time, tables) the hashed tables' rows at each position (``hash_ngrams``, PAD
        before ``ids``); None for a model without tables."""
        if self.ngram_powers is None:
            return None
        return hash_ngrams(ids, self.ngram_powers, self.config.hash_buckets, bool(self.config.hash_word_bytes))

    # -- bookkeeping ---------------------------------------------------------------------------
    def num_parameters(self, tables: bool = True) -> int:
        """Number of trainable parameters; ``tables=False`` leaves out the hashed n-gram tables (looked up, never
        multiplied: peers of the same size match the network without them)."""
        left_out = set() if tables else {id(table) for table in lookup_tables(self)}
        return sum(p.numel() for p in self.parameters() if p.requires_grad and id(p) not in left_out)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: decay on Linear weights only, none on norms, embeddings or start vectors."""
        decay = [m.weight for m in self.modules() if isinstance(m, nn.Linear)]
        decay_ids = {id(p) for p in decay}
        no_decay = [p for p in self.parameters() if id(p) not in decay_ids]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # -- generation (bytemodels/generate.py does the work) -----------------------------------------
    @torch.inference_mode()  # cheaper than no_grad for the many small steps of decoding
    def generate(self, prompt: bytes | str | Sequence[bytes | str] | Tensor, max_new_bytes: int, *,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 stop: bytes | str | Sequence[bytes | str] | None = None, seed: int | None = None,
                 use_cache: bool = True, prefix_ids: Sequence[int] = (tokens.BOS_ID,),
                 compile: bool = False) -> bytes | list[bytes]:
        """Generate up to ``max_new_bytes`` bytes after each prompt.

        ``prompt`` is ``bytes`` or ``str`` (UTF-8, what the text codec makes of it; both return ``bytes``), a list
        of them of any lengths, or a (batch, time) tensor of ids used as given (both return ``list[bytes]``).
        ``prefix_ids`` go before ``bytes`` and ``str`` prompts (BOS, as in training documents). The output is
        bytes either way: a byte model may stop inside a character (``.decode("utf-8", "replace")`` shows it). Generation ends early at EOS or once
        the output ends with a ``stop`` byte string (which is not returned). ``temperature=0`` is greedy.
        ``use_cache=False`` recomputes the whole prefix for every byte (the reference for tests): greedy output is
        the same either way; with sampling and a ``seed``, a batch whose prompts differ in length modulo the patch
        size is decoded in groups one after another, so its rows draw other random numbers than without the cache.
        The context stays within ``max_seq_len`` (the window the model was trained on): when the next byte would
        lie beyond it, generation continues from the context's last whole patches, about half a window, after a
        fresh pass over them, so memory is bounded by the window however long the output.
        ``compile=True`` compiles the global and local stages' one-position decoding steps with ``torch.compile``
        on first use (tens of seconds, kept for later calls); worth it for long outputs such as audio."""
        from bytemodels.generate import generate

        return generate(self, prompt, max_new_bytes, temperature=temperature, top_k=top_k, top_p=top_p,
                        stop=stop, seed=seed, use_cache=use_cache, prefix_ids=prefix_ids, compile=compile)

    @torch.inference_mode()
    def generate_stream(self, prompt: bytes | str | Tensor, max_new_bytes: int, **options) -> Iterator[bytes]:
        """Like ``generate`` for one prompt, yielding bytes as soon as they are final."""
        from bytemodels.generate import generate_stream

        yield from generate_stream(self, prompt, max_new_bytes, **options)

    # -- files -------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
        from bytemodels.pretrained import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu", *,
                        revision: str | None = None) -> "Megabyte":
        """Load a model in eval mode (no dropout; call ``.train()`` to fine-tune it) from a folder written by
        ``save_pretrained``, a training checkpoint, a run folder (its newest checkpoint), or a Hugging Face hub repo
        id such as ``"org/name"`` at ``revision`` (downloaded once into the hub cache; ``HF_HUB_OFFLINE=1`` reads the
        cache). ``map_location``: a device name (``"auto"`` picks the best one here) or a ``torch.device``; a name that
        is no device, or one this machine lacks, raises ``ValueError``."""
        from bytemodels.pretrained import load_pretrained

        return load_pretrained(cls, directory, map_location, revision=revision)

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    revision: str | None = None, commit_message: str = "Upload bytemodels model") -> str:
        """Upload ``config.json``, ``model.safetensors`` and a model card to the Hugging Face hub repo ``repo_id``
        (created if needed; log in first with ``hf auth login`` or pass ``token``); returns the commit's URL. To
        share a training run with its codec, validation score and samples, use ``bytemodels push RUN org/name``."""
        from bytemodels.hub_models import push_model

        return push_model(self, repo_id, private=private, token=token, revision=revision,
                          commit_message=commit_message)
