"""Byte codecs: turn a modality into the byte stream a model sees, and back.

    import bytecodecs
    wav = bytecodecs.get_codec("wav", sample_rate=8000, sample_format="mulaw")
    data = wav.encode_file("speech.wav")        # bytes for training
    wav.write_bytes(generated, "sample.wav")    # model output back to a file

The folder is ``codecs/`` but the import name is ``bytecodecs``: a package called ``codecs`` would
shadow the standard-library module the interpreter imports at start-up. Codecs use numpy,
soundfile, Pillow and soxr, never torch or ``bytemodels``. The codec classes are imported lazily,
so ``import bytecodecs`` does not load Pillow or soundfile.
"""

from __future__ import annotations

from typing import Any

from bytecodecs.base import ByteCodec, CodecError, Framing
from bytecodecs.files import atomic_path, require_file
from bytecodecs.folder import FolderFiles, iter_folder, list_files
from bytecodecs.registry import (
    ENTRY_POINT_GROUP,
    available_codecs,
    codec_class,
    codec_from_config,
    get_codec,
    register_codec,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Audio",
    "ByteCodec",
    "CodecError",
    "FolderFiles",
    "Framing",
    "ImageCodec",
    "TextCodec",
    "WavCodec",
    "atomic_path",
    "available_codecs",
    "codec_class",
    "codec_from_config",
    "get_codec",
    "iter_folder",
    "list_files",
    "register_codec",
    "require_file",
]

_LAZY = {"TextCodec": "bytecodecs.text", "WavCodec": "bytecodecs.wav", "Audio": "bytecodecs.wav",
         "ImageCodec": "bytecodecs.image"}


def __getattr__(name: str) -> Any:  # PEP 562: import a codec module on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bytecodecs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
