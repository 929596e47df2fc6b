"""Lossless compression with a trained byte model: bytes in, ``.bmz`` bytes out (and back).

The data is framed as the model was trained (``layout``: packed documents, one or those between ``separator``
bytes, or records of ``record_size`` bytes, with the codec's ``tag``) and cut into the very windows validation scores
(:func:`bytemodels.data.document_windows`). Each byte is range-coded (``constriction``) under the model's
next-byte distribution in its window, so the coded size is the model's cross-entropy as ``bytemodels eval``
reports it, plus the coder's and the container's few bytes. ``batch_size`` windows form a block: they run through
the cached decoder of generation as one batch, one position at a time, and their bytes go into one coded stream
(position by position, window by window), so a block's coder ends once, not once per window. Blocks are
independent.

Decompression must see the very probabilities the compressor saw. Both sides therefore run the same calls with
the same shapes (the same blocks, one ``logits()`` call per position, the same ids fed), on the thread count the
header records. The logits are turned into integer frequencies deterministically in numpy
(:func:`quantised_frequencies`): every byte keeps a frequency of at least 1, so any byte can be coded. In documents
mode a document's end is coded too, as the model's EOS, and each window's first id; the decompressor then follows
the packed framing as it decodes. A setup that
computes other logits (another torch, device or CPU kernel) is caught before anything is decoded: the header holds
a hash of the frequencies of a fixed probe sequence; and the original's SHA-256 is checked before the output is
moved into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from bytemodels import tokens
from bytemodels.binary import (HASH_BYTES, MAX_BATCH_SIZE, MAX_RECORD_SIZE, MAX_STRING_BYTES, CompressedFileError,
                               Header, check_end, read_block, read_header, write_block, write_header)
from bytemodels.data import LAYOUTS, document_windows
from bytemodels.generate import IncrementalDecoder
from bytemodels.runfolder import file_sha256

DEFAULT_BATCH_SIZE = 128
PRECISION_BITS = 24  # the frequencies sum to 2**24 (constriction's range coder codes at 24-bit precision)
PROBE = bytes((37 * i + 11) % 256 for i in range(24))  # a fixed sequence whose frequencies the header hashes
SYMBOL, BOS_NEXT, TAG_NEXT = 0, 1, 2  # documents mode: what the next id of a window is
UNIFORM_KINDS = np.full((1, 3), 1 / 3)  # the coded start of each window, in documents mode
#: Most bytes a codec's form of a file may take: it is held in memory whole, to check it restores the file.
MAX_CODEC_BYTES = 64 << 20

__all__ = ["CompressedFileError", "compress", "compress_file", "decompress", "decompress_file",
           "quantised_frequencies"]

Restore = Callable[[bytes, dict[str, str]], bytes]
"""Turns the decoded bytes of a file that went through a codec, and the header's codec record, into the file."""


def quantised_frequencies(logits: torch.Tensor, with_eos: bool = False) -> np.ndarray:
    """(batch, 256) integer frequencies of the next byte (257 ``with_eos``: the document's end last), each >= 1,
    every row summing to ``2**PRECISION_BITS``: a float64 softmax of those logits, floored, the remainder given to
    the most likely symbol. Pure numpy on float32 input, so the same logits give the same integers."""
    scores = logits[:, :tokens.NUM_BYTES]
    if with_eos:
        scores = torch.cat((scores, logits[:, tokens.EOS_ID:tokens.EOS_ID + 1]), dim=1)
    scores = scores.detach().to("cpu", torch.float32).numpy().astype(np.float64)
    scores -= scores.max(axis=1, keepdims=True)
    probabilities = np.exp(scores)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    total = 1 << PRECISION_BITS
    frequencies = np.floor(probabilities * (total - scores.shape[1])).astype(np.int64) + 1
    rows = np.arange(len(frequencies))
    frequencies[rows, frequencies.argmax(axis=1)] += total - frequencies.sum(axis=1)
    return frequencies


