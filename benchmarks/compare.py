"""Bits per byte on held-out data: bytemodels against its peers and against compressors.

One command measures, on the same held-out bytes of each data set in ``../shared/data``:

- general compressors at their strongest settings (gzip, bzip2, xz, zstd) and the format a user would
  otherwise keep (FLAC for audio, optimised PNG for images): see ``benchmarks/compressors.py``;
- three models trained here by the same simple loop (AdamW, linear warmup then cosine decay, the same
  learning rate, batch, window length, seed and data windows from ``bytemodels.data``), for the same
  number of steps (``--budget-steps``) or the same wall-clock time each (``--time``), on the same
  thread count: bytemodels' ``Megabyte``; MEGABYTE-pytorch 0.3.6 at the same configuration, with its
  pad id moved from 0 to 256 (its default would drop every 0x00 byte from its loss); and a flat
  byte-level transformer with the same parameter count (the MEGABYTE paper's baseline). The peers come
  from ``benchmarks/baselines.py``.
- on text, the peer a user would pick instead of a byte model: a nanoGPT-style GPT over byte-level BPE
  tokens, trained and timed by the same loop and scored in bits per byte of the same validation bytes.

====================  ========================================================================  =========
peer (``--peers``)    what                                                                      data sets
====================  ========================================================================  =========
``bytemodels``        bytemodels' ``Megabyte`` at ``--preset`` and the model flags              all
``megabyte-pytorch``  MEGABYTE-pytorch 0.3.6 at the same shape, pad id 256                      all
``flat``              one token per byte, our blocks, depth matched to bytemodels' parameters   all
``gpt-bpe``           nanoGPT-style GPT (our blocks, tied embeddings) over a byte-level BPE     text only
                      of ``--bpe-vocab`` ids (4,096, EOS included; the ``tokenizers`` package)
                      trained on the training stories; the global stage's width and heads,
                      depth matched to bytemodels' parameters; windows of ``--gpt-context``
                      tokens (default: the byte window over the training bytes per token)
``spacebyte``         SpaceByte (Slagle 2024): local blocks at every byte, global blocks at     text only
                      patch starts after spacelike bytes; our blocks, bytemodels' widths,
                      global depth matched to bytemodels' parameters
``entropybyte``       the same model with BLT's entropy patches: a patch starts where a byte    all
                      n-gram's next-byte entropy (``--ngram-order``, 3; counted on the training
                      windows) exceeds a threshold set for a mean patch of ``--mean-patch``
                      bytes (default: the space patches' mean on text, 6 elsewhere)
``bytemodels-words``  bytemodels' ``Megabyte`` with one word block (``word_layers=1``): a block   text only
                      of the local width after the first local block, run only at the
                      window's word ends (``bytemodels.words``)
====================  ========================================================================  =========

The default ``--peers`` is every peer that reads the data set (the first four on text, the byte peers elsewhere);
the patching peers (``spacebyte``, ``entropybyte``) and ``bytemodels-words`` are measured when named. Every model
row gives its training FLOPs per byte (forward and backward; the patching peers' at the mean patch size reached on
the validation windows), so equal-FLOPs comparisons can be read beside the equal-time ones. The GPT is scored on
every validation token once (non-overlapping windows of its context, each story's tokens then one EOS id; EOS is
trained on but, as for the byte peers, not scored), and its bits are divided by the validation bytes the byte peers
are scored on; the tokens are checked to decode to exactly those bytes. ``--eval-windows`` limits the byte peers
only. The table also gives its bytes per token.

Held-out data (bytes as the codecs make them; the models are scored on exactly these bytes):

==========  =====================================================  ===============================
column      validation                                             training
==========  =====================================================  ===============================
text        TinyStories ``valid.txt``, 823 stories, UTF-8          ``train.txt`` (5,723 stories)
audio       FSDD clips with file index 0-4 (300), mu-law 8 kHz     index 5-49 (2,700 clips)
audio16     the same clips as 16-bit PCM (2 bytes per sample)      the same clips
mnist       MNIST images 9000-9999, 28x28 grey pixels              images 0-8999
cifar       CIFAR-10 sample images with index % 10 == 9 (500)      the other 4,500
==========  =====================================================  ===============================

Text stories are packed into one stream (``BOS tag story EOS``); clips and images are records (a header
patch, the bytes, EOS). Bits per byte count byte targets only (ids < 256): BOS, EOS and tags are
predicted in training but not scored. Images use patches aligned to pixels and rows (MNIST: a row of
28 bytes; CIFAR: 8 pixels, a quarter of a row) and windows holding one whole image.

    python benchmarks/compare.py --quick                          # smoke run, well under a minute
    python benchmarks/compare.py --skip-models --modality all     # the compressor rows only
    python benchmarks/compare.py --modality text --budget-steps 300
    python benchmarks/compare.py --modality text --time 30m --threads 2   # the issue's 30-minute budget
    python benchmarks/compare.py --modality text --time 30m --threads 2 --peers bytemodels,gpt-bpe  # vs a BPE GPT
    python benchmarks/compare.py --modality text --time 30m --peers bytemodels,gpt-bpe --eval-overlap 0.5  # with context
    python benchmarks/compare.py --modality text --time 30m --peers bytemodels,gpt-bpe --score-training  # fit or carry
    python benchmarks/compare.py --modality text --time 3m --compile     # every peer's loss compiled
    python benchmarks/compare.py --peers bytemodels --no-cross-patch --no-qk-norm   # any MegabyteConfig field
    python benchmarks/compare.py --modality mnist --budget-steps 200 --lrs 1e-3,2e-3,4e-3,8e-3,16e-3  # each at its best

``--lrs`` trains every peer at each peak learning rate (the floor keeps the ratio ``--min-lr / --lr``) and
scores each peer at its own best one: a peer whose best rate is not the shared ``--lr`` is not handicapped
by it. The sweep table and each peer's rate go into the JSON beside the best-of-sweep rows.

Results: a Markdown table on stdout, JSON in ``outputs/benchmarks/compare-<date>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script (python benchmarks/compare.py) or a module (python -m benchmarks.compare).
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from benchmarks import compressors  # noqa: E402
from benchmarks.baselines import (FlatTransformer, MegabytePytorch, SpaceByteConfig, SpaceByteModel,  # noqa: E402
                                  TokenGpt, TokenGptConfig, entropy_boundaries, entropy_threshold,
                                  flat_config_matching, mean_patch_size, ngram_entropy_table, ngram_order,
                                  space_boundaries, spacebyte_config_matching, spacebyte_parameter_count,
                                  token_gpt_config_matching)
from bytemodels import tokens  # noqa: E402
from bytemodels.allocator import keep_freed_memory  # noqa: E402
from bytemodels.budget import parse_duration  # noqa: E402
from bytemodels.config import MegabyteConfig, blocks_flops  # noqa: E402
from bytemodels.data import ByteDataset, PackedWindows, Windows, spread_indices  # noqa: E402
from bytemodels.window_order import step_choices  # noqa: E402
from bytemodels.model import Megabyte  # noqa: E402
from bytemodels.optim import OPTIMIZERS, build_optimizer  # noqa: E402
from bytemodels.app.flags import add_config_arguments, overrides_from_args  # noqa: E402
from bytemodels.runfolder import atomic_write  # noqa: E402
from bytemodels.schedule import SCHEDULES, WSD_DECAY_FRACTION, learning_rate  # noqa: E402

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT_DIR = REPO_ROOT / "outputs" / "benchmarks"
MODALITIES = ("text", "audio", "audio16", "mnist", "cifar")
MODALITY_CHOICES = MODALITIES + ("image", "all")
"""``image`` selects both image sets; ``all`` every data set."""
PEERS = ("bytemodels", "megabyte-pytorch", "flat", "gpt-bpe")
BYTE_PEERS = PEERS[:3]
"""The peers that read bytes, on every data set; ``gpt-bpe`` reads BPE tokens of text."""
TOKEN_PEER = "gpt-bpe"
TOKEN_PEER_MODALITY = "text"
PATCH_PEERS = ("spacebyte", "entropybyte")
"""Byte peers whose patches follow the data (measured only when ``--peers`` names them)."""
WORD_PEER = "bytemodels-words"
"""bytemodels with one word block (``word_layers=1``), measured only when ``--peers`` names it."""
TEXT_ONLY_PEERS = (TOKEN_PEER, "spacebyte", WORD_PEER)
ALL_PEERS = PEERS + PATCH_PEERS + (WORD_PEER,)
CHECKED_PEERS = BYTE_PEERS + (WORD_PEER,)
"""The peers ``check_peers`` tests for causality on untrained models."""
DEFAULT_NGRAM_ORDER = 3
"""Order of the byte n-gram whose next-byte entropy places the entropy peer's patches."""
DEFAULT_MEAN_PATCH = 6.0
"""The entropy peer's mean patch size where the data is not text (on text: the space patcher's mean)."""
PATCH_GAIN_RULE = 0.03
"""A patcher is worth supporting only if it lowers bits per byte by at least this fraction (at equal time)."""
PEER_TITLES = {
    "bytemodels": "bytemodels Megabyte",
    "megabyte-pytorch": "MEGABYTE-pytorch 0.3.6 (pad id 256)",
    "flat": "flat byte transformer",
    "gpt-bpe": "GPT on byte-level BPE tokens (nanoGPT-style)",
    "spacebyte": "SpaceByte (space patches)",
    "entropybyte": "SpaceByte model, BLT entropy patches (n-gram)",
    WORD_PEER: "bytemodels Megabyte with word blocks",
}
DEFAULT_BPE_VOCAB = 4096
#: The model flags' group in ``--help``: which peers each field reaches.
MODEL_FLAGS_TITLE = ("model: MegabyteConfig fields over the preset and the data set's shape (images: patches of "
                     "pixel rows, a window of one whole image). All byte peers take the widths, depths, heads, "
                     "patch and window; the flat model and gpt-bpe also token shift and QK-norm (gpt-bpe: the global "
                     "width and heads; its context follows the window); the other fields are bytemodels' own")
