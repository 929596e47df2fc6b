"""The codec a checkpoint was trained with: its metadata records the codec's configuration as opaque JSON, and
only here (above the core) does it become a ``bytecodecs`` codec again."""

from __future__ import annotations

from typing import Any

import bytecodecs
from bytemodels.app import CommandError

LAYOUT_BY_MODALITY = {"audio": "records", "image": "records"}
"""The layout of a checkpoint that recorded none (older runs): what its codec's modality was trained in."""


def checkpoint_codec(metadata: dict[str, Any], modality: str | None = None) -> bytecodecs.ByteCodec | None:
    """The codec a checkpoint was trained with, or None when it recorded none (raw bytes).

    A checkpoint trained on several modalities records one codec per modality (``"codecs"``);
    ``modality`` picks one, and its tag makes the model produce that modality."""
    several = metadata.get("codecs")
    if several:
        if modality not in several:
            raise CommandError(f"this checkpoint was trained on several modalities: pass --modality "
                               f"{' or '.join(sorted(several))}")
        return _codec_from_config(several[modality])
    if modality is not None:
        raise CommandError("--modality is for checkpoints trained on several modalities; this one has one codec")
    config = metadata.get("codec")
    return _codec_from_config(config) if config else None


def _codec_from_config(config: dict[str, Any]) -> bytecodecs.ByteCodec:
    try:
        return bytecodecs.codec_from_config(config)
    except (bytecodecs.CodecError, TypeError, AttributeError, KeyError) as error:  # e.g. an option of a wrong type
        raise CommandError(f"metadata.json: codec config {config!r} cannot be rebuilt ({error})") from None


def checkpoint_layout(metadata: dict[str, Any], codec: bytecodecs.ByteCodec | None) -> str:
    """``packed`` or ``records``: what the checkpoint recorded, else what its codec's modality implies."""
    if "layout" in metadata:
        return metadata["layout"]
    return LAYOUT_BY_MODALITY.get(codec.modality if codec else "", "packed")