def _coder_model():
    import constriction

    # perfect=False: constriction's fast quantisation, deterministic for identical inputs; ours are exact dyadic
    # fractions, so it keeps them as they are.
    return constriction.stream.model.Categorical(perfect=False)


def _run_block(model, rows: int, length: int, feed: Callable[[int, torch.Tensor], np.ndarray]) -> None:
    """Run the model over a block of ``rows`` windows for ``length`` positions, one position at a time, from no
    context (as validation scores a window). ``feed(position, logits)`` gets the (rows, vocab) logits for that
    position and returns the (rows,) ids there (known when compressing, decoded when decompressing), which are fed
    back. The one code path both directions share: the same calls, the same shapes."""
    device = next(model.parameters()).device
    decoder = IncrementalDecoder(model, torch.zeros((rows, 0), dtype=torch.long, device=device), None, False, length)
    for position in range(length):
        decoder.append(torch.from_numpy(feed(position, decoder.logits())).to(device))


def _extent(block: np.ndarray) -> int:
    """Positions up to the last id that is not padding, in any window of ``block``."""
    used = np.flatnonzero((block != tokens.PAD_ID).any(axis=0))
    return int(used[-1]) + 1 if len(used) else 0


def _start_kinds(block: np.ndarray) -> np.ndarray:
    """Documents mode: what each window starts with (a coded symbol, BOS, or the tag after a BOS)."""
    first = block[:, 0]
    return np.where(first == tokens.BOS_ID, BOS_NEXT, np.where(first >= tokens.FIRST_TAG_ID, TAG_NEXT, SYMBOL))


