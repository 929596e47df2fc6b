"""Lossless compression with a trained byte model: bytes in, ``.bmz`` bytes out (and back).

The data is framed as the model was trained (``layout``: one packed document, or records of ``record_size``
bytes, with the codec's ``tag``) and cut into the very windows validation scores
(:func:`bytemodels.data.document_windows`). Each byte is range-coded (``constriction``) under the model's
next-byte distribution in its window, so the coded size is the model's cross-entropy as ``bytemodels eval``
reports it, plus the coder's and the container's few bytes. ``batch_size`` windows form a block: they run through
the cached decoder of generation as one batch, one position at a time, and their bytes go into one coded stream
(position by position, window by window), so a block's coder ends once, not once per window. Blocks are
independent.

Decompression must see the very probabilities the compressor saw. Both sides therefore run the same calls with
the same shapes (the same blocks, one ``logits()`` call per position, the same ids fed), on the thread count the
header records. The logits are turned into integer frequencies deterministically in numpy
(:func:`quantised_frequencies`): every byte keeps a frequency of at least 1, so any byte can be coded. A setup that
computes other logits (another torch, device or CPU kernel) is caught before anything is decoded: the header holds
a hash of the frequencies of a fixed probe sequence; and the original's SHA-256 is checked before the output is
moved into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from bytemodels import tokens
from bytemodels.binary import (HASH_BYTES, MAX_BATCH_SIZE, MAX_RECORD_SIZE, CompressedFileError, Header, check_end,
                               read_block, read_header, write_block, write_header)
from bytemodels.data import LAYOUTS, document_windows
from bytemodels.generate import IncrementalDecoder
from bytemodels.runfolder import file_sha256

DEFAULT_BATCH_SIZE = 32
PRECISION_BITS = 24  # the frequencies sum to 2**24 (constriction's range coder codes at 24-bit precision)
PROBE = bytes((37 * i + 11) % 256 for i in range(24))  # a fixed sequence whose frequencies the header hashes
#: Most bytes a codec's form of a file may take: it is held in memory whole, to check it restores the file.
MAX_CODEC_BYTES = 64 << 20

__all__ = ["CompressedFileError", "compress", "compress_file", "decompress", "decompress_file",
           "quantised_frequencies"]

Restore = Callable[[bytes, dict[str, Any]], bytes]
"""Turns the decoded bytes of a file that went through a codec, and the header's codec record, into the file."""


def quantised_frequencies(logits: torch.Tensor) -> np.ndarray:
    """(batch, 256) integer frequencies of the next byte, each >= 1, every row summing to ``2**PRECISION_BITS``:
    a float64 softmax of the byte logits, floored, the remainder given to the most likely byte. Pure numpy on
    float32 input, so the same logits give the same integers."""
    scores = logits[:, :tokens.NUM_BYTES].detach().to("cpu", torch.float32).numpy().astype(np.float64)
    scores -= scores.max(axis=1, keepdims=True)
    probabilities = np.exp(scores)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    total = 1 << PRECISION_BITS
    frequencies = np.floor(probabilities * (total - tokens.NUM_BYTES)).astype(np.int64) + 1
    rows = np.arange(len(frequencies))
    frequencies[rows, frequencies.argmax(axis=1)] += total - frequencies.sum(axis=1)
    return frequencies


def _coder_model():
    import constriction

    # perfect=False: constriction's fast quantisation, deterministic for identical inputs; ours are exact dyadic
    # fractions, so it keeps them as they are.
    return constriction.stream.model.Categorical(perfect=False)


