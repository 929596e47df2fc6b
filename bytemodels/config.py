"""Model configuration: one dataclass, named presets, JSON round trip."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bytemodels import tokens
from bytemodels.jsonfile import read_json_object
from bytemodels.fields import config_from_dict, config_to_dict


@dataclass
class MegabyteConfig:
    """Shape of a MEGABYTE model.

    Stages run from the outermost (global) model to the innermost (local) one. A two-stage model
    has ``patch_sizes=(P,)``: a global transformer over patches of ``P`` bytes and a local
    transformer over the bytes of each patch. A three-stage model, e.g. ``patch_sizes=(64, 8)``,
    puts a middle transformer over the 8-byte sub-patches of each 64-byte patch. The per-stage
    tuples ``dims``, ``layers`` and ``heads`` have one entry per stage, global first.
    """

    patch_sizes: tuple[int, ...] = (8,)
    """Bytes per unit of each non-local stage, global first; each divides the one before."""
    dims: tuple[int, ...] = (128, 64)
    """Model width of each stage, global first."""
    layers: tuple[int, ...] = (4, 2)
    """Transformer blocks of each stage, global first."""
    heads: tuple[int, ...] = (4, 2)
    """Attention heads of each stage, global first."""
    max_seq_len: int = 1024
    """Longest sequence in bytes (a multiple of the global patch size)."""
    num_tags: int = tokens.DEFAULT_NUM_TAGS
    """Modality tag ids reserved after PAD, BOS and EOS."""
    embed_dim: int | None = None
    """Width of the byte embeddings concatenated into a patch (default: the local width)."""
    mlp_ratio: float = 4.0
    """Hidden width of each MLP as a multiple of the stage width."""
    dropout: float = 0.0
    """Dropout on attention outputs, MLP outputs and embeddings while training."""
    rope_base: float = 10000.0
    """Base of the rotary position frequencies."""
    norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""
    token_shift: bool = True
    """Every block reads half of its channels from the previous position (RWKV's token shift, as in
    MEGABYTE-pytorch). An ablation switch, like ``cross_patch`` and ``qk_norm``: on unless measuring without it."""
    cross_patch: bool = True
    """Every local layer also attends to the previous patch's keys and values, and its token shift reads the
    previous patch's last byte (cross-patch attention); no new weights."""
    qk_norm: bool = True
    """RMSNorm of each attention head's queries and keys before rotary (QK-norm, as in OLMo 2)."""
    hash_ngrams: tuple[int, ...] = ()
    """Lengths of the byte n-grams (each at least 2) whose hashed embeddings are added to every byte's embedding,
    the n-gram ending at that byte (the Byte Latent Transformer's hash n-gram embeddings); empty: none."""
    hash_word_bytes: int = 0
    """One more hashed table (beside the ``hash_ngrams`` ones) for the word so far: the bytes since the last space
    or punctuation before each byte (that separator included), at most this many of the newest; 0: none. Inside a
    word its row names the word's beginning, on a space the whole word before it: what a tokenizer's piece gives,
    whatever the word's length."""
    hash_buckets: int = 16384
    """Rows of each hashed table (``hash_ngrams``, ``hash_word_bytes``): n-grams share a row where their hashes
    collide."""
    ngram_dropout: tuple[float, ...] = (0.0,)
    """Probability, while training, that a hashed n-gram's row is left out of a byte's embedding (each byte and
    length drawn alone, the kept rows scaled up to match): keeps the tables from memorising a small training text.
    One value for every table, or one per table in their order (the ``hash_ngrams`` lengths, then the word so far):
    the long n-grams, which name fewer places in the text, learn it by heart sooner than the 2-grams."""
    word_layers: int = 0
    """Word blocks (``bytemodels.words``): blocks (``word_dim`` wide) that run after the first local block at the word
    ends only (the positions after the first space or punctuation after a word, SpaceByte's patch boundaries), over
    the window's word ends, their output added there; 0: none. They hand each word's first byte a summary of every
    word before it in the window, where the global stage's context reaches it up to a patch late: for text."""
    word_dim: int = 0
    """Width of the word blocks (projected from and back to the local width); 0: the local width. Their heads are as
    wide as the local stage's, so it must be a multiple of that. They run at a quarter of the positions
    (``word_capacity``), so widening them costs a quarter of what widening the local stage would."""

    def __post_init__(self) -> None:
        for name in ("patch_sizes", "dims", "layers", "heads", "hash_ngrams"):
            value = getattr(self, name)
            if isinstance(value, int):
                value = (value,)
            setattr(self, name, tuple(int(v) for v in value))
        # One number (as configs saved before the per-table rates wrote it) is the rate of every table.
        rates = self.ngram_dropout
        try:
            self.ngram_dropout = (float(rates),) if isinstance(rates, (int, float)) else tuple(float(r) for r in rates)
        except (TypeError, ValueError):
            raise ValueError(f"ngram_dropout={rates!r}: give a rate or one rate per table") from None
        self.validate()

    # -- readable names for the common two-stage case -------------------------------------
    @property
    def patch_size(self) -> int:
        """Bytes per global patch: the alignment unit of the data layer."""
        return self.patch_sizes[0]

    @property
    def num_stages(self) -> int:
        return len(self.dims)

    @property
    def unit_sizes(self) -> tuple[int, ...]:
        """Bytes per token of each stage, global first; the local stage's unit is one byte."""
        return self.patch_sizes + (1,)

    @property
    def global_dim(self) -> int:
        return self.dims[0]

    @property
    def local_dim(self) -> int:
        return self.dims[-1]

    @property
    def byte_embed_dim(self) -> int:
        return self.embed_dim or self.dims[-1]

    @property
    def hash_tables(self) -> int:
        """Hashed tables per stage: one per n-gram length, and one for the word so far."""
        return len(self.hash_ngrams) + (1 if self.hash_word_bytes else 0)

    @property
    def word_capacity(self) -> int:
        """Word ends per window that the word blocks run at (a quarter of the window; English text has about one per
        5 bytes): a training step runs them at this many positions per window, whatever the text."""
        return max(1, self.max_seq_len // 4)

    @property
    def word_width(self) -> int:
        """The word blocks' width: ``word_dim``, or the local width where it is 0."""
        return self.word_dim or self.local_dim

    @property
    def local_head_dim(self) -> int:
        """Width of one local attention head (the word blocks' heads are as wide)."""
        return self.local_dim // self.heads[-1]

    @property
    def word_heads(self) -> int:
        """The word blocks' heads: as wide as the local stage's."""
        return self.word_width // self.local_head_dim

    @property
    def vocab_size(self) -> int:
        """256 byte values plus PAD, BOS, EOS and the modality tags."""
        return tokens.vocab_size(self.num_tags)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field to change when the shape is inconsistent or beyond ``LIMITS``
        (far above any real model: a bogus config fails here, before anything is allocated for it)."""
        stages = len(self.patch_sizes) + 1
        if stages > LIMITS["stages"]:
            raise ValueError(f"patch_sizes={self.patch_sizes} makes {stages} stages; at most {LIMITS['stages']}")
        for name in ("dims", "layers", "heads"):
            if len(getattr(self, name)) != stages:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} entries but patch_sizes={self.patch_sizes} "
                    f"makes {stages} stages: give one entry per stage, global first"
                )
        units = self.unit_sizes
        for outer, inner in zip(units, units[1:]):
            if outer <= inner or outer % inner:
                raise ValueError(
                    f"patch_sizes={self.patch_sizes}: each patch size must be a multiple of the next "
                    "and larger than it (the last one larger than 1)"
                )
        if min(self.dims) < 1:
            raise ValueError(f"dims={self.dims}: every width must be at least 1")
        for name, value, limit in (("dims", max(self.dims), LIMITS["dim"]),
                                   ("layers", sum(self.layers), LIMITS["layers"]),
                                   ("max_seq_len", self.max_seq_len, LIMITS["max_seq_len"]),
                                   ("num_tags", self.num_tags, LIMITS["num_tags"]),
                                   ("embed_dim", self.embed_dim or 0, LIMITS["dim"]),
                                   ("word_dim", self.word_dim, LIMITS["dim"]),
                                   ("mlp_ratio", self.mlp_ratio, LIMITS["mlp_ratio"])):
            if not value <= limit:  # also refuses nan
                raise ValueError(f"{name}={getattr(self, name)} is beyond the limit of {limit:,}"
                                 f"{' blocks in all' if name == 'layers' else ''}: this is no real model's config")
        for dim, head_count in zip(self.dims, self.heads):
            if head_count < 1 or dim % head_count or (dim // head_count) % 2:
                raise ValueError(
                    f"dims={self.dims}, heads={self.heads}: each width must split into heads of even size"
                )
        if min(self.layers) < 0:
            raise ValueError(f"layers={self.layers} must not be negative")
        if self.max_seq_len < self.patch_size or self.max_seq_len % self.patch_size:
            raise ValueError(
                f"max_seq_len={self.max_seq_len} must be a positive multiple of the patch size {self.patch_size}"
            )
        if not 0.0 <= self.dropout < 1.0:  # also refuses nan
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if not self.ngram_dropout or not all(0.0 <= rate < 1.0 for rate in self.ngram_dropout):
            raise ValueError(f"ngram_dropout={self.ngram_dropout}: each rate must be in [0, 1)")
        if len(self.ngram_dropout) not in (1, max(self.hash_tables, 1)):
            raise ValueError(f"ngram_dropout={self.ngram_dropout}: give one rate for every table or one per table "
                             f"({self.hash_tables}: the hash_ngrams lengths, then the word so far)")
        if self.num_tags < 0:
            raise ValueError(f"num_tags={self.num_tags} must not be negative")
        if self.embed_dim is not None and self.embed_dim < 1:
            raise ValueError(f"embed_dim={self.embed_dim} must be at least 1 (None: the local width)")
        if int(self.mlp_ratio * min(self.dims)) < 1:
            raise ValueError(f"mlp_ratio={self.mlp_ratio} leaves an MLP without hidden units at width {min(self.dims)}")
        if self.hash_ngrams and (min(self.hash_ngrams) < 2 or max(self.hash_ngrams) > LIMITS["ngram"]
                                 or len(set(self.hash_ngrams)) != len(self.hash_ngrams)):
            raise ValueError(f"hash_ngrams={self.hash_ngrams}: give distinct n-gram lengths from 2 to {LIMITS['ngram']}")
        if not 0 <= self.hash_word_bytes <= LIMITS["ngram"] or self.hash_word_bytes == 1:
            raise ValueError(f"hash_word_bytes={self.hash_word_bytes}: give 0 (none) or a reach from 2 to "
                             f"{LIMITS['ngram']}")
        if not 1 <= self.hash_buckets <= LIMITS["hash_buckets"]:
            raise ValueError(f"hash_buckets={self.hash_buckets} must be in 1 .. {LIMITS['hash_buckets']:,}")
        if not 0 <= self.word_layers <= LIMITS["layers"]:
            raise ValueError(f"word_layers={self.word_layers} must be in 0 .. {LIMITS['layers']:,}")
        if self.word_dim < 0 or self.word_dim % self.local_head_dim:
            raise ValueError(f"word_dim={self.word_dim}: give 0 (the local width) or a multiple of the local heads' "
                             f"width, {self.local_head_dim}")
        if self.word_layers and self.layers[-1] < 1:
            raise ValueError(f"word_layers={self.word_layers} needs a local block to follow (layers={self.layers} "
                             "has none in the local stage)")
        for name in ("rope_base", "norm_eps"):
            if not getattr(self, name) > 0:  # also refuses nan
                raise ValueError(f"{name}={getattr(self, name)} must be positive")

    # -- cost estimates ---------------------------------------------------------------------
    def flops_per_byte(self, training: bool = True) -> float:
        """Estimated floating-point operations per byte (fwd+bwd when ``training``), for MFU.

        Counts the matrix multiplies of every stage (each stage's token covers ``unit`` bytes), its attention over the
        stage's context, the patch embedders, the stage-to-stage projections, the word blocks (at ``word_capacity``
        positions per window) and the output head: the nanoGPT/PaLM ``6N + 12·L·d·T`` estimate per stage. Hashed
        n-gram tables cost their additions only (a lookup multiplies nothing), as the BLT paper counts them.
        """
        units = self.unit_sizes
        flops = 0.0
        for stage, (dim, depth, unit) in enumerate(zip(self.dims, self.layers, units)):
            context = self.max_seq_len // unit if stage == 0 else units[stage - 1] // unit
            attended = context / 2  # causal: half on average
            if self.cross_patch and stage == self.num_stages - 1 and stage > 0:
                attended += context  # the whole previous patch
            per_token = blocks_flops(dim, depth, self.mlp_ratio, attended)
            if unit > 1:  # patch embedder: concat ``unit`` byte embeddings, project to ``dim``
                per_token += 2 * unit * self.byte_embed_dim * dim
            # Hashed n-grams: table lookups, and one addition per length to each byte's embedding.
            per_token += unit * self.hash_tables * (self.byte_embed_dim if unit > 1 else dim)
            if stage + 1 < self.num_stages:  # projection into the next stage's positions
                per_token += 2 * dim * (unit // units[stage + 1]) * self.dims[stage + 1]
            flops += per_token / unit
        if self.word_layers:  # word_capacity positions per window, padding included, and the two projections
            width, capacity = self.word_width, self.word_capacity
            per_word = blocks_flops(width, self.word_layers, self.mlp_ratio, capacity / 2)
            per_word += 2 * 2 * self.local_dim * width
            flops += per_word * capacity / self.max_seq_len
        flops += 2 * self.local_dim * self.vocab_size  # output head
        return flops * (3 if training else 1)

    # -- presets and serialisation ------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "MegabyteConfig":
        """A named configuration (``tiny``, ``small``, ``base``, ``large``), fields overridden by name."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return config_from_dict(cls, {**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The fields by name, and ``format``: the model format they were written in (``MODEL_FORMAT``)."""
        return {"format": MODEL_FORMAT, **config_to_dict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MegabyteConfig":
        """Build from a saved dict (``to_dict``); an unknown key is an error that names it and lists the fields.

        A dict of another model format (no ``format``: written before formats were recorded) raises
        :class:`OlderFormatError`: its model may compute another function with the same weight shapes."""
        values = dict(values)
        version = values.pop("format", None)
        if version != MODEL_FORMAT:
            raise OlderFormatError(version)
        return config_from_dict(cls, values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "MegabyteConfig":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "MegabyteConfig":
        """Read a ``config.json``; any problem with the file or its values is a ``ValueError`` naming it."""
        values = read_json_object(path)
        try:
            return cls.from_dict(values)
        except OlderFormatError as error:
            raise OlderFormatError(error.version, path) from None
        except (ValueError, TypeError, OverflowError) as error:  # a wrong type reaches int() or a comparison
            raise ValueError(f"{path}: not a valid model config ({error})") from None


def blocks_flops(dim: int, layers: int, mlp_ratio: float, attended: float) -> float:
    """Forward FLOPs per position of ``layers`` transformer blocks of width ``dim`` whose attention reads ``attended``
    positions (the nanoGPT/PaLM count: 2 x the block's matrix multiplies, 2 x 2 x ``dim`` per position attended)."""
    block_matmul = 4 * dim * dim + 2 * dim * int(mlp_ratio * dim)
    return 2 * layers * block_matmul + 2 * layers * 2 * dim * attended


#: The model format ``to_dict`` records. 2 (bytemodels 2026-12): squared-ReLU MLPs, input skip, the previous byte at
#: a patch's first local position and the embedding and head gains always on; no value embeddings. Models of
#: format 1 (no ``format`` key) had these as switches.
MODEL_FORMAT = 2


class OlderFormatError(ValueError):
    """A model config written in another model format than ``MODEL_FORMAT`` (by an older, or newer, bytemodels)."""

    def __init__(self, version: Any, path: str | Path | None = None) -> None:
        self.version = version
        where = f"{path}: " if path is not None else ""
        if isinstance(version, int) and version > MODEL_FORMAT:
            super().__init__(f"{where}written by a newer bytemodels (model format {version}; this release reads "
                             f"format {MODEL_FORMAT}): upgrade bytemodels to load it")
            return
        found = "no model format" if version is None else f"model format {version!r}"
        super().__init__(f"{where}written by an older bytemodels ({found}; this release reads format {MODEL_FORMAT}): "
                         "retrain the model, or load it with the bytemodels release that wrote it")


#: Upper bounds that ``validate`` checks, far above any real model (the largest preset has 15 blocks, width 1,024,
#: 8,192 bytes of context); the data cache stores tags as int16.
LIMITS: dict[str, float] = {"stages": 16, "dim": 1 << 16, "layers": 1 << 12, "max_seq_len": 1 << 26,
                            "num_tags": (1 << 15) - 1, "mlp_ratio": 64, "ngram": 64, "hash_buckets": 1 << 24}

#: Named model shapes. ``tiny`` is for tests and CPU smoke runs; ``base`` is what a GPU user trains.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(patch_sizes=(8,), dims=(128, 64), layers=(4, 2), heads=(4, 2), max_seq_len=512),
    "small": dict(patch_sizes=(8,), dims=(384, 192), layers=(5, 3), heads=(6, 3), max_seq_len=2048),
    "base": dict(patch_sizes=(8,), dims=(640, 320), layers=(7, 3), heads=(10, 5), max_seq_len=4096),
    "large": dict(patch_sizes=(8,), dims=(1024, 512), layers=(11, 4), heads=(16, 8), max_seq_len=8192),
}