def _documents(data: np.ndarray, separator: bytes | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The documents' bytes back to back and their offsets (None for one document)."""
    if separator is None:
        return data, None
    pieces = data.tobytes().split(separator)
    offsets = np.concatenate(([0], np.cumsum([len(piece) for piece in pieces])))
    return np.frombuffer(b"".join(pieces), dtype=np.uint8), offsets


def _windows(model, data: np.ndarray, header: Header, offsets: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Every window of ``data`` (uint8) framed as ``header`` says, in order: packed documents (``offsets``), or
    records of ``header.record_size`` bytes; generated lazily, so memory holds a window, whatever the length."""
    config = model.config
    if offsets is not None:
        pieces = [(data, offsets)]
    else:
        size = header.record_size or max(len(data), 1)
        pieces = ((data[start:start + size], None) for start in range(0, len(data), size))
    for piece, piece_offsets in pieces:
        windows = document_windows(piece, header.tag, header.layout, config.max_seq_len, config.patch_size,
                                   config.num_tags, piece_offsets)
        for index in range(len(windows)):
            yield windows.window(index)


def _blocks(windows: Iterator[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    block: list[np.ndarray] = []
    for window in windows:
        block.append(window)
        if len(block) == batch_size:
            yield np.stack(block)
            block = []
    if block:
        yield np.stack(block)


def _document_extents(header: Header, window: int) -> Iterator[int]:
    """Documents mode: the ids in each window of the packed stream (all of a window but in the last), lazily."""
    total = header.length - (header.documents - 1) * len(header.separator)
    total += header.documents * (3 if header.tag is not None else 2)  # BOS [tag] ... EOS around each
    for start in range(0, total, window):
        yield min(window, total - start)


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Run torch on ``count`` threads (the compressor's: a CPU matmul may sum in another order on others)."""
    before = torch.get_num_threads()
    if count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def _evaluating(model) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def weights_sha256(model) -> str:
    """SHA-256 of the model's parameters and buffers (names, dtypes, shapes and values) in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _probe(model) -> bytes:
    """Hash of the frequencies the model gives the fixed ``PROBE`` sequence through the coding path."""
    digest = hashlib.sha256()
    window = np.array([[tokens.BOS_ID, *PROBE]], dtype=np.int64)[:, :model.config.max_seq_len]

    def feed(position: int, logits: torch.Tensor) -> np.ndarray:
        digest.update(quantised_frequencies(logits, with_eos=True).tobytes())
        return window[:, position]

    _run_block(model, 1, window.shape[1], feed)
    return digest.digest()[:HASH_BYTES["probe"]]


def _setup(model) -> str:
    """The torch version, and the device and dtype where they are not the CPU's float32: for messages (the probe
    hash is what detects another setup)."""
    parameter = next(model.parameters())
    device, dtype = parameter.device.type, str(parameter.dtype).removeprefix("torch.")
    return torch.__version__ + ("" if (device, dtype) == ("cpu", "float32") else f" {device} {dtype}")


def _progress(total: int, enabled: bool, what: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=what, disable=not enabled, leave=False)


def _check_framing(model, layout: str, tag: int | None, record_size: int, batch_size: int,
                   separator: bytes | None) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not 0 <= record_size <= MAX_RECORD_SIZE or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"record_size must be in 0..{MAX_RECORD_SIZE} and batch_size in 1..{MAX_BATCH_SIZE}, got "
                         f"{record_size} and {batch_size}")
    if tag is not None:
        tokens.tag_id(tag, model.config.num_tags)  # raises for a tag outside the model's vocabulary
    if separator is not None and (not separator or len(separator) > MAX_STRING_BYTES or layout != "packed"):
        raise ValueError(f"a separator of documents is 1..{MAX_STRING_BYTES} bytes and for the packed layout, got "
                         f"{len(separator)} bytes and {layout!r}")


def _compress_array(model, data: np.ndarray, sha256: bytes, out: BinaryIO, *, layout: str, tag: int | None,
                    record_size: int, separator: bytes | None, batch_size: int, codec: dict[str, str] | None,
                    progress: bool) -> float:
    """Code ``data`` (uint8, e.g. a memory map) into ``out``; returns the ideal coded size in bits (the sum of
    -log2 of each symbol's quantised probability)."""
    import constriction

    _check_framing(model, layout, tag, record_size, batch_size, separator)
    documents, offsets = _documents(data, separator)
    with _evaluating(model):
        header = Header(length=len(data), sha256=sha256[:HASH_BYTES["sha256"]], layout=layout, tag=tag,
                        record_size=record_size, batch_size=batch_size, threads=torch.get_num_threads(),
                        weights=bytes.fromhex(weights_sha256(model))[:HASH_BYTES["weights"]], probe=_probe(model),
                        setup=_setup(model), separator=separator,
                        documents=1 if offsets is None else len(offsets) - 1, codec=codec)
        write_header(out, header)
        family, scale, bits = _coder_model(), float(1 << PRECISION_BITS), 0.0
        with_eos = separator is not None
        with _progress(len(data), progress, "compress") as bar:
            for block in _blocks(_windows(model, documents, header, offsets), batch_size):
                encoder = constriction.stream.queue.RangeEncoder()
                coded = (block < tokens.NUM_BYTES) | (with_eos & (block == tokens.EOS_ID))
                if with_eos:
                    encoder.encode(_start_kinds(block).astype(np.int32), family,
                                   np.repeat(UNIFORM_KINDS, len(block), axis=0))

                def feed(position: int, logits: torch.Tensor) -> np.ndarray:
                    nonlocal bits
                    column = block[:, position]
                    rows = np.flatnonzero(coded[:, position])
                    if len(rows):
                        frequencies = quantised_frequencies(logits[torch.from_numpy(rows).to(logits.device)],
                                                            with_eos)
                        symbols = np.minimum(column[rows], tokens.NUM_BYTES)  # EOS is the symbol after the bytes
                        bits -= float(np.log2(frequencies[np.arange(len(rows)), symbols] / scale).sum())
                        encoder.encode(symbols.astype(np.int32), family, frequencies / scale)
                    return column

                _run_block(model, len(block), _extent(block), feed)
                write_block(out, _trimmed(encoder.get_compressed()))
                bar.update(int((block < tokens.NUM_BYTES).sum()))
    return bits


def _trimmed(words: np.ndarray) -> bytes:
    """The coder's 32-bit words as little-endian bytes without trailing zero bytes (put back when decoding)."""
    return words.astype("<u4").tobytes().rstrip(b"\0")


def _words(coded: bytes) -> np.ndarray:
    return np.frombuffer(coded + b"\0" * (-len(coded) % 4), dtype="<u4").astype(np.uint32)


def _block_decoder(source: BinaryIO, name: str, index: int, most_symbols: int):
    import constriction

    return constriction.stream.queue.RangeDecoder(_words(read_block(source, name, index, most_symbols)))


def _decode_layout(model, header: Header, source: BinaryIO, name: str, write: Callable[[bytes], None],
                   advance: Callable[[int], Any]) -> None:
    """One document or records: where every byte falls is known from the header, so the windows are laid out
    first (over zeros that take no memory) and the bytes decoded into them."""
    family, scale = _coder_model(), float(1 << PRECISION_BITS)
    layout = np.broadcast_to(np.uint8(0), (header.length,))
    for index, block in enumerate(_blocks(_windows(model, layout, header), header.batch_size)):
        coded = block < tokens.NUM_BYTES
        decoder = _block_decoder(source, name, index, int(coded.sum()))

        def feed(position: int, logits: torch.Tensor) -> np.ndarray:
            rows = np.flatnonzero(coded[:, position])
            if len(rows):
                frequencies = quantised_frequencies(logits[torch.from_numpy(rows).to(logits.device)])
                block[rows, position] = decoder.decode(family, frequencies / scale)
            return block[:, position]

        _run_block(model, len(block), _extent(block), feed)
        decoded = block[coded].astype(np.uint8).tobytes()  # window by window, in order
        write(decoded)
        advance(len(decoded))


def _decode_documents(model, header: Header, source: BinaryIO, name: str, write: Callable[[bytes], None],
                      advance: Callable[[int], Any]) -> None:
    """Packed documents: where each ends is decoded (the model's EOS), so every window follows the packed framing as
    it goes (BOS, the tag, symbols until EOS, BOS, ...) from the start the compressor coded for it."""
    family, scale = _coder_model(), float(1 << PRECISION_BITS)
    tag_id = None if header.tag is None else tokens.tag_id(header.tag, model.config.num_tags)
    window, ended = model.config.max_seq_len, 0
    extents_left = _document_extents(header, window)
    for index in itertools.count():
        extents = np.array(list(itertools.islice(extents_left, header.batch_size)), dtype=np.int64)
        if not len(extents):
            return
        decoder = _block_decoder(source, name, index, int(extents.sum()))
        kinds = decoder.decode(family, np.repeat(UNIFORM_KINDS, len(extents), axis=0)).astype(np.int64)
        block = np.full((len(extents), window), tokens.PAD_ID, dtype=np.int64)

        def feed(position: int, logits: torch.Tensor) -> np.ndarray:
            active, current = position < extents, kinds.copy()
            column = block[:, position]
            starts = active & (current == BOS_NEXT)
            column[starts] = tokens.BOS_ID
            kinds[starts] = SYMBOL if tag_id is None else TAG_NEXT
            tagged = active & (current == TAG_NEXT)
            column[tagged] = tag_id if tag_id is not None else tokens.PAD_ID
            kinds[tagged] = SYMBOL
            rows = np.flatnonzero(active & (current == SYMBOL))
            if len(rows):
                frequencies = quantised_frequencies(logits[torch.from_numpy(rows).to(logits.device)], True)
                symbols = decoder.decode(family, frequencies / scale).astype(np.int64)
                column[rows] = np.where(symbols == tokens.NUM_BYTES, tokens.EOS_ID, symbols)
                kinds[rows[symbols == tokens.NUM_BYTES]] = BOS_NEXT
            return column

        _run_block(model, len(extents), int(extents.max()), feed)
        stream = block[(block < tokens.NUM_BYTES) | (block == tokens.EOS_ID)]  # window by window, in order
        for piece in np.split(stream, np.flatnonzero(stream == tokens.EOS_ID)):
            if len(piece) and piece[0] == tokens.EOS_ID:  # a document ended: the separator, unless it was the last
                ended += 1
                if ended > header.documents:
                    raise CompressedFileError(f"{name}: damaged .bmz file (more documents than its header says)")
                write(header.separator if ended < header.documents else b"")
                piece = piece[1:]
            write(piece.astype(np.uint8).tobytes())
            advance(len(piece))


def _decompress_stream(model, source: BinaryIO, name: str, out: BinaryIO, progress: bool,
                       restore: Restore | None) -> None:
    """Decode the ``.bmz`` stream ``source`` into ``out``; raises ``CompressedFileError`` unless what was written
    is exactly the original (its SHA-256 checked at the end: the caller must not publish ``out`` before)."""
    header = read_header(source, name)
    if header.weights != bytes.fromhex(weights_sha256(model))[:HASH_BYTES["weights"]]:
        raise CompressedFileError(f"{name}: compressed with another model (its weights differ from this one's); "
                                  "pass the --model it was made with")
    if header.codec is not None:
        if restore is None:
            raise CompressedFileError(f"{name}: went through the {header.codec['name']!r} codec; restore it with "
                                      "`bytemodels decompress`, which knows the model's codec")
        if header.length > MAX_CODEC_BYTES:
            raise CompressedFileError(f"{name}: damaged .bmz file (a codec form of {header.length:,} bytes)")
    try:
        _check_framing(model, header.layout, header.tag, header.record_size, header.batch_size, header.separator)
    except ValueError as error:
        raise CompressedFileError(f"{name}: damaged .bmz file ({error})") from None
    with _evaluating(model), _threads(header.threads):
        if _probe(model) != header.probe:
            raise CompressedFileError(
                f"{name}: this setup computes other probabilities than the compressor's (made with torch "
                f"{header.setup}, {header.threads} threads; here torch {_setup(model)}): decompress it on the machine "
                "and torch that made it")
        digest = hashlib.sha256()
        payload = io.BytesIO() if header.codec is not None else None

        def write(data: bytes) -> None:
            (out if payload is None else payload).write(data)
            if payload is None:
                digest.update(data)

        decode = _decode_documents if header.separator is not None else _decode_layout
        with _progress(header.length, progress, "decompress") as bar:
            decode(model, header, source, name, write, bar.update)
        check_end(source, name)
        if payload is not None:
            try:
                restored = restore(payload.getvalue(), header.codec)
            except CompressedFileError as error:
                raise CompressedFileError(f"{name}: {error}") from None
            except (ValueError, OSError) as error:
                raise CompressedFileError(f"{name}: the {header.codec['name']!r} codec cannot restore the decoded "
                                          f"data ({error}); damaged file or another setup") from None
            digest.update(restored)
            out.write(restored)
        if digest.digest()[:HASH_BYTES["sha256"]] != header.sha256:
            raise CompressedFileError(f"{name}: the decoded data does not match the original's SHA-256 "
                                      "(damaged file or another setup); nothing was written")


def compress(model, data: bytes, *, layout: str = "packed", tag: int | None = None, record_size: int = 0,
             separator: bytes | None = None, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> bytes:
    """``data`` losslessly compressed under ``model``'s next-byte probabilities: a ``.bmz`` blob.

    Frame it as the model was trained: ``layout`` ``"packed"`` (text) or ``"records"`` (clips, images: records of
    ``record_size`` bytes, 0 for one record), with the codec's ``tag`` index if it had one. ``separator``: the
    bytes between documents in ``data`` (packed layout; e.g. the TinyStories files' ``b"\\n<|endoftext|>\\n"``):
    each document is then coded as one in training, its end as the model's end of document, which costs far less
    than the separator's bytes. ``batch_size`` windows are coded at once. Decompress with the same model (its
    weights hash is checked) on the same torch, device and thread count."""
    data = bytes(data)
    out = io.BytesIO()
    _compress_array(model, np.frombuffer(data, dtype=np.uint8), hashlib.sha256(data).digest(), out, layout=layout,
                    tag=tag, record_size=record_size, separator=separator, batch_size=batch_size, codec=None,
                    progress=progress)
    return out.getvalue()


def decompress(model, blob: bytes, *, progress: bool = False, restore: Restore | None = None) -> bytes:
    """The original bytes of a ``.bmz`` blob made by :func:`compress` with this ``model``. Raises
    ``CompressedFileError`` (one line) for a damaged or foreign blob, another model, or a setup that does not
    reproduce the compressor's probabilities. ``restore``: for a blob that went through a codec (made by
    ``bytemodels compress``), what turns the codec's bytes back into the file."""
    out = io.BytesIO()
    _decompress_stream(model, io.BytesIO(bytes(blob)), "the .bmz data", out, progress, restore)
    return out.getvalue()


def compress_file(model, source: str | Path, output: BinaryIO, *, layout: str = "packed", tag: int | None = None,
                  record_size: int = 0, separator: bytes | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                  progress: bool = False, codec_form: tuple[bytes, dict[str, str]] | None = None) -> float:
    """Compress the file ``source`` into the open binary ``output``, streaming from a memory map (memory: one
    block of windows; with a ``separator``, the file's documents are held in memory). ``codec_form``: the bytes a
    codec makes of the file and the codec's record, coded instead of the file's bytes (the caller has checked they
    restore it exactly). Returns the ideal coded size in bits."""
    source = Path(source)
    sha256 = bytes.fromhex(file_sha256(source))
    options = dict(layout=layout, tag=tag, record_size=record_size, separator=separator, batch_size=batch_size,
                   progress=progress)
    if codec_form is not None:
        form, record = codec_form
        return _compress_array(model, np.frombuffer(form, dtype=np.uint8), sha256, output, codec=record, **options)
    if not source.stat().st_size:  # an empty file cannot be mapped
        return _compress_array(model, np.zeros(0, np.uint8), sha256, output, codec=None, **options)
    data = np.memmap(source, dtype=np.uint8, mode="r")
    try:
        bits = _compress_array(model, data, sha256, output, codec=None, **options)
    finally:
        del data
    if bytes.fromhex(file_sha256(source)) != sha256:
        raise CompressedFileError(f"{source}: the file changed while being compressed; try again")
    return bits


def decompress_file(model, source: str | Path, output: str | Path | None, *, progress: bool = False,
                    write_to: BinaryIO | None = None, restore: Restore | None = None) -> None:
    """Decompress the ``.bmz`` file ``source`` to ``output``, written atomically: decoded to a temporary file
    beside it, checked against the original's SHA-256, then renamed into place (nothing is left on a failure).
    With ``write_to`` (a binary stream, e.g. stdout) the checked result is copied there instead."""
    source = Path(source)
    with open(source, "rb") as file:
        if write_to is not None:
            import tempfile

            with tempfile.TemporaryFile() as temporary:
                _decompress_stream(model, file, str(source), temporary, progress, restore)
                temporary.seek(0)
                while block := temporary.read(1 << 20):
                    write_to.write(block)
            return
        with new_file(output) as out:
            _decompress_stream(model, file, str(source), out, progress, restore)


@contextlib.contextmanager
def new_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file written atomically at ``path``: a temporary file beside it, synced, given a new file's usual
    permissions and renamed into place when the block ends without an error (removed otherwise)."""
    from bytemodels.runfolder import atomic_file

    with atomic_file(path) as temporary, open(temporary, "wb") as out:
        yield out
        out.flush()
        os.fsync(out.fileno())
        umask = os.umask(0)  # mkstemp makes 0600 files; a new file gets 0666 under the umask
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