def _run_block(model, windows: np.ndarray, choose: Callable[[int, np.ndarray, np.ndarray], np.ndarray]) -> None:
    """Run the model over a block of windows (batch, seq_len ids), one position at a time, from no context (as
    validation scores a window). At each position where some windows hold a byte, ``choose(position, rows, frequencies)``
    returns those rows' bytes (the known ones when compressing, the decoded ones when decompressing) and they are
    written into ``windows``; special ids are fed as they are. The one code path both directions share."""
    device = next(model.parameters()).device
    is_byte = windows < tokens.NUM_BYTES
    positions = np.flatnonzero(is_byte.any(axis=0))
    if not len(positions):
        return
    ids = torch.from_numpy(windows[:, :0]).to(device)
    decoder = IncrementalDecoder(model, ids, None, False, windows.shape[1])
    for position in range(int(positions[-1]) + 1):
        logits = decoder.logits()
        rows = np.flatnonzero(is_byte[:, position])
        if len(rows):
            windows[rows, position] = choose(position, rows, quantised_frequencies(logits[torch.from_numpy(rows).to(device)]))
        decoder.append(torch.from_numpy(windows[:, position]).to(device))


def _windows(model, data: np.ndarray, header: Header) -> Iterator[np.ndarray]:
    """Every window of ``data`` (uint8) framed as ``header`` says, in order: one document, or records of
    ``header.record_size`` bytes; generated lazily, so memory holds a window, whatever the length."""
    config = model.config
    size = header.record_size or max(len(data), 1)
    for start in range(0, len(data), size):
        windows = document_windows(data[start:start + size], header.tag, header.layout, config.max_seq_len,
                                   config.patch_size, config.num_tags)
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

    def choose(position: int, rows: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
        digest.update(frequencies.tobytes())
        return window[rows, position]

    _run_block(model, window.copy(), choose)
    return digest.digest()[:HASH_BYTES["probe"]]


def _setup(model) -> str:
    parameter = next(model.parameters())
    return f"{torch.__version__} {parameter.device.type} {str(parameter.dtype).removeprefix('torch.')}"


def _progress(total: int, enabled: bool, what: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=what, disable=not enabled, leave=False)


def _check_framing(model, layout: str, tag: int | None, record_size: int, batch_size: int) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not 0 <= record_size <= MAX_RECORD_SIZE or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"record_size must be in 0..{MAX_RECORD_SIZE} and batch_size in 1..{MAX_BATCH_SIZE}, got "
                         f"{record_size} and {batch_size}")
    if tag is not None:
        tokens.tag_id(tag, model.config.num_tags)  # raises for a tag outside the model's vocabulary


