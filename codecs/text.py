"""Text codec: ``str`` <-> UTF-8 bytes, nothing added or removed.

Decoding model output never raises: invalid or truncated UTF-8 becomes U+FFFD (the replacement
character) unless the codec is ``strict``. Files are read and written as bytes, so newlines and a
byte-order mark come through unchanged.
"""

from __future__ import annotations

import codecs
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bytecodecs.base import ByteCodec, CodecError, Framing, check_bool
from bytecodecs.files import atomic_path, require_file
from bytecodecs.registry import _register_builtin

__all__ = ["TextCodec"]

_NORMAL_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
#: Bytes read at a time by ``encode_file_chunks``.
CHUNK_BYTES = 1 << 20
#: Characters held back at most while waiting for a line end to normalize up to (a file without line ends).
_MAX_PENDING_CHARS = 1 << 24


@dataclass(frozen=True)
class TextCodec(ByteCodec):
    """``str`` <-> UTF-8. Variable-length records, byte-aligned; claims tag 0."""

    strict: bool = False
    """Raise ``CodecError`` on bytes that are not UTF-8 instead of writing U+FFFD."""
    normalize: str | None = None
    """Unicode normal form applied before encoding: "NFC", "NFD", "NFKC", "NFKD" or None (keep as is)."""

    name = "text"
    modality = "text"
    tag = 0
    extension = ".txt"
    extensions = (".txt", ".md", ".text")

    def __post_init__(self) -> None:
        check_bool("strict", self.strict, "text codec")
        if self.normalize is not None and self.normalize not in _NORMAL_FORMS:
            raise CodecError(f"text codec: normalize={self.normalize!r} must be one of {_NORMAL_FORMS} or None "
                             "(on the command line write None as JSON null: -O normalize=null)")

    @property
    def framing(self) -> Framing:
        return Framing(record_size=None, align=1)

    def encode(self, item: str) -> bytes:
        """UTF-8 bytes of ``item`` (normalized first when ``normalize`` is set)."""
        if not isinstance(item, str):
            raise CodecError(f"text codec encodes str, not {type(item).__name__}")
        if self.normalize is not None:
            item = unicodedata.normalize(self.normalize, item)
        try:
            return item.encode("utf-8")
        except UnicodeEncodeError as error:  # lone surrogates have no UTF-8 form
            raise CodecError(f"text has no UTF-8 form at character {error.start}: {error.reason}") from None

    def decode(self, data: bytes) -> str:
        """The string for ``data``; bad UTF-8 becomes U+FFFD, or a ``CodecError`` when ``strict``."""
        return self._decode(bytes(data), path=None)

    def load(self, path: str | Path) -> str:
        """The text of a UTF-8 file, decoded like ``decode``; an empty file is the empty string (what ``save``
        writes for it)."""
        path = require_file(path, allow_empty=True)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise CodecError(f"cannot be read ({error.strerror or error})", path) from error
        return self._decode(data, path=path)

    def save(self, item: str, path: str | Path) -> Path:
        """Write ``item`` as UTF-8, exactly the bytes ``encode`` gives."""
        data = self.encode(item)
        path = Path(path)
        with atomic_path(path) as temporary:
            temporary.write_bytes(data)
        return path

    def encode_file_chunks(self, path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """``encode_file(path)`` in pieces of about ``chunk_bytes``, reading the file a block at a time, so a file
        of any size is encoded in bounded memory. The pieces joined equal ``encode_file(path)``: UTF-8 cut between
        blocks is decoded whole, and with ``normalize`` each piece ends at a line end (normal forms never join
        characters across one; a line of over 16M characters is cut there)."""
        path = require_file(path, allow_empty=True)
        decoder = codecs.getincrementaldecoder("utf-8")("strict" if self.strict else "replace")
        pending, read = "", 0
        try:
            with open(path, "rb") as file:
                while True:
                    block = file.read(chunk_bytes)
                    held = len(decoder.getstate()[0])  # bytes of a character cut at the last block's end
                    try:
                        text = pending + decoder.decode(block, final=not block)
                    except UnicodeDecodeError as error:
                        raise CodecError(f"is not valid UTF-8 at byte {read - held + error.start} ({error.reason})",
                                         path) from None
                    read += len(block)
                    if self.normalize is None:
                        pending, ready = "", text
                    else:
                        cut = text.rfind("\n") + 1 if block and len(text) < _MAX_PENDING_CHARS else len(text)
                        pending, ready = text[cut:], unicodedata.normalize(self.normalize, text[:cut])
                    if ready:
                        yield ready.encode("utf-8")
                    if not block:
                        return
        except OSError as error:
            raise CodecError(f"cannot be read ({error.strerror or error})", path) from error

    def _decode(self, data: bytes, path: Path | None) -> str:
        if not self.strict:
            return data.decode("utf-8", errors="replace")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CodecError(f"is not valid UTF-8 at byte {error.start} ({error.reason})"
                             if path is not None else
                             f"bytes are not valid UTF-8 at byte {error.start} ({error.reason})", path) from None


_register_builtin(TextCodec)
