"""The ``.bmz`` container: what ``bytemodels.compress`` writes around the coded chunks.

Layout (integers little-endian)::

    magic (8 bytes) · version (1 byte) · header length (u32) · header (UTF-8 JSON) · header CRC-32 (u32)
    then one record per chunk: original length (u32) · coded words (u32) · CRC-32 of the original chunk (u32)
                               · the coder's output (coded words × 4 bytes)

The JSON header says how to decode (codec, chunking, the model's weights hash, the setup that computed the
probabilities) and what the result must be (its length and SHA-256). Every chunk is coded on its own, so a
reader holds one batch of chunks at a time; every size is checked against the header before anything is
allocated, so memory is bounded by the chunk size, never by what a damaged file claims.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any, BinaryIO

MAGIC = b"\x89BMZ\r\n\x1a\n"  # PNG-style: a text-mode transfer or a truncated first line shows at once
VERSION = 1
MAX_HEADER_BYTES = 1 << 20
MAX_CHUNK_SIZE = 1 << 24
MAX_BATCH_SIZE = 256  # rows the model decodes at once: its caches grow with them
_RECORD = struct.Struct("<III")


class CompressedFileError(ValueError):
    """A ``.bmz`` file (or blob) that cannot be decoded: not one, truncated, damaged, or made for another model
    or setup. The message is one line naming the cause."""


def write_header(out: BinaryIO, header: dict[str, Any]) -> None:
    """Write the magic, the version and the JSON header (with its CRC-32)."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    out.write(MAGIC + bytes([VERSION]) + struct.pack("<I", len(text)) + text + struct.pack("<I", zlib.crc32(text)))


def read_header(source: BinaryIO, name: str) -> dict[str, Any]:
    """The JSON header of the ``.bmz`` stream ``source`` (``name`` names it in errors), checked."""
    start = source.read(len(MAGIC) + 5)
    if start[:len(MAGIC)] != MAGIC:
        raise CompressedFileError(f"{name}: not a .bmz file (no bytemodels compression signature)")
    if len(start) < len(MAGIC) + 5:
        raise CompressedFileError(f"{name}: truncated .bmz file (it ends inside the header)")
    if start[len(MAGIC)] != VERSION:
        raise CompressedFileError(f"{name}: .bmz version {start[len(MAGIC)]}, this bytemodels reads version "
                                  f"{VERSION}; use the bytemodels that wrote it")
    (size,) = struct.unpack("<I", start[len(MAGIC) + 1:])
    if size > MAX_HEADER_BYTES:
        raise CompressedFileError(f"{name}: damaged .bmz file (a header of {size:,} bytes)")
    text = source.read(size)
    crc = source.read(4)
    if len(text) < size or len(crc) < 4:
        raise CompressedFileError(f"{name}: truncated .bmz file (it ends inside the header)")
    if struct.unpack("<I", crc)[0] != zlib.crc32(text):
        raise CompressedFileError(f"{name}: damaged .bmz file (the header's checksum does not match)")
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CompressedFileError(f"{name}: damaged .bmz file (the header is not JSON)") from None
    _check_header(header, name)
    return header


def _check_header(header: Any, name: str) -> None:
    """The fields decoding relies on exist and have sane values (the CRC passed: this catches foreign writers)."""
    if not isinstance(header, dict):
        raise CompressedFileError(f"{name}: damaged .bmz file (the header is not an object)")
    for key, low, high in (("length", 0, 1 << 62), ("chunk_size", 1, MAX_CHUNK_SIZE), ("batch_size", 1, MAX_BATCH_SIZE)):
        value = header.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise CompressedFileError(f"{name}: damaged .bmz file (header field {key!r} is {value!r})")
    if header.get("codec") != "none":
        raise CompressedFileError(f"{name}: codec {header.get('codec')!r} is not one this bytemodels decodes "
                                  "(it knows 'none')")


def write_chunk(out: BinaryIO, original: bytes, coded: bytes) -> None:
    """One chunk's record: its length, its coded words and the CRC-32 of its original bytes."""
    out.write(_RECORD.pack(len(original), len(coded) // 4, zlib.crc32(original)) + coded)


def read_chunk(source: BinaryIO, name: str, index: int, expected_length: int) -> tuple[bytes, int]:
    """The coded bytes and the original's CRC-32 of chunk ``index``, which must hold ``expected_length`` bytes."""
    record = source.read(_RECORD.size)
    if len(record) < _RECORD.size:
        raise CompressedFileError(f"{name}: truncated .bmz file (it ends before chunk {index})")
    length, words, crc = _RECORD.unpack(record)
    # A range coder spends at most ~24 bits a byte at 24-bit precision: more words than bytes means damage.
    if length != expected_length or words > length + 4:
        raise CompressedFileError(f"{name}: damaged .bmz file (chunk {index} claims {length:,} bytes in "
                                  f"{words * 4:,} coded bytes; the header implies {expected_length:,})")
    coded = source.read(words * 4)
    if len(coded) < words * 4:
        raise CompressedFileError(f"{name}: truncated .bmz file (it ends inside chunk {index})")
    return coded, crc


def check_end(source: BinaryIO, name: str) -> None:
    """Nothing may follow the last chunk (a second file appended, or a damaged count)."""
    if source.read(1):
        raise CompressedFileError(f"{name}: damaged .bmz file (data after the last chunk)")
