"""A file's bytes as the documents a checkpoint was trained on, and their bits per byte: what ``bytemodels eval``,
``bytemodels compress`` and the benchmarks share. Codecs are passed in (the core never builds one)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any


LAYOUT_BY_MODALITY = {"audio": "records", "image": "records"}
"""The layout of a checkpoint that recorded none (older runs): what its codec's modality was trained in."""


def checkpoint_layout(metadata: dict[str, Any], codec: Any) -> str:
    """``packed`` or ``records``: what the checkpoint recorded, else what its codec's modality implies."""
    if "layout" in metadata:
        return metadata["layout"]
    return LAYOUT_BY_MODALITY.get(codec.modality if codec else "", "packed")


def bits_per_byte(model, document, tag: int | None, layout: str, batch_size: int,
                  progress: str | None = None) -> tuple[float, int]:
    """(total bits, data bytes) for one document framed as in training; only byte targets count.

    ``document`` is bytes or a uint8 array (a ``np.memmap`` of a raw file is never read into memory whole), or a
    list or iterator of such documents (the images of an array, one record each): it goes to an on-disk cache,
    and its windows are scored ``batch_size`` at a time, so memory is bounded by the batch. ``progress``: a label
    for a progress bar over the windows' bytes (shown after two seconds)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from bytemodels import tokens
    from bytemodels.data import ByteDataset

    config = model.config
    device = next(model.parameters()).device
    total_nats = 0.0
    single = isinstance(document, (bytes, bytearray, np.ndarray))
    documents = [(document, tag)] if single else ((piece, tag) for piece in document)
    with tempfile.TemporaryDirectory() as folder:
        dataset = ByteDataset.build(documents, folder, key={"eval": True}, layout=layout, progress=False)
        size = dataset.num_bytes
        windows = dataset.windows(config.max_seq_len, config.patch_size, config.num_tags)
        with tqdm(total=len(windows) * config.max_seq_len, desc=progress, unit="B", unit_scale=True,
                  unit_divisor=1024, delay=2, leave=False, disable=progress is None) as bar:
            for first in range(0, len(windows), batch_size):
                indices = range(first, min(first + batch_size, len(windows)))
                batch = torch.from_numpy(np.stack([windows.window(i) for i in indices])).to(device)
                with torch.no_grad():
                    logits = model(batch).logits.float()
                targets = batch.masked_fill(batch >= tokens.NUM_BYTES, tokens.PAD_ID)
                total_nats += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                              ignore_index=tokens.PAD_ID, reduction="sum").item()
                bar.update(batch.numel())
        del windows, dataset  # close the cache's memory maps before its folder goes
    return total_nats / math.log(2), size


def raw_document(path: Path):
    """A raw file's bytes as a read-only memory map (empty bytes for an empty file, which cannot be mapped)."""
    import numpy as np

    return np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else b""


def record_size(layout: str, codec: Any) -> int:
    """The bytes of each record a file's raw bytes are cut into: the codec's fixed record size (an image codec) for
    a records checkpoint, else 0 (one document)."""
    return (codec.framing.record_size or 0) if codec is not None and layout == "records" else 0


def raw_records(data, layout: str, codec: Any):
    """A file's raw bytes as the documents ``bytemodels compress`` codes them: one, or records of
    :func:`record_size`."""
    size = record_size(layout, codec)
    if not size or len(data) <= size:
        return data
    return [data[start:start + size] for start in range(0, len(data), size)]


def separated_documents(codec, path: Path, separator: str):
    """The documents of a text file split at ``separator`` (as ``bytemodels compress`` codes them), or the file as one
    document when it holds none; held in memory, as compress holds them."""
    data = codec.encode_file(path)
    between = document_separator(data, separator)
    return data.split(between) if between else data


def document_separator(data: bytes, separator: str | None) -> bytes | None:
    """The bytes between the documents of ``data``: ``separator`` (a checkpoint's recorded one, such as the TinyStories
    recipe's ``<|endoftext|>``, or ``--separator``) with the line ends around it where it first occurs; None when
    there is none (one document)."""
    if not separator:
        return None
    found = data.find(separator.encode())
    if found < 0:
        return None
    start, end = found, found + len(separator.encode())
    while start > 0 and data[start - 1:start] in (b"\n", b"\r"):
        start -= 1
    while end < len(data) and data[end:end + 1] in (b"\n", b"\r"):
        end += 1
    return data[start:end]
