"""Model configuration: one dataclass, named presets, JSON round trip."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bytemodels import tokens
from bytemodels.jsonfile import read_json_object
from bytemodels.layers import ACTIVATIONS
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
    activation: str = "relu2"
    """MLP activation: relu2 (squared ReLU, as in Primer: 0.15 bits/byte better than gelu after 300 steps on
    TinyStories, docs/benchmarks.md) or gelu."""
    dropout: float = 0.0
    """Dropout on attention outputs, MLP outputs and embeddings while training."""
    rope_base: float = 10000.0
    """Base of the rotary position frequencies."""
    norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""
    token_shift: bool = True
    """Every block reads half of its channels from the previous position (RWKV's token shift, as
    in MEGABYTE-pytorch): 0.14 bits/byte better after 300 steps on TinyStories (docs/benchmarks.md)."""
    previous_byte: bool = True
    """The local model's first position also sees the embedding of the byte before the patch, so a
    patch's first byte is not predicted from the global model alone (0.04 bits/byte better)."""
    cross_patch: bool = True
    """Every local layer also attends to the previous patch's keys and values, and its token shift
    reads the previous patch's last byte (cross-patch attention): 0.14 bits/byte better after 300
    steps on TinyStories. Adds no weights; generation keeps one more patch of local keys and values."""
    qk_norm: bool = True
    """RMSNorm of each attention head's queries and keys before rotary (QK-norm, as in OLMo 2): 0.012
    bits/byte better after 300 steps on TinyStories, and a higher learning rate pays; free per step compiled,
    about 9% uncompiled (docs/benchmarks.md)."""
    input_skip: bool = True
    """Every block of every stage reads a learned mix of the residual stream and its stage's inputs (x ← a·x + b·x0,
    as in the nanoGPT speedruns): two scalars per block. With ``value_embeds``: 0.077 bits/byte better after 300 steps
    on TinyStories, no change after 4,000 steps of the recipe (it speeds up early learning; docs/benchmarks.md)."""
    value_embeds: bool = True
    """Every local block adds the embedding of its input byte (the local stage's own byte embedding: no new weights)
    to its attention values, so each layer's values keep the byte itself (value embeddings, as in the nanoGPT
    speedruns). Alone 0.010 bits/byte better after 300 steps on TinyStories, on top of ``input_skip`` 0.001."""
    embed_gain: float = 30.0
    """Byte embeddings are stored divided by this and multiplied back when looked up, so Adam moves them this many
    times as fast as the other weights (embeddings want a far higher learning rate than matrices, as in the nanoGPT
    speedruns); no new weights. 30 was best of 1, 3, 10, 30 and 100: 0.033 bits/byte better after 300 steps on
    TinyStories (docs/benchmarks.md)."""
    head_gain: float = 8.0
    """The output layer's weight is stored divided by this and multiplied back, so Adam moves it this many times as
    fast as the other weights (as ``embed_gain``); no new weights. 8 was best of 0.5, 1, 2, 4 and 8 after 300 steps on
    TinyStories (0.067 bits/byte better than 1), and 0.7% better than 4 on MNIST and 0.2% on 16-bit audio after 200;
    level with 4 after 4,073 steps of the TinyStories recipe (docs/benchmarks.md)."""

    def __post_init__(self) -> None:
        for name in ("patch_sizes", "dims", "layers", "heads"):
            value = getattr(self, name)
            if isinstance(value, int):
                value = (value,)
            setattr(self, name, tuple(int(v) for v in value))
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
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.num_tags < 0:
            raise ValueError(f"num_tags={self.num_tags} must not be negative")
        if self.embed_dim is not None and self.embed_dim < 1:
            raise ValueError(f"embed_dim={self.embed_dim} must be at least 1 (None: the local width)")
        if int(self.mlp_ratio * min(self.dims)) < 1:
            raise ValueError(f"mlp_ratio={self.mlp_ratio} leaves an MLP without hidden units at width {min(self.dims)}")
        for name in ("embed_gain", "head_gain", "rope_base", "norm_eps"):
            if not getattr(self, name) > 0:  # also refuses nan
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.activation not in ACTIVATION_NAMES:
            raise ValueError(f"activation={self.activation!r}; choose one of: {', '.join(ACTIVATION_NAMES)}")

    # -- cost estimates ---------------------------------------------------------------------
    def flops_per_byte(self, training: bool = True) -> float:
        """Estimated floating-point operations per byte (fwd+bwd when ``training``), for MFU.

        Counts the matrix multiplies of every stage (each stage's token covers ``unit`` bytes),
        its attention over the stage's context, the patch embedders, the stage-to-stage
        projections and the output head: the nanoGPT/PaLM ``6N + 12·L·d·T`` estimate per stage.
        """
        units = self.unit_sizes
        flops = 0.0
        for stage, (dim, depth, unit) in enumerate(zip(self.dims, self.layers, units)):
            hidden = int(self.mlp_ratio * dim)
            block_matmul = 4 * dim * dim + 2 * dim * hidden
            context = self.max_seq_len // unit if stage == 0 else units[stage - 1] // unit
            attended = context / 2  # causal: half on average
            if self.cross_patch and stage == self.num_stages - 1 and stage > 0:
                attended += context  # the whole previous patch
            per_token = 2 * depth * block_matmul + 2 * depth * 2 * dim * attended
            if unit > 1:  # patch embedder: concat ``unit`` byte embeddings, project to ``dim``
                per_token += 2 * unit * self.byte_embed_dim * dim
            if stage + 1 < self.num_stages:  # projection into the next stage's positions
                per_token += 2 * dim * (unit // units[stage + 1]) * self.dims[stage + 1]
            flops += per_token / unit
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
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MegabyteConfig":
        """Build from a saved dict; an unknown key is an error that names it and lists the fields.

        Where a dict lacks a field added after the first saved models, it takes the value that model was
        trained with (see ``LEGACY_SWITCHES``): ``token_shift``, ``previous_byte``, ``cross_patch``, ``activation``,
        ``value_embeds``, ``embed_gain`` and ``head_gain`` change no weight shapes, so such a checkpoint would otherwise
        load without error and compute garbage; ``qk_norm`` and ``input_skip`` add weights the checkpoint does not have."""
        return config_from_dict(cls, {**LEGACY_SWITCHES, **values})

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
        except (ValueError, TypeError, OverflowError) as error:  # a wrong type reaches int() or a comparison
            raise ValueError(f"{path}: not a valid model config ({error})") from None


#: Fields that came after the first saved models: absent from a saved config means the behaviour before them.
LEGACY_SWITCHES: dict[str, Any] = {"token_shift": False, "previous_byte": False, "cross_patch": False,
                                   "activation": "gelu", "qk_norm": False, "input_skip": False,
                                   "value_embeds": False, "embed_gain": 1.0, "head_gain": 1.0}

#: Upper bounds that ``validate`` checks, far above any real model (the largest preset has 15 blocks, width 1,024,
#: 8,192 bytes of context); the data cache stores tags as int16.
LIMITS: dict[str, float] = {"stages": 16, "dim": 1 << 16, "layers": 1 << 12, "max_seq_len": 1 << 26,
                            "num_tags": (1 << 15) - 1, "mlp_ratio": 64}

#: Names accepted by ``activation``: those of the functions in bytemodels.layers.
ACTIVATION_NAMES = tuple(ACTIVATIONS)

#: Named model shapes. ``tiny`` is for tests and CPU smoke runs; ``base`` is what a GPU user trains.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(patch_sizes=(8,), dims=(128, 64), layers=(4, 2), heads=(4, 2), max_seq_len=512),
    "small": dict(patch_sizes=(8,), dims=(384, 192), layers=(5, 3), heads=(6, 3), max_seq_len=2048),
    "base": dict(patch_sizes=(8,), dims=(640, 320), layers=(7, 3), heads=(10, 5), max_seq_len=4096),
    "large": dict(patch_sizes=(8,), dims=(1024, 512), layers=(11, 4), heads=(16, 8), max_seq_len=8192),
}
