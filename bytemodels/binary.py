"""The ``.bmz`` container: what ``bytemodels.compress`` writes around the coded blocks.

Layout (varints are unsigned LEB128, as in protobuf; fixed integers little-endian)::

    magic (4 bytes) · version (1 byte) · header (below) · CRC-32 of the header (u32)
    then one record per block of windows: coded length (varint) · the range coder's output

    header: flags (1 byte: records layout, has a tag, went through a codec, has documents)
            · original length · record size · tag (when flagged) · windows per block · threads   (varints)
            · SHA-256 of the original (first 8 bytes) · weights hash (8 bytes) · probe hash (4 bytes)
            · setup (varint length + UTF-8: the torch version, and the device and dtype unless CPU float32)
            · documents (when flagged: their count, varint, and the separator: varint length + bytes)
            · codec (when flagged: varint length + "name:options hash:file suffix")

About 60 bytes in all (FLAC keeps 86 bytes of metadata in a file), so small files pay little for it. Every
size is checked against limits before anything is allocated, and a block's coded length against the most its
bytes can take, so memory is bounded by one block, never by what a damaged file claims.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = b"\x89BMZ"  # PNG-style: a 7-bit transfer or a text-mode copy shows at once
VERSION = 2
MAX_BATCH_SIZE = 256  # windows the model decodes at once: its caches grow with them
MAX_RECORD_SIZE = 1 << 30
MAX_STRING_BYTES = 4096
#: Prefix lengths of the hashes kept: enough to tell a damaged file, another model or another setup (a chance of
#: 2**-64, 2**-64, 2**-32 of missing one, and the original's hash catches a wrong setup too), small for small files.
HASH_BYTES = {"sha256": 8, "weights": 8, "probe": 4}
_RECORDS, _TAG, _CODEC, _SEPARATOR = 1, 2, 4, 8
CODEC_FIELDS = ("name", "options", "suffix")


class CompressedFileError(ValueError):
    """A ``.bmz`` file (or blob) that cannot be decoded: not one, truncated, damaged, or made for another model
    or setup. The message is one line naming the cause."""


@dataclass(frozen=True)
class Header:
    """What decoding needs, and what the result must be."""

    length: int  #: bytes of the original
    sha256: bytes  #: the first 8 bytes of the original's SHA-256
    layout: str  #: "packed" or "records": how the model frames a document (bytemodels.data)
    tag: int | None  #: the modality tag index the documents are framed with
    record_size: int  #: records layout: the data is cut into records of this many bytes (0: one record)
    batch_size: int  #: windows coded together in one block
    threads: int  #: torch threads the probabilities were computed on
    weights: bytes  #: hash of the model's weights
    probe: bytes  #: hash of the probabilities of a fixed probe sequence (bytemodels.compress)
    setup: str  #: the compressor's torch version (and device and dtype unless CPU float32), for messages
    #: Packed documents separated by these bytes in the original (each coded as a training document, its end
    #: coded as the model's EOS), or None for one document.
    separator: bytes | None = None
    documents: int = 1  #: how many documents the separator separates
    #: The codec the file went through (``name``, ``options``: a hash of them, ``suffix``: the file's), or None
    #: for its raw bytes.
    codec: dict[str, str] | None = None


def varint(value: int) -> bytes:
    """``value`` (>= 0) as an unsigned LEB128 varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(read, name: str, what: str, high: int) -> int:
    value, shift = 0, 0
    while True:
        byte = read(1)
        if not byte:
            raise CompressedFileError(f"{name}: truncated .bmz file (it ends inside {what})")
        value |= (byte[0] & 0x7F) << shift
        if value > high:
            raise CompressedFileError(f"{name}: damaged .bmz file ({what} is over {high:,})")
        if not byte[0] & 0x80:
            return value
        shift += 7


def _string(text: str) -> bytes:
    data = text.encode()
    return varint(len(data)) + data


def write_header(out: BinaryIO, header: Header) -> None:
    """Write the magic, the version, the header and its CRC-32."""
    flags = (_RECORDS if header.layout == "records" else 0) | (_TAG if header.tag is not None else 0) | \
        (_CODEC if header.codec is not None else 0) | (_SEPARATOR if header.separator is not None else 0)
    body = bytes([flags]) + varint(header.length) + varint(header.record_size)
    if header.tag is not None:
        body += varint(header.tag)
    body += varint(header.batch_size) + varint(header.threads) + header.sha256 + header.weights + header.probe
    body += _string(header.setup)
    if header.separator is not None:
        body += varint(header.documents) + varint(len(header.separator)) + header.separator
    if header.codec is not None:
        body += _string(":".join(header.codec[key] for key in CODEC_FIELDS))
    out.write(MAGIC + bytes([VERSION]) + body + struct.pack("<I", zlib.crc32(body)))