def _compress_array(model, data: np.ndarray, sha256: bytes, out: BinaryIO, *, layout: str, tag: int | None,
                    record_size: int, batch_size: int, codec: dict[str, Any] | None, progress: bool) -> float:
    """Code ``data`` (uint8, e.g. a memory map) into ``out``; returns the ideal coded size in bits (the sum of
    -log2 of each byte's quantised probability)."""
    import constriction

    _check_framing(model, layout, tag, record_size, batch_size)
    with _evaluating(model):
        header = Header(length=len(data), sha256=sha256[:HASH_BYTES["sha256"]], layout=layout, tag=tag,
                        record_size=record_size, batch_size=batch_size, threads=torch.get_num_threads(),
                        weights=bytes.fromhex(weights_sha256(model))[:HASH_BYTES["weights"]], probe=_probe(model),
                        setup=_setup(model), codec=codec)
        write_header(out, header)
        family, bits = _coder_model(), 0.0
        with _progress(len(data), progress, "compress") as bar:
            for block in _blocks(_windows(model, data, header), batch_size):
                encoder = constriction.stream.queue.RangeEncoder()

                def choose(position: int, rows: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
                    nonlocal bits
                    symbols = block[rows, position]
                    chosen = frequencies[np.arange(len(rows)), symbols]
                    bits -= float(np.log2(chosen / float(1 << PRECISION_BITS)).sum())
                    encoder.encode(symbols.astype(np.int32), family, frequencies / float(1 << PRECISION_BITS))
                    return symbols

                _run_block(model, block.copy(), choose)
                write_block(out, _trimmed(encoder.get_compressed()))
                bar.update(int((block < tokens.NUM_BYTES).sum()))
    return bits


def _trimmed(words: np.ndarray) -> bytes:
    """The coder's 32-bit words as little-endian bytes without trailing zero bytes (put back when decoding)."""
    return words.astype("<u4").tobytes().rstrip(b"\0")


def _words(coded: bytes) -> np.ndarray:
    return np.frombuffer(coded + b"\0" * (-len(coded) % 4), dtype="<u4").astype(np.uint32)


def _decompress_stream(model, source: BinaryIO, name: str, out: BinaryIO, progress: bool,
                       restore: Restore | None) -> None:
    """Decode the ``.bmz`` stream ``source`` into ``out``; raises ``CompressedFileError`` unless what was written
    is exactly the original (its SHA-256 checked at the end: the caller must not publish ``out`` before)."""
    import constriction

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
        _check_framing(model, header.layout, header.tag, header.record_size, header.batch_size)
    except ValueError as error:
        raise CompressedFileError(f"{name}: damaged .bmz file ({error})") from None
    with _evaluating(model), _threads(header.threads):
        if _probe(model) != header.probe:
            raise CompressedFileError(
                f"{name}: this setup computes other probabilities than the compressor's (made with torch "
                f"{header.setup}, {header.threads} threads; here torch {_setup(model)}): decompress it on the machine "
                "and torch that made it")
        family, digest = _coder_model(), hashlib.sha256()
        payload = io.BytesIO() if header.codec is not None else None
        layout = np.broadcast_to(np.uint8(0), (header.length,))  # where bytes fall, without memory for them
        with _progress(header.length, progress, "decompress") as bar:
            for index, block in enumerate(_blocks(_windows(model, layout, header), header.batch_size)):
                is_byte = block < tokens.NUM_BYTES
                decoder = constriction.stream.queue.RangeDecoder(_words(read_block(source, name, index,
                                                                                   int(is_byte.sum()))))

                def choose(position: int, rows: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
                    return decoder.decode(family, frequencies / float(1 << PRECISION_BITS)).astype(np.int64)

                _run_block(model, block, choose)
                decoded = block[is_byte].astype(np.uint8).tobytes()  # window by window, in order
                (payload or out).write(decoded)
                if payload is None:
                    digest.update(decoded)
                bar.update(len(decoded))
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
             batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> bytes:
    """``data`` losslessly compressed under ``model``'s next-byte probabilities: a ``.bmz`` blob.

    Frame it as the model was trained: ``layout`` ``"packed"`` (text: one document) or ``"records"`` (clips,
    images: records of ``record_size`` bytes, 0 for one record), with the codec's ``tag`` index if it had one.
    ``batch_size`` windows are coded at once. Decompress with the same model (its weights hash is checked) on the
    same torch, device and thread count."""
    data = bytes(data)
    out = io.BytesIO()
    _compress_array(model, np.frombuffer(data, dtype=np.uint8), hashlib.sha256(data).digest(), out, layout=layout,
                    tag=tag, record_size=record_size, batch_size=batch_size, codec=None, progress=progress)
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
                  record_size: int = 0, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False,
                  codec_form: tuple[bytes, dict[str, Any]] | None = None) -> float:
    """Compress the file ``source`` into the open binary ``output``, streaming from a memory map (memory: one
    block of windows). ``codec_form``: the bytes a codec makes of the file and the codec's record, coded instead
    of the file's bytes (the caller has checked they restore it exactly). Returns the ideal coded size in bits."""
    source = Path(source)
    sha256 = bytes.fromhex(file_sha256(source))
    options = dict(layout=layout, tag=tag, record_size=record_size, batch_size=batch_size, progress=progress)
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
    from bytemodels.runfolder import atomic_file

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
        with atomic_file(output) as temporary, open(temporary, "wb") as out:
            _decompress_stream(model, file, str(source), out, progress, restore)
            out.flush()
            os.fsync(out.fileno())
            usual_file_mode(temporary)


def usual_file_mode(path: str | Path) -> None:
    """Give a temporary file (``mkstemp``: private, 0600) the permissions of a new file under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