#: A model small enough for ``--quick`` (one head size for both stages, as MEGABYTE-pytorch needs).
QUICK_SHAPE = dict(dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=64)
QUICK_DOCUMENTS = (200, 12)
"""Training and validation documents per data set in ``--quick`` mode."""


# =============================================================================================
# Held-out data
# =============================================================================================


@dataclass
class BenchData:
    """One data set: its validation items (bytes the models are scored on) and its training documents."""

    name: str
    """Column name: text, audio, mnist or cifar."""
    title: str
    """Column header of the table."""
    layout: str
    """``packed`` (text) or ``records`` (one clip or image per record)."""
    tag: int
    """The codec's tag index, stored with every document."""
    key: dict[str, Any]
    """Identifies the data and codec configuration for the byte cache."""
    val_items: list[bytes]
    """Validation items in codec form: what every compressor and model is scored on."""
    train_documents: Callable[[], Iterator[bytes]] = field(repr=False)
    """Yields the training items (only called when the cache for ``key`` does not exist yet)."""
    shape: dict[str, Any] = field(default_factory=dict)
    """Model fields this data needs (patch size, window length), unless the command line sets them."""
    format_rows: Callable[[], dict[str, float]] = field(default=lambda: {}, repr=False)
    """Bits per codec byte of the format a user keeps (FLAC, PNG), by row name."""


def limited(items: list, limit: int | None) -> list:
    """The first ``limit`` items (all with None)."""
    return items if limit is None else items[:limit]


def text_data(data_dir: Path, limits: tuple[int | None, int | None]) -> BenchData:
    """TinyStories: ``train.txt`` for training, ``valid.txt`` held out; one document per story."""
    from bytecodecs import get_codec

    codec = get_codec("text")
    folder = data_dir / "tinystories"
    stories = {split: (folder / f"{split}.txt").read_text(encoding="utf-8").split("\n<|endoftext|>\n")[:-1]
               for split in ("train", "valid")}
    train = limited(stories["train"], limits[0])
    val = [codec.encode(story) for story in limited(stories["valid"], limits[1])]
    return BenchData("text", "TinyStories valid (text)", "packed", codec.tag,
                     {"source": str(folder / "train.txt"), "stories": len(train), "codec": "text"},
                     val, lambda: (codec.encode(story) for story in train))