def read_header(source: BinaryIO, name: str) -> Header:
    """The header of the ``.bmz`` stream ``source`` (``name`` names it in errors), checked."""
    start = source.read(len(MAGIC) + 1)
    if start[:len(MAGIC)] != MAGIC[:len(start)] or not start:
        raise CompressedFileError(f"{name}: not a .bmz file (no bytemodels compression signature)")
    if len(start) < len(MAGIC) + 1:
        raise CompressedFileError(f"{name}: truncated .bmz file (it ends inside the header)")
    if start[len(MAGIC)] != VERSION:
        raise CompressedFileError(f"{name}: .bmz version {start[len(MAGIC)]}, this bytemodels reads version "
                                  f"{VERSION}; use the bytemodels that wrote it")
    body = bytearray()

    def read(size: int) -> bytes:
        data = source.read(size)
        body.extend(data)
        return data

    def exactly(size: int, what: str) -> bytes:
        data = read(size)
        if len(data) < size:
            raise CompressedFileError(f"{name}: truncated .bmz file (it ends inside {what})")
        return data

    def string(what: str) -> str:
        data = exactly(_read_varint(read, name, what, MAX_STRING_BYTES), what)
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise CompressedFileError(f"{name}: damaged .bmz file ({what} is not text)") from None

    flags = exactly(1, "the header")[0]
    length = _read_varint(read, name, "the length", 1 << 62)
    record_size = _read_varint(read, name, "the record size", MAX_RECORD_SIZE)
    tag = _read_varint(read, name, "the tag", 1 << 15) if flags & _TAG else None
    batch_size = _read_varint(read, name, "the block size", MAX_BATCH_SIZE)
    threads = _read_varint(read, name, "the thread count", 4096)
    hashes = {key: exactly(size, "the header") for key, size in HASH_BYTES.items()}
    setup = string("the setup")
    separator, documents = None, 1
    if flags & _SEPARATOR:
        documents = _read_varint(read, name, "the document count", 1 << 62)
        separator = exactly(_read_varint(read, name, "the separator", MAX_STRING_BYTES), "the separator")
    codec_text = string("the codec") if flags & _CODEC else None
    crc = source.read(4)
    if len(crc) < 4:
        raise CompressedFileError(f"{name}: truncated .bmz file (it ends inside the header)")
    if struct.unpack("<I", crc)[0] != zlib.crc32(bytes(body)):
        raise CompressedFileError(f"{name}: damaged .bmz file (the header's checksum does not match)")
    if flags & ~(_RECORDS | _TAG | _CODEC | _SEPARATOR) or batch_size < 1 or threads < 1 or documents < 1 or \
            (separator is not None and (not separator or flags & _RECORDS
                                        or (documents - 1) * len(separator) > length)):
        raise CompressedFileError(f"{name}: damaged .bmz file (header flags {flags}, {batch_size} windows per "
                                  f"block, {threads} threads, {documents} documents)")
    codec = None
    if codec_text is not None:
        fields = codec_text.split(":")
        if len(fields) != len(CODEC_FIELDS) or not fields[0]:
            raise CompressedFileError(f"{name}: damaged .bmz file (its codec record is {codec_text!r})")
        codec = dict(zip(CODEC_FIELDS, fields))
    return Header(length=length, sha256=hashes["sha256"], layout="records" if flags & _RECORDS else "packed",
                  tag=tag, record_size=record_size, batch_size=batch_size, threads=threads,
                  weights=hashes["weights"], probe=hashes["probe"], setup=setup, separator=separator,
                  documents=documents, codec=codec)


def write_block(out: BinaryIO, coded: bytes) -> None:
    """One block's record: its coded length and the coder's output."""
    out.write(varint(len(coded)) + coded)


def read_block(source: BinaryIO, name: str, index: int, symbols: int) -> bytes:
    """The coded bytes of block ``index``, which codes ``symbols`` bytes."""
    # At 24-bit precision no symbol costs more than 24 bits; the coder adds at most two words at the end.
    most = 3 * symbols + 8
    size = _read_varint(source.read, name, f"block {index}'s length", most)
    coded = source.read(size)
    if len(coded) < size:
        raise CompressedFileError(f"{name}: truncated .bmz file (it ends inside block {index})")
    return coded


def check_end(source: BinaryIO, name: str) -> None:
    """Nothing may follow the last block (a second file appended, or a damaged length)."""
    if source.read(1):
        raise CompressedFileError(f"{name}: damaged .bmz file (data after the last block)")
