"""Files through ``bytemodels.compress`` as a checkpoint frames them: its layout, its codec's tag and record size,
text split into documents, and the codec's form of a file when the codec gives the file back byte for byte. What
``bytemodels compress`` / ``decompress`` and the benchmarks share; the codec is passed in (the core never builds
one)."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from bytemodels.compress import MAX_CODEC_BYTES, CompressedFileError, compress_file
from bytemodels.documents import checkpoint_layout, document_separator, record_size


def codec_record(codec: Any, suffix: str) -> dict[str, str]:
    """What a ``.bmz`` header records of the codec a file went through: its name, a hash of its options (the
    model's weights hash already pins the checkpoint, so the options need not be spelled out) and the file's
    suffix, which tells the codec's ``save`` the format to write."""
    options = json.dumps(codec.config(), sort_keys=True, separators=(",", ":")).encode()
    return {"name": codec.name, "options": hashlib.sha256(options).hexdigest()[:8], "suffix": suffix}


def codec_restore(codec: Any):
    """``restore`` for ``decompress_file``: the codec's bytes back into the file, through ``codec.save``."""
    def restore(form: bytes, record: dict[str, str]) -> bytes:
        if codec is None or record != codec_record(codec, record.get("suffix", "")):
            raise CompressedFileError(f"made through the {record.get('name')!r} codec with other options than "
                                      "this checkpoint's; pass the --model it was made with")
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / f"restored{record['suffix']}"
            codec.save(codec.decode(form), path)
            return path.read_bytes()

    return restore


def codec_form(codec: Any, source: Path) -> tuple[bytes, dict[str, str]] | None:
    """The bytes ``codec`` makes of ``source`` and its record, when the codec gives the file back byte for byte
    (a WAV clip in the codec's own format); None when it cannot (raw bytes are coded instead)."""
    if codec is None or not source.suffix or ":" in source.suffix or source.stat().st_size > MAX_CODEC_BYTES:
        return None
    record = codec_record(codec, source.suffix.lower())
    try:
        form = codec.encode_file(source)
        if len(form) <= MAX_CODEC_BYTES and codec_restore(codec)(form, record) == source.read_bytes():
            return form, record
    except (ValueError, OSError):  # not the codec's kind of file (a CodecError is a ValueError)
        pass
    return None


def compress_with_checkpoint(model, metadata: dict[str, Any], codec: Any, source: Path, out, *, batch_size: int,
                             raw: bool = False, progress: bool = False,
                             separator: str | None = None) -> tuple[float, int, str | None]:
    """Compress the file ``source`` into the binary stream ``out`` as the checkpoint's model was trained (its layout,
    its codec's tag and record size; text split into documents at ``separator``, default the checkpoint's), through
    the codec when it restores the file exactly (unless ``raw``). Returns (ideal coded bits, bytes coded, the codec's
    name or None for raw bytes)."""
    layout = checkpoint_layout(metadata, codec)
    form = None if raw else codec_form(codec, source)
    between = None
    if form is not None and layout == "packed":
        between = document_separator(form[0], metadata.get("separator") if separator is None else separator)
    bits = compress_file(model, source, out, layout=layout, tag=codec.tag if codec is not None else None,
                         record_size=record_size(layout, codec), separator=between, batch_size=batch_size,
                         progress=progress, codec_form=form)
    if form is None:
        return bits, source.stat().st_size, None
    return bits, len(form[0]), codec.name