def fsdd_files(data_dir: Path, held_out: bool) -> list[Path]:
    """FSDD recordings of the official test split (file index 0-4) or train split (5-49), sorted."""
    folder = data_dir / "audio" / "fsdd" / "recordings"
    files = sorted(folder.glob("*.wav"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .wav files; pass --data-dir pointing at ../shared/data")
    return [f for f in files if (int(f.stem.rsplit("_", 1)[1]) < 5) == held_out]


def audio_data(data_dir: Path, limits: tuple[int | None, int | None], sample_format: str = "mulaw") -> BenchData:
    """FSDD spoken digits through the wav codec at 8 kHz, one record per clip.

    ``mulaw``: one byte per sample (lossy; FLAC rows for the original clips and for the mu-law
    samples widened to 16 bits). ``pcm16``: the original 16-bit samples, bit-exact, two bytes per
    sample (FLAC of the same samples is a lossless coder of exactly these bytes)."""
    import soundfile
    from bytecodecs import get_codec

    codec = get_codec("wav", sample_rate=8000, sample_format=sample_format)
    train_files = limited(fsdd_files(data_dir, held_out=False), limits[0])
    val_files = limited(fsdd_files(data_dir, held_out=True), limits[1])
    val = [codec.encode(codec.load(path)) for path in val_files]

    def flac_rows() -> dict[str, float]:
        codec_bytes = sum(len(item) for item in val)
        original = [soundfile.read(path, dtype="int16")[0] for path in val_files]
        rows = {"FLAC -8 (original 16-bit clips)": compressors.flac_bits_per_codec_byte(original, 8000, codec_bytes)}
        if sample_format == "mulaw":
            widened = [pcm16(codec.decode(item).samples) for item in val]
            rows["FLAC -8 (mu-law samples as 16-bit)"] = compressors.flac_bits_per_codec_byte(widened, 8000, codec_bytes)
        return rows

    name, title = ("audio", "FSDD test clips (mu-law 8 kHz)") if sample_format == "mulaw" else \
        ("audio16", "FSDD test clips (16-bit PCM 8 kHz)")
    return BenchData(name, title, "records", codec.tag,
                     {"source": str(train_files[0].parent), "files": [f.name for f in train_files],
                      "codec": f"wav-8000-{sample_format}"},
                     val, lambda: (codec.encode(codec.load(path)) for path in train_files), format_rows=flac_rows)


def audio16_data(data_dir: Path, limits: tuple[int | None, int | None]) -> BenchData:
    """FSDD clips as their original 16-bit samples (two bytes per sample)."""
    return audio_data(data_dir, limits, sample_format="pcm16")


def pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as int16 (the scale WAV files use)."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)


def image_data(name: str, title: str, arrays: np.ndarray, val_mask: np.ndarray, source: Path,
               patch_size: int, limits: tuple[int | None, int | None]) -> BenchData:
    """Images as raw pixel bytes through the image codec, one record per image, PNG as the kept format."""
    from bytecodecs import get_codec

    height, width = arrays.shape[1:3]
    codec = get_codec("image", width=width, height=height, mode="L" if arrays.ndim == 3 else "RGB")
    train_arrays = limited(list(arrays[~val_mask]), limits[0])
    val_arrays = limited(list(arrays[val_mask]), limits[1])
    val = [codec.encode_array(image) for image in val_arrays]
    image_bytes = len(val[0])
    return BenchData(name, title, "records", codec.tag,
                     {"source": str(source), "images": len(train_arrays), "codec": f"image-{width}x{height}"},
                     val, lambda: (codec.encode_array(image) for image in train_arrays),
                     shape=dict(patch_sizes=(patch_size,), max_seq_len=record_window(image_bytes, patch_size)),
                     format_rows=lambda: {"PNG (optimize=True)": compressors.png_bits_per_byte(val_arrays)})


def record_window(record_bytes: int, patch_size: int) -> int:
    """Window length holding one whole record: the header patch, the bytes and EOS, in whole patches."""
    return patch_size + -(-(record_bytes + 1) // patch_size) * patch_size


def mnist_data(data_dir: Path, limits: tuple[int | None, int | None]) -> BenchData:
    """MNIST test set: images 0-8999 train, 9000-9999 held out; patches of one 28-pixel row."""
    path = data_dir / "images" / "mnist_test.npz"
    arrays = np.load(path)["images"]
    val_mask = np.arange(len(arrays)) >= 9000
    return image_data("mnist", "MNIST 9000-9999 (28x28 grey)", arrays, val_mask, path, 28, limits)


def cifar_data(data_dir: Path, limits: tuple[int | None, int | None]) -> BenchData:
    """CIFAR-10 sample (sorted by class): every tenth image held out; patches of 8 RGB pixels (24 bytes)."""
    path = data_dir / "images" / "cifar10_test_sample5000.npz"
    arrays = np.load(path)["images"]
    val_mask = np.arange(len(arrays)) % 10 == 9
    return image_data("cifar", "CIFAR-10 1 in 10 (32x32 RGB)", arrays, val_mask, path, 24, limits)


LOADERS: dict[str, Callable[[Path, tuple[int | None, int | None]], BenchData]] = {
    "text": text_data, "audio": audio_data, "audio16": audio16_data, "mnist": mnist_data, "cifar": cifar_data}


def selected_modalities(choice: str) -> list[str]:
    """Data set names for ``--modality``: one of them, ``image`` (mnist and cifar) or ``all``."""
    if choice == "all":
        return list(MODALITIES)
    if choice == "image":
        return ["mnist", "cifar"]
    return [choice]


def build_datasets(data: BenchData, cache_dir: Path) -> tuple[ByteDataset, ByteDataset]:
    """The training and validation byte caches of ``data`` (built once, reused while the key is the same)."""
    train = ByteDataset.build(((item, data.tag) for item in data.train_documents()), cache_dir,
                              key={**data.key, "split": "train"}, layout=data.layout, name=f"compare-{data.name}-train")
    return train, items_dataset(data, data.val_items, "val", cache_dir)


def items_dataset(data: BenchData, items: list[bytes], split: str, cache_dir: Path) -> ByteDataset:
    """The byte cache of ``items`` (the validation items, or the training sample), keyed by their count and bytes."""
    key = {**data.key, "split": split, "items": len(items), "bytes": sum(len(item) for item in items)}
    dataset = ByteDataset.build(((item, data.tag) for item in items), cache_dir, key=key, layout=data.layout,
                                name=f"compare-{data.name}-{split}")
    if dataset.num_bytes != key["bytes"]:
        raise RuntimeError(f"{dataset.path}: the cached {split} bytes differ from the items; delete it")
    return dataset


def training_sample(data: BenchData, train_bytes: int) -> list[bytes]:
    """Every k-th training item, k chosen so that the sample holds about as many bytes as the validation items
    (``train_bytes``: the training items' bytes, as their cache counts them): what ``--score-training`` scores every
    peer on, to tell what a model learned by heart from what carries. Only the sample is held in memory."""
    every = max(1, round(train_bytes / max(sum(len(item) for item in data.val_items), 1)))
    return [item for index, item in enumerate(data.train_documents()) if index % every == 0]


# =============================================================================================
# Models: one call convention for the peers
# =============================================================================================


def reference_logits(wrapper: MegabytePytorch, ids: Tensor) -> Tensor:
    """MEGABYTE-pytorch's logits aligned like ours: ``logits[:, t]`` scores ``ids[:, t]`` given ``ids[:, :t]``.

    Its forward returns, without ``return_loss``, the logits of every local position but each patch's
    first one, so position t predicts ids[t + 1]; the prediction of ids[0] (from the first patch's
    start token) appears only inside its loss. A hook on its output layer catches all local outputs,
    (batch, patches, patch + 1, vocab), and this rebuilds exactly the sequence its own loss scores."""
    captured: list[Tensor] = []
    handle = wrapper.model.to_logits.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        wrapper.model(ids)
    finally:
        handle.remove()
    local = captured[-1]  # (batch, patches, patch + 1, vocab)
    batch, time = ids.shape
    first = local[:, 0, 0:1]  # the start token's prediction of ids[:, 0]
    rest = local[:, :, 1:].reshape(batch, -1, local.shape[-1])  # rest[:, t] predicts ids[:, t + 1]
    return torch.cat((first, rest[:, :time - 1]), dim=1)  # (batch, time, vocab)


def peer_logits(model: nn.Module, ids: Tensor) -> Tensor:
    """(batch, time, vocab) logits of any peer, ``logits[:, t]`` scoring ``ids[:, t]``."""
    if isinstance(model, MegabytePytorch):
        return reference_logits(model, ids)
    return model(ids).logits


def training_loss(logits: Tensor, ids: Tensor) -> Tensor:
    """Mean cross-entropy (nats) over every target that is not PAD: bytes, BOS, EOS and tags."""
    return F.cross_entropy(logits.float().flatten(0, 1), ids.flatten(), ignore_index=tokens.PAD_ID)


def byte_nats(logits: Tensor, ids: Tensor, patch_size: int,
              scored_from: Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed cross-entropy (nats) over byte targets only (ids < 256), and their count, for each
    position in a patch (``t % patch_size``): (patch_size,) arrays. ``scored_from`` (batch,): each window's
    first scored position (the ids before it are context only); None scores every position."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten(), reduction="none").view(ids.shape)
    is_byte = ids < tokens.NUM_BYTES
    if scored_from is not None:
        is_byte = is_byte & (torch.arange(ids.shape[1]) >= scored_from[:, None])
    by_position = (losses * is_byte).view(ids.shape[0], -1, patch_size).sum(dim=(0, 1))
    counts = is_byte.view(ids.shape[0], -1, patch_size).sum(dim=(0, 1))
    return by_position.double().numpy(), counts.numpy()


def sized_parameters(config: MegabyteConfig) -> int:
    """The parameter count the other peers are sized to: bytemodels' at ``config`` without hashed n-gram tables.
    Those cost a lookup, not a multiply, so the peers keep the size of the network that does the arithmetic
    (and the GPT its own token table) rather than growing to millions of looked-up rows."""
    with torch.device("meta"):  # a count only: no memory for the tables
        return Megabyte(config).num_parameters(tables=False)


def build_peer(peer: str, config: MegabyteConfig, seed: int, patching: PatchSetup | None = None) -> nn.Module:
    """``bytemodels``, ``megabyte-pytorch`` or ``flat`` at the shape of ``config``, seeded the same way; with
    ``patching``, also ``spacebyte`` and ``entropybyte`` (their patchers come from it)."""
    torch.manual_seed(seed)
    if peer == "bytemodels":
        return Megabyte(config)
    if peer == WORD_PEER:
        return Megabyte(word_peer_config(config))
    if peer == "megabyte-pytorch":
        return MegabytePytorch(config)
    if peer == "flat":
        ours = sized_parameters(config)
        torch.manual_seed(seed)
        return FlatTransformer(flat_config_matching(config, ours))
    if peer in PATCH_PEERS and patching is not None:
        return SpaceByteModel(patching.config, patching.patcher(peer))
    raise ValueError(f"unknown byte peer {peer!r}; choose from {', '.join(CHECKED_PEERS + PATCH_PEERS)}")


def peer_flops_per_byte(peer: str, model: nn.Module, config: MegabyteConfig,
                        patching: PatchSetup | None = None) -> float:
    """Training FLOPs per byte of a byte peer (forward and backward, the nanoGPT/BLT count: 2 x matmul
    parameters per position plus causal attention); a patching peer's at its mean validation patch size."""
    if peer == "megabyte-pytorch":  # our shape without cross-patch attention, which the package does not have
        return dataclasses.replace(config, cross_patch=False).flops_per_byte()
    if isinstance(model, FlatTransformer):
        return model.config.flops_per_byte()
    if isinstance(model, SpaceByteModel) and patching is not None:
        return model.config.flops_per_byte(patching.val_mean_patch[peer])
    if peer == WORD_PEER:
        return word_peer_config(config).flops_per_byte()
    return config.flops_per_byte()


def word_peer_config(config: MegabyteConfig) -> MegabyteConfig:
    """The ``bytemodels-words`` peer's shape: ``config`` with one word block (or the word blocks it has)."""
    return dataclasses.replace(config, word_layers=max(1, config.word_layers))


def token_gpt_flops_per_byte(config: TokenGptConfig, bytes_per_token: float) -> float:
    """Training FLOPs per byte of the token GPT: the flat count per token (its context in tokens, its tied head)
    over the bytes a token stands for."""
    per_token = (blocks_flops(config.dim, config.layers, config.mlp_ratio, config.context / 2)  # causal: half
                 + 2 * config.dim * config.vocab_size)
    return 3 * per_token / bytes_per_token


@dataclass
class PatchSetup:
    """What the patching peers share on one data set: the model shape, the entropy model and the patch sizes."""

    config: SpaceByteConfig
    bytemodels_parameters: int
    entropy_table: Tensor
    """(contexts,) next-byte entropy in bits of the byte n-gram counted on the training windows."""
    threshold: float
    """Entropy (bits) above which a patch starts, set on the training windows for ``target_mean_patch``."""
    target_mean_patch: float
    train_mean_patch: dict[str, float]
    """Mean patch size (positions per start) of each patcher on the training windows the table was counted on."""
    val_mean_patch: dict[str, float]
    """The same on the validation windows the peers are scored on."""
    checks: dict[str, Any]

    def patcher(self, peer: str) -> Callable[[Tensor], Tensor]:
        """The patch starts of ``spacebyte`` or ``entropybyte``, as a function of ids."""
        if peer == "spacebyte":
            return space_boundaries
        table, threshold = self.entropy_table, self.threshold
        return lambda ids: entropy_boundaries(ids, table, threshold)


PATCH_STATS_WINDOWS = 4096
"""Training windows the n-gram is counted on and the thresholds are set on (all of them if fewer)."""


def prepare_patch_peers(name: str, config: MegabyteConfig, train_windows: Windows, val_ids: np.ndarray, seed: int,
                        peers: Sequence[str], mean_patch: float | None, ngram_order: int) -> PatchSetup:
    """Count the entropy n-gram on the training windows, set its threshold for the mean patch size (``None``:
    the space patcher's mean on text, ``DEFAULT_MEAN_PATCH`` elsewhere), size the model to bytemodels' parameters,
    and check each patching peer is causal."""
    train_ids = train_windows.fixed(PATCH_STATS_WINDOWS)
    table = ngram_entropy_table(train_ids, ngram_order)
    space_train = mean_patch_size(space_boundaries(torch.from_numpy(train_ids)))
    target = mean_patch or (space_train if name == TOKEN_PEER_MODALITY else DEFAULT_MEAN_PATCH)
    threshold = entropy_threshold(train_ids, table, target)
    starts = {"spacebyte": space_boundaries, "entropybyte": lambda ids: entropy_boundaries(ids, table, threshold)}
    train_mean = {peer: mean_patch_size(rule(torch.from_numpy(train_ids))) for peer, rule in starts.items()}
    val_mean = {peer: mean_patch_size(rule(torch.from_numpy(val_ids))) for peer, rule in starts.items()}
    ours = sized_parameters(config)
    shape = spacebyte_config_matching(config, ours)
    setup = PatchSetup(shape, ours, table, threshold, target, train_mean, val_mean, {})
    ids = torch.from_numpy(train_windows.batch(seed, 0, 2))
    with torch.no_grad():
        for peer in (p for p in PATCH_PEERS if p in peers):
            model = build_peer(peer, config, seed, setup).eval()  # dropout would draw anew on each call
            for position in (ids.shape[1] // 2, ids.shape[1] // 2 + 3):
                if not is_causal(model, ids, position):
                    raise RuntimeError(f"{peer}: logits before position {position} change with later ids")
            setup.checks[f"untrained_{peer}"] = float(training_loss(peer_logits(model, ids), ids))
    setup.checks["causal"] = True
    tqdm.write(f"{name}: patching peers {spacebyte_parameter_count(shape):,} parameters (global "
               f"{shape.global_layers} x {shape.global_dim}, local {shape.local_layers_before}+"
               f"{shape.local_layers_after} x {shape.local_dim}) against bytemodels' {ours:,}; {ngram_order}-gram "
               f"entropy threshold {threshold:.3f} bits for a mean patch of {target:.2f}; mean patch on training / "
               f"validation windows: " + ", ".join(f"{peer} {train_mean[peer]:.2f} / {val_mean[peer]:.2f}"
                                                   for peer in starts) + "; causal")
    return setup


def is_causal(model: nn.Module, ids: Tensor, position: int) -> bool:
    """Whether ``logits[:, :position + 1]`` stay the same when the ids from ``position`` on change."""
    changed = ids.clone()
    changed[:, position:] = (changed[:, position:] + 1) % tokens.NUM_BYTES
    before, after = peer_logits(model, ids), peer_logits(model, changed)
    return torch.allclose(before[:, :position + 1], after[:, :position + 1], atol=1e-5)


def check_peers(config: MegabyteConfig, ids: Tensor, seed: int,
                peers: Sequence[str] = BYTE_PEERS) -> dict[str, Any]:
    """Checks that make the comparison fair, on one batch of untrained models of the byte ``peers`` trained;
    raises if one fails.

    - with MEGABYTE-pytorch among them: our loss from its aligned logits equals the package's own loss;
    - every peer is causal in the aligned logits (position t sees ids[:, :t] only), tested at a
      position inside a patch and at a patch boundary;
    - the untrained losses, which should all be near ln(vocabulary)."""
    checks: dict[str, Any] = {}
    with torch.no_grad():
        # Only the peers trained: the reference, say, takes one head size for all stages, which others need not.
        models = {peer: build_peer(peer, config, seed) for peer in CHECKED_PEERS if peer in peers}
        for model in models.values():  # causality is the function's; dropout would draw anew on each call
            model.eval()
        if "megabyte-pytorch" in models:
            reference = models["megabyte-pytorch"]
            ours_of_ref = float(training_loss(reference_logits(reference, ids), ids))
            package = float(reference.loss(ids))
            if not math.isclose(ours_of_ref, package, rel_tol=1e-4, abs_tol=1e-5):
                raise RuntimeError(f"MEGABYTE-pytorch logits misaligned: our loss {ours_of_ref:.6f} != its own "
                                   f"{package:.6f}")
            checks = {"package_loss": package, "loss_from_aligned_logits": ours_of_ref}
        middle = ids.shape[1] // 2
        for peer, model in models.items():
            for position in (middle, middle + config.patch_size // 2):
                if not is_causal(model, ids, position):
                    raise RuntimeError(f"{peer}: logits before position {position} change with later ids")
        untrained = {peer: float(training_loss(peer_logits(model, ids), ids)) for peer, model in models.items()}
    return {**checks, "causal": True, "ln_vocab": math.log(config.vocab_size),
            **{f"untrained_{peer}": v for peer, v in untrained.items()}}


# =============================================================================================
# The one training loop and the evaluation
# =============================================================================================


@dataclass
class TrainPlan:
    """How every peer is trained: the same for all of them."""

    steps: int | None = 300
    """Optimizer steps (with ``seconds``: a cap, None for none)."""
    seconds: float | None = None
    """Wall-clock training budget per model (evaluation not counted)."""
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 50
    schedule: str = "cosine"
    """The learning rate's decay after warmup (``bytemodels.schedule.SCHEDULES``), to ``min_lr``."""
    decay_fraction: float = WSD_DECAY_FRACTION
    """With ``schedule="wsd"``: the last fraction of the steps over which the rate decays (as ``TrainConfig``'s)."""
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    optimizer: str = "adamw"
    """adamw, or muon or normuon for every peer's hidden matrices (``bytemodels.optim.build_optimizer``)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping (as ``TrainConfig.grad_clip``)."""
    seed: int = 0
    compile: bool = False
    """torch.compile every peer's training loss (the first step, which compiles, is not counted)."""
    dtype: str = "fp32"
    """fp32, or bf16: every peer's training loss under bf16 autocast (evaluation stays in fp32)."""




TIMED_STEPS = 10
"""With a time budget: steps timed (after the first two) before the cosine schedule gets a horizon."""


def time_horizon(step: int, seconds: float, seconds_per_step: float, plan: TrainPlan) -> int:
    """Steps the rest of the time budget allows at the measured pace (capped by ``plan.steps``)."""
    estimate = step + int(max(plan.seconds - seconds, 0.0) / max(seconds_per_step, 1e-9))
    return min(plan.steps, estimate) if plan.steps else estimate


def loss_function(model: nn.Module, compile_model: bool) -> Callable[[Tensor], Tensor]:
    """The training loss of a batch of ids for any peer, through ``torch.compile`` if asked.

    Compiled, MEGABYTE-pytorch trains through its own loss path (its aligned logits come from a forward
    hook, which a compiled graph does not run on every call); ``check_peers`` has shown that its own loss
    equals the aligned logits' loss."""
    def batch_loss(ids: Tensor) -> Tensor:
        return training_loss(peer_logits(model, ids), ids)

    # The token GPT's ids are all real tokens (256 is one of them, not PAD): its own loss counts every one.
    if isinstance(model, TokenGpt):
        return torch.compile(model.loss) if compile_model else model.loss
    if not compile_model:
        return batch_loss
    return torch.compile(model.loss if isinstance(model, MegabytePytorch) else batch_loss)


def train(model: nn.Module, windows: Windows | TokenWindows, plan: TrainPlan, label: str) -> dict[str, Any]:
    """Train ``model`` on ``windows`` by ``plan``; returns steps, seconds and the loss curve.

    With a time budget the cosine schedule's horizon is the step at which the budget runs out at the
    mean pace since step 2, re-estimated every step from step 12 on, so the decay ends when the time
    does even when other processes slow the machine down. Seconds count training steps only (compiled,
    not the first step, which compiles)."""
    # Every peer gets the trainer's optimizer: its rules read only modules() and parameters(), so apply to any.
    optimizer = build_optimizer(model, plan.lr, weight_decay=plan.weight_decay, betas=plan.betas,
                                optimizer=plan.optimizer)
    batch_loss = loss_function(model, plan.compile)
    compile_seconds = None
    model.train()
    horizon = plan.steps
    curve: list[tuple[int, float]] = []
    step, seconds, timing_start = 0, 0.0, 0.0
    bar = tqdm(total=horizon, desc=label, leave=False)
    while True:
        if plan.steps is not None and step >= plan.steps:
            break
        if plan.seconds is not None and seconds >= plan.seconds:
            break
        started = time.perf_counter()
        lr = learning_rate(step, lr=plan.lr, min_lr=plan.min_lr, warmup_steps=plan.warmup_steps,
                           total_steps=horizon, schedule=plan.schedule, decay_fraction=plan.decay_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ids = torch.from_numpy(windows.batch(plan.seed, step, plan.batch_size))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.dtype == "bf16"):
            loss = batch_loss(ids)
        loss.backward()
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"{label}: loss is not finite at step {step} (lr {lr:.3g}); lower --lr")
        if plan.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), plan.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if plan.compile and compile_seconds is None:
            compile_seconds = time.perf_counter() - started  # compiling is a one-off cost, not training
        else:
            seconds += time.perf_counter() - started
        curve.append((step, loss_value))
        if plan.seconds is not None and step == 2:
            timing_start = seconds
        elif plan.seconds is not None and step >= 2 + TIMED_STEPS:  # re-aimed every step at the mean pace
            horizon = time_horizon(step, seconds, (seconds - timing_start) / (step - 2), plan)
            bar.total = horizon
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
    bar.close()
    # A token window's ids stand for several bytes each (TokenWindows.bytes_per_id), a byte window's for one.
    ids_per_second = step * plan.batch_size * windows.seq_len / max(seconds, 1e-9)
    return {"steps": step, "train_seconds": seconds, "horizon": horizon, "compile_seconds": compile_seconds,
            "bytes_per_second": ids_per_second * getattr(windows, "bytes_per_id", 1.0),
            "loss_curve": curve[::max(1, len(curve) // 100)] + curve[-1:]}


def overlapping_windows(length: int, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, scored_from): windows of ``window`` ids that score a stream of ``length`` ids once each.

    The first window scores all its ids; each later one ends ``stride`` ids further on (the last one at the
    stream's end, so no window runs past it) and scores only the ids the ones before it left, the rest of it
    being context: every id after the first window is scored with at least ``window - stride`` ids before it,
    where windows cut end to end (``stride == window``) leave the first ids of each window with none."""
    if length < 1 or window < 1 or not 1 <= stride <= window:
        raise ValueError(f"length={length}, window={window}, stride={stride}: need 1 <= stride <= window")
    starts, scored_from, covered = [0], [0], min(window, length)
    while covered < length:
        end = min(covered + stride, length)
        starts.append(end - window)
        scored_from.append(covered - (end - window))
        covered = end
    return np.array(starts, dtype=np.int64), np.array(scored_from, dtype=np.int64)


def overlap_stride(window: int, overlap: float, multiple: int = 1) -> int:
    """The stride of windows of ``window`` ids that share the fraction ``overlap`` of their length with the
    window before: a multiple of ``multiple`` (the patch size, so that the scored part of a window starts on
    one of its patch boundaries), at least one."""
    return max(multiple, round(window * (1 - overlap) / multiple) * multiple)


@dataclass
class OverlappedWindows:
    """Validation windows that overlap (``overlapping_windows``): every held-out byte scored once, with context."""

    ids: np.ndarray
    """(windows, seq_len) int64."""
    scored_from: np.ndarray
    """(windows,) int64: each window's first scored position."""
    stride: int


def overlapped_byte_windows(windows: Windows, overlap: float, count: int | None) -> OverlappedWindows:
    """``windows``' stream (a packed layout) as overlapping windows; ``count`` of them spread evenly over it
    (all with None or 0, as ``--eval-windows 0``), as ``Windows.fixed`` spreads the fixed ones."""
    if not isinstance(windows, PackedWindows):
        raise ValueError("--eval-overlap needs packed windows (one stream, as text is read); this data is read "
                         "as records")
    stride = overlap_stride(windows.seq_len, overlap, windows.patch_size)
    starts, scored_from = overlapping_windows(windows.total, windows.seq_len, stride)
    if count:
        chosen = list(spread_indices(len(starts), count))
        starts, scored_from = starts[chosen], scored_from[chosen]
    return OverlappedWindows(np.stack([windows.window_at(int(start)) for start in starts]), scored_from, stride)


@torch.no_grad()
def evaluate(model: nn.Module, val_ids: np.ndarray, batch_size: int, patch_size: int,
             scored_from: np.ndarray | None = None) -> dict[str, Any]:
    """Bits per byte over the fixed validation windows, byte targets only; also by position in a patch
    (where a patch model is weakest: the first byte of a patch sees the patch before it only through
    the global model). ``scored_from``: each window's first scored position (``OverlappedWindows``)."""
    model.eval()
    nats, count = np.zeros(patch_size), np.zeros(patch_size, dtype=np.int64)
    for start in range(0, len(val_ids), batch_size):
        ids = torch.from_numpy(val_ids[start:start + batch_size])
        first = None if scored_from is None else torch.from_numpy(scored_from[start:start + batch_size])
        batch_nats, batch_count = byte_nats(peer_logits(model, ids), ids, patch_size, first)
        nats += batch_nats
        count += batch_count
    model.train()
    by_position = nats / np.maximum(count, 1) / math.log(2)
    return {"bits_per_byte": float(nats.sum() / max(count.sum(), 1) / math.log(2)), "scored_bytes": int(count.sum()),
            "bits_per_byte_by_patch_position": [round(float(v), 4) for v in by_position]}


# =============================================================================================
# The tokenized peer: a GPT over byte-level BPE tokens (text only)
# =============================================================================================

BPE_EOS = "<|eos|>"
"""The one special token: it ends every story in the token streams (as EOS ends each in the byte stream)."""


def bpe_tokenizer(train_items: list[bytes], vocab_size: int, cache_dir: Path) -> tuple[Any, Path]:
    """A byte-level BPE of ``vocab_size`` ids (the 256 byte symbols, merges and ``BPE_EOS``) trained on the
    training text, and its file: cached under ``cache_dir`` by the text's hash and the vocabulary size.

    Byte-level (the ByteLevel pre-tokenizer and decoder, every byte in the initial alphabet), so every byte
    string has tokens that decode back to it exactly; ``BPE_EOS`` written in a story is read as plain text."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        import tokenizers
    except ImportError:
        raise ValueError("--peers gpt-bpe needs the tokenizers package: pip install tokenizers") from None
    digest = hashlib.sha256(f"{vocab_size} {tokenizers.__version__}".encode())
    for item in train_items:  # length-prefixed, so where one story ends is part of the hash
        digest.update(len(item).to_bytes(8, "little"))
        digest.update(item)
    path = cache_dir / f"bpe-{vocab_size}-{digest.hexdigest()[:20]}.json"
    if path.exists():
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises plain Exception on a bad file
            raise ValueError(f"{path}: unreadable tokenizer cache ({error}); delete it") from None
    else:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BPE_EOS], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator((utf8_text(item, "training") for item in train_items), trainer,
                                      length=len(train_items))
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, tokenizer.to_str())
    if tokenizer.token_to_id(BPE_EOS) is None:
        raise ValueError(f"{path}: the tokenizer has no {BPE_EOS} token; delete it")
    tokenizer.encode_special_tokens = True  # not saved in the file: story text never becomes the EOS id
    return tokenizer, path


def utf8_text(item: bytes, split: str) -> str:
    """A text item's string (the text codec writes UTF-8; anything else cannot be tokenized as text)."""
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"a {split} item is not UTF-8 ({error}); the gpt-bpe peer reads text only") from None


@dataclass
class TokenStream:
    """Stories as one token stream: each story's tokens, then the EOS id."""

    ids: np.ndarray
    """(tokens,) int64."""
    scored: np.ndarray
    """(tokens,) bool: story tokens (scored), not EOS (trained on, not scored)."""
    num_bytes: int
    """Bytes of the stories, which the scored tokens decode to exactly."""


def tokenize_stories(tokenizer: Any, items: list[bytes], eos_id: int, split: str) -> TokenStream:
    """Each story tokenized on its own and followed by ``eos_id`` (boundaries as in the byte stream); raises
    ValueError unless every story's tokens decode to exactly its bytes and EOS only ends stories."""
    encoded = [encoding.ids for encoding in tokenizer.encode_batch([utf8_text(item, split) for item in items])]
    decoded = tokenizer.decode_batch(encoded, skip_special_tokens=False)
    for index, (item, ids, text) in enumerate(zip(items, encoded, decoded)):
        back = text.encode("utf-8")
        if back != item or eos_id in ids:
            where = next((i for i, (a, b) in enumerate(zip(back, item)) if a != b), min(len(back), len(item)))
            raise ValueError(f"BPE round trip failed on {split} story {index} (first difference at byte {where} "
                             f"of {len(item)}): the GPT would be scored on other bytes than the byte peers")
    ids = np.fromiter((token for story in encoded for token in (*story, eos_id)), dtype=np.int64,
                      count=sum(map(len, encoded)) + len(encoded))
    return TokenStream(ids, ids != eos_id, sum(len(item) for item in items))


class TokenWindows:
    """Training windows of ``seq_len`` ids cut from a token stream in shuffled epochs, as the byte peers'
    ``Windows.batch`` cuts theirs (the same order, ``step_choices``): a batch is a pure function of seed and step."""

    def __init__(self, stream: np.ndarray, seq_len: int, bytes_per_id: float) -> None:
        if len(stream) < seq_len:
            raise ValueError(f"the training text is {len(stream)} tokens, shorter than one window of {seq_len}; "
                             "lower --gpt-context")
        self.stream = stream
        self.seq_len = seq_len
        self.bytes_per_id = bytes_per_id
        """Training bytes per stream id (EOS included): what train() counts its bytes per second in."""
        self.num_choices = len(stream) - seq_len + 1

    def batch(self, seed: int, step: int, batch_size: int) -> np.ndarray:
        """Step ``step``'s windows: (batch_size, seq_len) int64."""
        starts = step_choices(seed, step, batch_size, self.num_choices, self.seq_len)
        return np.stack([self.stream[start:start + self.seq_len] for start in starts])


@torch.no_grad()
def evaluate_tokens(model: nn.Module, val: TokenStream, context: int, batch_size: int) -> dict[str, Any]:
    """Bits per byte of the validation text for a token model: the cross-entropy of every story token, each
    scored exactly once, over the bytes those tokens decode to (the bytes the byte peers are scored on).

    The stream is cut into non-overlapping windows of ``context`` tokens (the last one shorter), as the byte
    peers' validation stream is cut into windows of bytes: a token sees the tokens before it in its own window
    (across story boundaries), and the first token of a window only the start vector. EOS is predicted but not
    scored, as the byte peers score neither EOS nor BOS: the bits are the stories' only."""
    ids, scored = torch.from_numpy(val.ids), torch.from_numpy(val.scored)
    full = len(ids) // context * context  # the whole windows; the rest is the last, shorter one
    step = batch_size * context
    batches = [(ids[start:min(start + step, full)].view(-1, context),
                scored[start:min(start + step, full)].view(-1, context)) for start in range(0, full, step)]
    if full < len(ids):
        batches.append((ids[None, full:], scored[None, full:]))
    return token_bits(model, val, batches)


@torch.no_grad()
def evaluate_tokens_overlapped(model: nn.Module, val: TokenStream, context: int, batch_size: int,
                               stride: int) -> dict[str, Any]:
    """``evaluate_tokens`` over overlapping windows of ``context`` tokens, ``stride`` apart
    (``overlapping_windows``): every token scored once, after at least ``context - stride`` tokens."""
    window = min(context, len(val.ids))
    starts, scored_from = overlapping_windows(len(val.ids), window, min(stride, window))
    positions = torch.arange(window)

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for first in range(0, len(starts), batch_size):
            rows = [slice(int(start), int(start) + window) for start in starts[first:first + batch_size]]
            window_scored = (torch.from_numpy(np.stack([val.scored[row] for row in rows]))
                             & (positions >= torch.from_numpy(scored_from[first:first + batch_size])[:, None]))
            yield torch.from_numpy(np.stack([val.ids[row] for row in rows])), window_scored

    return token_bits(model, val, batches())


@torch.no_grad()
def token_bits(model: nn.Module, val: TokenStream, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, Any]:
    """The GPT's scores over ``batches`` of (window ids, which of them are scored); raises RuntimeError unless
    those are every scored token of ``val`` once."""
    model.eval()
    nats, counted = 0.0, 0
    for window_ids, window_scored in batches:
        losses = F.cross_entropy(peer_logits(model, window_ids).float().flatten(0, 1), window_ids.flatten(),
                                 reduction="none")
        nats += float(losses.double()[window_scored.flatten()].sum())
        counted += int(window_scored.sum())
    model.train()
    if counted != int(val.scored.sum()):
        raise RuntimeError(f"scored {counted} of {int(val.scored.sum())} validation tokens")
    bits = nats / math.log(2)
    return {"bits_per_byte": bits / max(val.num_bytes, 1), "bits_per_token": bits / max(counted, 1),
            "scored_bytes": val.num_bytes, "scored_tokens": counted,
            "bytes_per_token": val.num_bytes / max(counted, 1)}


@dataclass
class TokenSetup:
    """What the GPT peer's runs on the text share: the tokenizer, its windows and validation stream."""

    tokenizer_file: Path
    config: TokenGptConfig
    train_windows: TokenWindows
    val: TokenStream
    train_bytes_per_token: float
    bytemodels_parameters: int
    checks: dict[str, Any]
    train_sample: TokenStream | None = None
    """The training sample's stories as tokens (``--score-training``)."""


def prepare_token_peer(data: BenchData, config: MegabyteConfig, seed: int, cache_dir: Path, bpe_vocab: int,
                       context: int | None, train_sample: list[bytes] | None = None) -> TokenSetup:
    """Train (or load) the BPE on ``data``'s training stories, tokenize both splits (and ``train_sample``, the
    stories of ``training_sample``), size the GPT to bytemodels' parameter count at ``config`` and check it is
    causal."""
    train_items = list(data.train_documents())
    tokenizer, path = bpe_tokenizer(train_items, bpe_vocab, cache_dir)
    eos_id = tokenizer.token_to_id(BPE_EOS)
    train_stream = tokenize_stories(tokenizer, train_items, eos_id, "training")
    val = tokenize_stories(tokenizer, data.val_items, eos_id, "validation")
    train_bytes_per_token = train_stream.num_bytes / max(int(train_stream.scored.sum()), 1)
    # Default: a window spans about as many bytes as the byte peers' window, so a step reads as much text.
    context = context or max(8, round(config.max_seq_len / train_bytes_per_token))
    ours = sized_parameters(config)
    gpt_config = token_gpt_config_matching(config, ours, tokenizer.get_vocab_size(), context)
    windows = TokenWindows(train_stream.ids, context, train_stream.num_bytes / len(train_stream.ids))
    with torch.no_grad():
        torch.manual_seed(seed)
        model = TokenGpt(gpt_config).eval()  # causality is the function's; dropout would draw anew on each call
        ids = torch.from_numpy(windows.batch(seed, 0, 2))
        for position in (context // 2, context - 1):
            if not is_causal(model, ids, position):
                raise RuntimeError(f"gpt-bpe: logits before position {position} change with later ids")
        untrained = float(model.loss(ids))
    checks = {"causal": True, "untrained_loss": untrained, "ln_vocab": math.log(gpt_config.vocab_size)}
    tqdm.write(f"{data.name}: BPE of {gpt_config.vocab_size} tokens ({path.name}), {train_bytes_per_token:.2f} "
               f"training and {val.num_bytes / max(int(val.scored.sum()), 1):.2f} validation bytes per token, "
               f"windows of {context} tokens; gpt-bpe {model.num_parameters():,} parameters ({gpt_config.layers} "
               f"block{'s' * (gpt_config.layers != 1)} of width {gpt_config.dim}) against bytemodels' {ours:,}; "
               f"causal; untrained loss {untrained:.3f} (ln {gpt_config.vocab_size} = {checks['ln_vocab']:.3f})")
    sample = None if train_sample is None else tokenize_stories(tokenizer, train_sample, eos_id, "training sample")
    return TokenSetup(path, gpt_config, windows, val, train_bytes_per_token, ours, checks, sample)


def train_token_peer(tokens_setup: TokenSetup, plan: TrainPlan, label: str,
                     eval_overlap: float = 0.0) -> dict[str, Any]:
    """Train the GPT by the one training loop and score it on the validation tokens (with ``eval_overlap``, also
    over windows that share that fraction of their tokens: ``bits_per_byte_overlapped``)."""
    torch.manual_seed(plan.seed)
    model = TokenGpt(tokens_setup.config)
    record: dict[str, Any] = {"parameters": model.num_parameters(),
                              "bytemodels_parameters": tokens_setup.bytemodels_parameters,
                              "gpt_config": dataclasses.asdict(tokens_setup.config),
                              "tokenizer": tokens_setup.tokenizer_file.name,
                              "train_bytes_per_token": tokens_setup.train_bytes_per_token,
                              "checks": tokens_setup.checks}
    record.update(train(model, tokens_setup.train_windows, plan, label))
    context = tokens_setup.config.context
    record.update(evaluate_tokens(model, tokens_setup.val, context, plan.batch_size))
    if eval_overlap:
        stride = overlap_stride(context, eval_overlap)
        overlapped = evaluate_tokens_overlapped(model, tokens_setup.val, context, plan.batch_size, stride)
        record.update(bits_per_byte_overlapped=overlapped["bits_per_byte"], eval_stride=stride)
    if tokens_setup.train_sample is not None:
        sample = evaluate_tokens(model, tokens_setup.train_sample, context, plan.batch_size)
        record.update(train_sample_bits_per_byte=sample["bits_per_byte"], train_sample_bytes=sample["scored_bytes"])
    return record


@dataclass
class PeerSetup:
    """What every training run on one data set shares: the windows, the held-out ids and the fairness checks."""

    name: str
    config: MegabyteConfig
    train_windows: Windows
    val_ids: np.ndarray
    checks: dict[str, Any]
    tokens: TokenSetup | None = None
    """The GPT peer's tokenizer and streams, when it is one of the peers."""
    patching: PatchSetup | None = None
    """The patching peers' shape, entropy model and patch sizes, when one of them is a peer."""
    eval_overlap: float = 0.0
    """The fraction of its length each validation window shares with the one before in the second score
    (``bits_per_byte_overlapped``); 0: none."""
    val_overlapped: OverlappedWindows | None = None
    """The byte peers' windows for that score."""
    train_sample_ids: np.ndarray | None = None
    """The byte peers' windows over the training sample (``--score-training``), fixed as the validation ones."""


def prepare_peers(data: BenchData, config: MegabyteConfig, seed: int, cache_dir: Path,
                  eval_windows: int | None, peers: Sequence[str] = BYTE_PEERS, bpe_vocab: int = DEFAULT_BPE_VOCAB,
                  gpt_context: int | None = None, mean_patch: float | None = None,
                  ngram_order: int = DEFAULT_NGRAM_ORDER, eval_overlap: float = 0.0,
                  score_training: bool = False) -> PeerSetup:
    """Open ``data``'s windows and run ``check_peers`` once, for every peer and learning rate trained on it
    (and, for ``gpt-bpe``, ``prepare_token_peer``; for the patching peers, ``prepare_patch_peers``).
    ``eval_overlap``: also score every peer over validation windows that share this fraction of their length;
    ``score_training``: also over ``training_sample``."""
    train_set, val_set = build_datasets(data, cache_dir)
    train_windows = train_set.windows(config.max_seq_len, config.patch_size, config.num_tags)
    val_windows = val_set.windows(config.max_seq_len, config.patch_size, config.num_tags)
    val_ids = val_windows.fixed(eval_windows or len(val_windows))
    sample = training_sample(data, train_set.num_bytes) if score_training else None
    sample_ids = None
    if sample is not None:
        sample_windows = items_dataset(data, sample, "train-sample", cache_dir).windows(
            config.max_seq_len, config.patch_size, config.num_tags)
        sample_ids = sample_windows.fixed(eval_windows or len(sample_windows))
    check = check_peers(config, torch.from_numpy(train_windows.batch(seed, 0, 2)), seed, peers)
    checked = [peer for peer in CHECKED_PEERS if f"untrained_{peer}" in check]
    aligned = (f"MEGABYTE-pytorch's own loss {check['package_loss']:.5f} = ours from its aligned logits "
               f"{check['loss_from_aligned_logits']:.5f}; " if "package_loss" in check else "")
    if checked:
        tqdm.write(f"{data.name}: {aligned}byte peers causal; untrained losses " + ", ".join(
            f"{peer} {check['untrained_' + peer]:.3f}" for peer in checked) + f" (ln {config.vocab_size} = "
            f"{check['ln_vocab']:.3f})")
    token_setup = None
    if TOKEN_PEER in peers:
        token_setup = prepare_token_peer(data, config, seed, cache_dir, bpe_vocab, gpt_context, sample)
    patching = None
    if any(peer in PATCH_PEERS for peer in peers):
        patching = prepare_patch_peers(data.name, config, train_windows, val_ids, seed, peers, mean_patch, ngram_order)
    overlapped = overlapped_byte_windows(val_windows, eval_overlap, eval_windows) if eval_overlap else None
    return PeerSetup(data.name, config, train_windows, val_ids, check, token_setup, patching, eval_overlap, overlapped,
                     sample_ids)


def train_peers(setup: PeerSetup, plan: TrainPlan, peers: list[str]) -> dict[str, Any]:
    """Train and evaluate each peer by ``plan``; the same windows, batches and schedule for all."""
    config = setup.config
    results: dict[str, Any] = {"config": config.to_dict(), "val_windows": len(setup.val_ids), "checks": setup.checks,
                               "peers": {}}
    for peer in peers:
        if peer == TOKEN_PEER:
            if setup.tokens is None:
                raise ValueError(f"{setup.name}: the {TOKEN_PEER} peer was not prepared (prepare_peers' peers)")
            record = train_token_peer(setup.tokens, plan, f"{setup.name}: {peer}", setup.eval_overlap)
            record["flops_per_byte"] = token_gpt_flops_per_byte(setup.tokens.config, record["bytes_per_token"])
            tqdm.write(f"{setup.name:6s} {peer:17s} {record['bits_per_byte']:.4f} bits/byte{score_notes(record)} "
                       f"after {record['steps']} steps, {record['train_seconds']:.0f} s, "
                       f"{record['bytes_per_token']:.2f} bytes/token")
            results["peers"][peer] = record
            continue
        if peer in PATCH_PEERS and setup.patching is None:
            raise ValueError(f"{setup.name}: the {peer} peer was not prepared (prepare_peers' peers)")
        model = build_peer(peer, config, plan.seed, setup.patching)
        record = {"parameters": sum(p.numel() for p in model.parameters()),
                  "flops_per_byte": peer_flops_per_byte(peer, model, config, setup.patching)}
        if isinstance(model, FlatTransformer):
            record["flat_config"] = dataclasses.asdict(model.config)
        if isinstance(model, SpaceByteModel) and setup.patching is not None:
            patching = setup.patching
            record.update(spacebyte_config=dataclasses.asdict(model.config),
                          bytemodels_parameters=patching.bytemodels_parameters,
                          train_mean_patch=patching.train_mean_patch[peer], val_mean_patch=patching.val_mean_patch[peer],
                          checks=patching.checks)
            if peer == "entropybyte":
                record.update(entropy_threshold_bits=patching.threshold, target_mean_patch=patching.target_mean_patch,
                              ngram_order=ngram_order(patching.entropy_table))
        record.update(train(model, setup.train_windows, plan, f"{setup.name}: {peer}"))
        record.update(evaluate(model, setup.val_ids, plan.batch_size, config.patch_size))
        if setup.val_overlapped is not None:
            overlapped = setup.val_overlapped
            score = evaluate(model, overlapped.ids, plan.batch_size, config.patch_size, overlapped.scored_from)
            record.update(bits_per_byte_overlapped=score["bits_per_byte"], eval_stride=overlapped.stride)
        if setup.train_sample_ids is not None:
            sample = evaluate(model, setup.train_sample_ids, plan.batch_size, config.patch_size)
            record.update(train_sample_bits_per_byte=sample["bits_per_byte"], train_sample_bytes=sample["scored_bytes"])
        tqdm.write(f"{setup.name:6s} {peer:17s} {record['bits_per_byte']:.4f} bits/byte{score_notes(record)} "
                   f"after {record['steps']} "
                   f"steps, {record['train_seconds']:.0f} s, {record['flops_per_byte'] / 1e6:.2f} MFLOP/byte"
                   + (f", mean patch {record['val_mean_patch']:.2f}" if "val_mean_patch" in record else ""))
        results["peers"][peer] = record
    return results


def score_notes(record: dict[str, Any]) -> str:
    """The printed line's mention of the overlapped score and the training sample's, where there are those."""
    notes = []
    if "bits_per_byte_overlapped" in record:
        notes.append(f"{record['bits_per_byte_overlapped']:.4f} over windows {record['eval_stride']} apart")
    if "train_sample_bits_per_byte" in record:
        notes.append(f"{record['train_sample_bits_per_byte']:.4f} on the training sample")
    return f" ({'; '.join(notes)})" if notes else ""


def sweep_peers(setup: PeerSetup, plan: TrainPlan, lrs: list[float], peers: list[str]) -> dict[str, Any]:
    """``train_peers`` at each peak learning rate of ``lrs`` (the floor scaled with it); the result holds each
    peer's record at its best rate (with ``lr`` added) and every run under ``lr_sweep``."""
    runs = {lr: train_peers(setup, dataclasses.replace(plan, lr=lr, min_lr=lr * plan.min_lr / plan.lr), peers)
            for lr in lrs}
    best: dict[str, Any] = {}
    for peer in peers:
        lr, run = min(runs.items(), key=lambda item: item[1]["peers"][peer]["bits_per_byte"])
        best[peer] = {**run["peers"][peer], "lr": lr}
    first = runs[lrs[0]]
    # Keyed by repr, which is distinct for distinct rates (":g" would merge 1e-3 and 1.0000001e-3 and lose a run).
    sweep = {repr(lr): {peer: run["peers"][peer]["bits_per_byte"] for peer in peers} for lr, run in runs.items()}
    return {**first, "peers": best, "lr_sweep": sweep}


# =============================================================================================
# Table, targets and the record
# =============================================================================================


def sweep_table(results: dict[str, Any]) -> str:
    """Bits per byte by peak learning rate (rows) and peer (columns), each data set; the best of a peer starred."""
    tables = []
    for name, result in results.items():
        models = result.get("models", {})
        sweep = models.get("lr_sweep")
        if not sweep:
            continue
        peers = list(models["peers"])
        lines = [f"{name}: bits per byte by peak learning rate (* each peer's best)",
                 "| lr | " + " | ".join(PEER_TITLES[peer] for peer in peers) + " |",
                 "| ---: | " + " | ".join("---:" for _ in peers) + " |"]
        for lr, row in sweep.items():
            cells = [f"{row[peer]:.4f}" + (" *" if lr == repr(models['peers'][peer]['lr']) else "") for peer in peers]
            lines.append(f"| {lr} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def model_config(preset: str, data: BenchData, overrides: dict[str, Any], quick: bool = False) -> MegabyteConfig:
    """The preset (``--quick``: a very small shape), then the data set's own shape (image patches and
    windows), then the command line."""
    base = QUICK_SHAPE if quick else {}
    return MegabyteConfig.preset(preset, **{**base, **data.shape, **overrides})


def compressor_rows(data: BenchData) -> dict[str, float]:
    """All compressor and kept-format rows of one data set."""
    return {**compressors.general_rows(data.val_items), **data.format_rows()}


def markdown_table(titles: dict[str, str], rows: dict[str, dict[str, str]]) -> str:
    """A Markdown table: one row per method, one column per data set (``-`` where not measured)."""
    header = "| method | " + " | ".join(titles.values()) + " |"
    rule = "| --- | " + " | ".join("---:" for _ in titles) + " |"
    body = ["| " + method + " | " + " | ".join(cells.get(name, "-") for name in titles) + " |"
            for method, cells in rows.items()]
    return "\n".join([header, rule, *body])


def table_rows(results: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Cells of the table: bits/byte; for the models also parameters, steps and training seconds."""
    rows: dict[str, dict[str, str]] = {}
    for name, result in results.items():
        for method, value in result.get("compressors", {}).items():
            rows.setdefault(method, {})[name] = f"{value:.3f}"
    for peer in ALL_PEERS:
        for name, result in results.items():
            record = result.get("models", {}).get("peers", {}).get(peer)
            if record:
                rows.setdefault(PEER_TITLES[peer], {})[name] = (
                    f"**{record['bits_per_byte']:.3f}** ("
                    + (f"{record['bits_per_byte_overlapped']:.3f} with context, " if "bits_per_byte_overlapped" in record
                       else "")
                    + f"{record['parameters'] / 1e6:.2f}M params, "
                    f"{record['steps']} steps, {record['train_seconds']:.0f} s"
                    + (f", {record['flops_per_byte'] / 1e6:.2f} MFLOP/byte" if "flops_per_byte" in record else "")
                    + (f", mean patch {record['val_mean_patch']:.2f}" if "val_mean_patch" in record else "")
                    + (f", {record['bytes_per_token']:.2f} bytes/token" if "bytes_per_token" in record else "")
                    + (f", lr {record['lr']:g}" if "lr" in record else "") + ")")
    return rows


def target_lines(results: dict[str, Any], seconds: float | None = None) -> list[str]:
    """The issue's targets, checked against what was measured; the 30-minute text target only for a
    wall-clock budget (``seconds``) of at least 30 minutes."""
    lines = []
    for name, result in results.items():
        models = result.get("models", {}).get("peers", {})
        ours = models.get("bytemodels", {}).get("bits_per_byte")
        if ours is None:
            continue
        reference = models.get("megabyte-pytorch", {}).get("bits_per_byte")
        flat = models.get("flat", {}).get("bits_per_byte")
        if reference:
            below = 100.0 * (1.0 - ours / reference)
            rates = ""
            if "lr_sweep" in result["models"]:
                rates = (f" (each at its best learning rate: {models['bytemodels']['lr']:g} and "
                         f"{models['megabyte-pytorch']['lr']:g})")
            lines.append(f"{name}: bytemodels {ours:.3f} vs MEGABYTE-pytorch {reference:.3f}{rates}, "
                         f"{abs(below):.1f}% {'lower' if below >= 0 else 'higher'} (target: at least 15% lower) "
                         f"-> {'met' if below >= 15.0 else 'not met'}")
        if flat:
            lines.append(f"{name}: bytemodels {ours:.3f} vs flat {flat:.3f} (target: below) "
                         f"-> {'met' if ours < flat else 'not met'}")
        kept = {m: v for m, v in result.get("compressors", {}).items() if m.startswith(("FLAC", "PNG"))}
        if kept:
            best_method, best = min(kept.items(), key=lambda item: item[1])
            lines.append(f"{name}: bytemodels {ours:.3f} vs {best_method} {best:.3f} (target: below) "
                         f"-> {'met' if ours < best else 'not met'}")
        for peer in PATCH_PEERS + (WORD_PEER,):
            theirs = models.get(peer, {}).get("bits_per_byte")
            if theirs is not None:
                gain = 1.0 - theirs / ours
                flops = models[peer]["flops_per_byte"] / models["bytemodels"]["flops_per_byte"]
                lines.append(f"{name}: {peer} {theirs:.3f} vs bytemodels {ours:.3f}, {100 * abs(gain):.1f}% "
                             f"{'lower' if gain >= 0 else 'higher'} at {flops:.2f}x its FLOPs per byte (rule: at least "
                             f"{100 * PATCH_GAIN_RULE:.0f}% lower at equal time) -> "
                             f"{'met' if gain >= PATCH_GAIN_RULE else 'not met'}")
        if name == "text" and seconds is not None and seconds >= 30 * 60:
            lines.append(f"text: bytemodels {ours:.3f} bits/byte (target after 30 min of CPU training: at most 1.2) "
                         f"-> {'met' if ours <= 1.2 else 'not met'}")
    return lines


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def write_record(out_dir: Path, record: dict[str, Any]) -> Path:
    """Write the results JSON atomically under ``out_dir``; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"compare-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


# =============================================================================================
# Command line
# =============================================================================================


def parse_time_flag(text: str) -> float:
    """``--time``: seconds in ``90``, ``90s``, ``10m``, ``1.5h`` or ``1h30m`` (the Trainer's own parser)."""
    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--time {text!r}: give seconds or a duration such as 90s, 30m, 1.5h or 1h30m") from None


def parse_rates(text: str) -> list[float]:
    """Learning rates in ``1e-3,2e-3``: positive, distinct, in the order given."""
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated learning rates such as 1e-3,2e-3") from None
    if not rates or any(not rate > 0 or math.isinf(rate) for rate in rates) or len(set(rates)) != len(rates):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct positive learning rates such as 1e-3,2e-3")
    return rates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modality", choices=MODALITY_CHOICES, default="text",
                        help="data set(s): text, audio (mu-law), audio16 (16-bit PCM), mnist, cifar, "
                             "image (mnist and cifar) or all")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="the shared data folder")
    parser.add_argument("--budget-steps", type=int, default=300, help="optimizer steps per model")
    parser.add_argument("--time", type=parse_time_flag, default=None,
                        help="wall-clock training budget per model instead of steps, e.g. 30m")
    parser.add_argument("--preset", default="tiny", help="model preset (tiny, small, base, large)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (all peers)")
    parser.add_argument("--min-lr", type=float, default=2e-4)
    parser.add_argument("--lrs", type=parse_rates, default=None, metavar="A,B,...",
                        help="train every peer at each of these peak learning rates (the floor keeps the ratio "
                             "--min-lr/--lr) and score each peer at its best one")
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                        help="learning-rate decay to --min-lr after warmup, all peers (default: %(default)s; the "
                             "TinyStories recipe's CPU setting is wsd with --decay-fraction 0.3 and --min-lr 0)")
    parser.add_argument("--decay-fraction", type=float, default=WSD_DECAY_FRACTION,
                        help="with --schedule wsd: the last fraction of the steps over which the rate decays, after "
                             "holding the peak (default: %(default)s)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                        help="every peer's optimizer: adamw, or muon (normuon: with NorMuon's rows) for the hidden "
                             "matrices (AdamW for the rest; MEGABYTE-pytorch's head is a plain Linear, so Muon gets "
                             "it too)")
    parser.add_argument("--grad-clip", type=float, default=1.0,
                        help="clip the global gradient norm to this (all peers); 0 disables clipping")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-windows", type=int, default=0,
                        help="fixed validation windows to score (0: all, i.e. every held-out byte)")
    parser.add_argument("--eval-overlap", type=float, default=0.0, metavar="FRACTION",
                        help="also score every peer over validation windows that share this fraction of their "
                             "length with the window before (each byte or token still scored once, after at least "
                             "that much of its window as context; packed data such as text): "
                             "bits_per_byte_overlapped (default 0: not scored)")
    parser.add_argument("--score-training", action="store_true",
                        help="also score every peer on a sample of the training data as large as the validation "
                             "data (every k-th training story, clip or image, the same bytes for every peer), scored "
                             "as the validation data is: train_sample_bits_per_byte; what lies between the two "
                             "scores is what a model learned by heart")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile every peer's training loss (the compiling first step is not counted)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="train every peer in fp32 or under bf16 autocast (evaluation stays in fp32)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for all peers")
    parser.add_argument("--peers", default=None,
                        help=f"comma-separated subset of {', '.join(ALL_PEERS)} (default: every peer of "
                             f"{', '.join(PEERS)} that reads the data set; {', '.join(TEXT_ONLY_PEERS)} read text only)")
    parser.add_argument("--bpe-vocab", type=int, default=DEFAULT_BPE_VOCAB,
                        help=f"{TOKEN_PEER}: BPE vocabulary size, the 256 byte symbols and EOS included")
    parser.add_argument("--gpt-context", type=int, default=0,
                        help=f"{TOKEN_PEER}: window length in tokens (0: the byte window's bytes over the training "
                             "text's bytes per token)")
    parser.add_argument("--mean-patch", type=float, default=None,
                        help="entropybyte: mean patch size its entropy threshold aims at on the training windows "
                             f"(default: the space patcher's mean on text, {DEFAULT_MEAN_PATCH:g} elsewhere)")
    parser.add_argument("--ngram-order", type=int, default=DEFAULT_NGRAM_ORDER,
                        help="entropybyte: order of the byte n-gram whose next-byte entropy places the patches")
    parser.add_argument("--skip-models", action="store_true", help="compressor and format rows only")
    parser.add_argument("--skip-compressors", action="store_true", help="model rows only")
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, 5 steps, a few documents: checks the script end to end in seconds")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_OUT_DIR / "cache")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="folder for the results JSON")
    add_config_arguments(parser, MegabyteConfig, title=MODEL_FLAGS_TITLE)
    args = parser.parse_args(argv)
    if args.peers is not None:
        args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
        unknown = sorted(set(args.peers) - set(ALL_PEERS))
        if unknown:
            parser.error(f"--peers: unknown {unknown}; choose from {', '.join(ALL_PEERS)}")
        if TOKEN_PEER in args.peers and args.modality != TOKEN_PEER_MODALITY:
            parser.error(f"--peers {TOKEN_PEER}: the tokenized GPT is measured on --modality {TOKEN_PEER_MODALITY} "
                         f"only, not {args.modality}")
        if "spacebyte" in args.peers and args.modality != TOKEN_PEER_MODALITY:
            parser.error(f"--peers spacebyte: space patches are measured on --modality {TOKEN_PEER_MODALITY} only, "
                         f"not {args.modality}; entropybyte patches any data")
        if WORD_PEER in args.peers and args.modality != TOKEN_PEER_MODALITY:
            parser.error(f"--peers {WORD_PEER}: word blocks are measured on --modality {TOKEN_PEER_MODALITY} only, "
                         f"not {args.modality}")
    if args.bpe_vocab < 258:  # the 256 byte symbols, EOS and at least one merge
        parser.error(f"--bpe-vocab {args.bpe_vocab}: give at least 258 (256 byte symbols, EOS, one merge)")
    if args.mean_patch is not None and not args.mean_patch >= 1:
        parser.error(f"--mean-patch {args.mean_patch}: give a mean patch size of 1 byte or more")
    if not 1 <= args.ngram_order <= 3:  # the table has 257 ** order entries: order 4 would need 4 billion
        parser.error(f"--ngram-order {args.ngram_order}: give 1, 2 or 3")
    if not args.grad_clip >= 0:
        parser.error(f"--grad-clip {args.grad_clip}: give a norm of 0 or more (0 disables clipping)")
    if not 0 <= args.decay_fraction <= 1:
        parser.error(f"--decay-fraction {args.decay_fraction:g}: give a fraction from 0 to 1")
    if not 0 <= args.eval_overlap < 1:
        parser.error(f"--eval-overlap {args.eval_overlap:g}: give a fraction from 0 up to (not including) 1")
    if args.gpt_context < 0:
        parser.error(f"--gpt-context {args.gpt_context}: give a positive number of tokens, or 0 for the default")
    return args


def peers_for(name: str, chosen: list[str] | None) -> list[str]:
    """The peers trained on data set ``name``: those chosen, or by default every peer that reads it."""
    if chosen is not None:
        return chosen
    return list(PEERS) if name == TOKEN_PEER_MODALITY else list(BYTE_PEERS)


def train_plan(args: argparse.Namespace) -> TrainPlan:
    """The training plan every peer follows."""
    if args.quick:
        return TrainPlan(steps=5, seconds=None, batch_size=4, lr=args.lr, min_lr=args.min_lr, warmup_steps=2,
                         seed=args.seed)
    steps = None if args.time is not None else args.budget_steps
    return TrainPlan(steps=steps, seconds=args.time, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
                     warmup_steps=args.warmup_steps, seed=args.seed, compile=args.compile, dtype=args.dtype,
                     optimizer=args.optimizer, schedule=args.schedule, decay_fraction=args.decay_fraction,
                     grad_clip=args.grad_clip)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the trainer does on a CPU, for every peer alike
    limits = QUICK_DOCUMENTS if args.quick else (None, None)
    eval_windows = 4 if args.quick else args.eval_windows
    plan = train_plan(args)
    overrides = overrides_from_args(MegabyteConfig, args)
    started = dt.datetime.now().astimezone()
    results: dict[str, Any] = {}
    titles: dict[str, str] = {}
    for name in selected_modalities(args.modality):
        try:
            data = LOADERS[name](args.data_dir, limits)
        except OSError as error:  # no data folder (run from elsewhere than beside ../shared): one line naming it
            raise SystemExit(f"compare.py: {name}: {error.filename or args.data_dir}: {error.strerror or error}; "
                             "pass --data-dir pointing at the shared data folder") from None
        titles[name] = data.title
        result: dict[str, Any] = {"val_items": len(data.val_items),
                                  "val_bytes": sum(len(item) for item in data.val_items)}
        if not args.skip_compressors:
            result["compressors"] = compressor_rows(data)
        if not args.skip_models:
            peers = peers_for(name, args.peers)
            try:
                config = model_config(args.preset, data, overrides, args.quick)
                setup = prepare_peers(data, config, plan.seed, args.cache_dir, eval_windows, peers, args.bpe_vocab,
                                      args.gpt_context or None, args.mean_patch, args.ngram_order,
                                      args.eval_overlap, args.score_training)
            except ValueError as error:  # a bad preset, field value or tokenizer: one line, not a traceback
                raise SystemExit(f"compare.py: {name}: {error}") from None
            result["models"] = (sweep_peers(setup, plan, args.lrs, peers) if args.lrs
                                else train_peers(setup, plan, peers))
        results[name] = result

    table = markdown_table(titles, table_rows(results))
    sweeps = sweep_table(results)
    if sweeps:
        table += "\n\n" + sweeps
    targets = target_lines(results, plan.seconds)
    command = "python benchmarks/compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
    record = {"command": command.strip(), "date": started.isoformat(timespec="seconds"), "machine": machine(),
              "plan": dataclasses.asdict(plan), "lrs": args.lrs, "threads": args.threads, "preset": args.preset,
              "overrides": overrides, "results": results, "table": table, "targets": targets}
    path = write_record(args.out, record)
    print(table)
    if targets:
        print()
        print("\n".join(f"- {line}" for line in targets))
    print(f"\nBits per byte of the held-out bytes (lower is better). {record['date']}, {record['machine']['cpu']}, "
          f"{args.threads} threads. Results: {os.path.relpath(path)}")
    return record


if __name__ == "__main__":
    main()
