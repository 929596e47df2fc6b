"""Lossless compression with a trained byte model: bytes in, ``.bmz`` bytes out (and back).

The data is cut into chunks of ``chunk_size`` bytes; each chunk is framed like a training document (BOS, then
its bytes) and range-coded (``constriction``) under the model's next-byte distribution, position by position.
``batch_size`` chunks are decoded together, one row each, through the cached decoder of generation
(:class:`bytemodels.generate.WindowedDecoder`, whose window crop keeps memory bounded).

Decompression must see the very probabilities the compressor saw. Both sides therefore run the same calls
with the same shapes: the same batches, one ``logits()`` call per position over the bytes known so far (a
finished row is fed byte 0 on both sides), on the thread count the header records. The logits are turned into
integer frequencies deterministically in numpy (:func:`quantised_frequencies`): every byte keeps a frequency
of at least 1, so any byte can be coded. A setup that computes other logits (another torch, device or CPU
kernel) is caught before anything is written: the header holds a hash of the frequencies of a fixed probe
sequence, and the original's SHA-256, checked before the output is moved into place.
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
from bytemodels.binary import (MAX_BATCH_SIZE, MAX_CHUNK_SIZE, CompressedFileError, check_end, read_chunk, read_header,
                               write_chunk, write_header)
from bytemodels.generate import WindowedDecoder
from bytemodels.runfolder import file_sha256

DEFAULT_CHUNK_SIZE = 4096
DEFAULT_BATCH_SIZE = 4
PRECISION_BITS = 24  # the frequencies sum to 2**24 (constriction's range coder codes at 24-bit precision)
PROBE = bytes((37 * i + 11) % 256 for i in range(24))  # a fixed sequence whose frequencies the header hashes

__all__ = ["CompressedFileError", "compress", "compress_file", "decompress", "decompress_file",
           "quantised_frequencies"]


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


def _drive(model, lengths: list[int], choose: Callable[[int, np.ndarray], np.ndarray]) -> None:
    """Run the model over a batch of chunks of ``lengths`` bytes, one position at a time. ``choose(step,
    frequencies)`` returns the (batch,) bytes at that position (the known ones when compressing, the decoded ones
    when decompressing); rows past their end are fed 0. The one code path both directions share."""
    device = next(model.parameters()).device
    batch, longest = len(lengths), max(lengths)
    ids = torch.full((batch, 1), tokens.BOS_ID, dtype=torch.long, device=device)
    decoder = WindowedDecoder(model, ids, torch.zeros(batch, dtype=torch.long, device=device), False, longest + 1)
    for step in range(longest):
        chosen = choose(step, quantised_frequencies(decoder.logits()))
        decoder.append(torch.from_numpy(chosen.astype(np.int64)).to(device))


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


def weights_sha256(model) -> str:
    """SHA-256 of the model's parameters and buffers (names, dtypes, shapes and values) in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _probe(model) -> str:
    """Hash of the frequencies the model gives the fixed ``PROBE`` sequence through the coding path."""
    digest = hashlib.sha256()

    def choose(step: int, frequencies: np.ndarray) -> np.ndarray:
        digest.update(frequencies.tobytes())
        return np.array([PROBE[step]])

    _drive(model, [len(PROBE)], choose)
    return digest.hexdigest()[:32]


def _setup(model) -> dict[str, Any]:
    """What decoding needs to reproduce the probabilities: recorded by the compressor, checked on decoding."""
    parameter = next(model.parameters())
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": parameter.device.type,
            "dtype": str(parameter.dtype).removeprefix("torch."), "probe": _probe(model)}


def _progress(total: int, enabled: bool, what: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=what, disable=not enabled, leave=False)


def _compress_stream(model, read: Callable[[int], bytes], length: int, sha256: str, out: BinaryIO,
                     chunk_size: int, batch_size: int, progress: bool) -> str:
    """Code ``length`` bytes from ``read`` into ``out``; returns the SHA-256 of what was read (the caller checks
    it against ``sha256``, the header's, for a file that changed meanwhile)."""
    import constriction

    if not 1 <= chunk_size <= MAX_CHUNK_SIZE or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE} and batch_size in 1..{MAX_BATCH_SIZE}, got "
                         f"{chunk_size} and {batch_size}")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            header = {"format": "bmz", "codec": "none", "codec_options": {}, "length": length, "sha256": sha256,
                      "chunk_size": chunk_size, "batch_size": batch_size, "precision_bits": PRECISION_BITS,
                      "model": {"weights_sha256": weights_sha256(model), "vocab_size": model.config.vocab_size},
                      "setup": _setup(model)}
            write_header(out, header)
            family, digest, remaining = _coder_model(), hashlib.sha256(), length
            with _progress(length, progress, "compress") as bar:
                while remaining:
                    block = read(min(remaining, chunk_size * batch_size))
                    if not block:
                        raise CompressedFileError(f"the input ended {remaining:,} bytes early (it changed while "
                                                  "being compressed)")
                    remaining -= len(block)
                    digest.update(block)
                    chunks = [block[i:i + chunk_size] for i in range(0, len(block), chunk_size)]
                    if remaining and len(chunks[-1]) < chunk_size:  # a short read: finish the chunk first
                        rest = read(min(remaining, chunk_size - len(chunks[-1])))
                        remaining -= len(rest)
                        digest.update(rest)
                        chunks[-1] += rest
                    encoders = [constriction.stream.queue.RangeEncoder() for _ in chunks]
                    symbols = np.zeros((len(chunks), max(map(len, chunks))), dtype=np.int32)
                    for row, chunk in enumerate(chunks):
                        symbols[row, :len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)

                    def choose(step: int, frequencies: np.ndarray) -> np.ndarray:
                        probabilities = frequencies / float(1 << PRECISION_BITS)
                        for row, chunk in enumerate(chunks):
                            if step < len(chunk):
                                encoders[row].encode(symbols[row, step:step + 1], family,
                                                     probabilities[row:row + 1])
                        return symbols[:, step]

                    _drive(model, [len(chunk) for chunk in chunks], choose)
                    for chunk, encoder in zip(chunks, encoders):
                        write_chunk(out, chunk, encoder.get_compressed().astype("<u4").tobytes())
                    bar.update(len(block))
        return digest.hexdigest()
    finally:
        model.train(was_training)


def _decompress_stream(model, source: BinaryIO, name: str, out: BinaryIO, progress: bool) -> None:
    """Decode the ``.bmz`` stream ``source`` into ``out``; raises ``CompressedFileError`` unless what was written
    is exactly the original (its SHA-256 checked at the end: the caller must not publish ``out`` before)."""
    import constriction

    header = read_header(source, name)
    model_info, setup = header.get("model") or {}, header.get("setup") or {}
    if model_info.get("weights_sha256") != weights_sha256(model):
        raise CompressedFileError(f"{name}: compressed with another model (its weights differ from this one's); "
                                  "pass the --model it was made with")
    length, chunk_size, batch_size = header["length"], header["chunk_size"], header["batch_size"]
    threads = setup.get("threads")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _threads(threads if isinstance(threads, int) and threads > 0
                                               else torch.get_num_threads()):
            if _probe(model) != setup.get("probe"):
                raise CompressedFileError(
                    f"{name}: this setup computes other probabilities than the compressor's (made with torch "
                    f"{setup.get('torch')} on {setup.get('device')}, {setup.get('threads')} threads; here torch "
                    f"{torch.__version__} on {next(model.parameters()).device.type}): decompress it on the machine and torch that made it")
            family, digest = _coder_model(), hashlib.sha256()
            index, position = 0, 0
            with _progress(length, progress, "decompress") as bar:
                while position < length:
                    lengths = []
                    while position + sum(lengths) < length and len(lengths) < batch_size:
                        lengths.append(min(chunk_size, length - position - sum(lengths)))
                    records = [read_chunk(source, name, index + row, size) for row, size in enumerate(lengths)]
                    decoders = [constriction.stream.queue.RangeDecoder(np.frombuffer(coded, dtype="<u4")
                                                                       .astype(np.uint32)) for coded, _ in records]
                    # Grown byte by byte: memory follows the decoding done, not the lengths a header claims.
                    decoded = [bytearray() for _ in lengths]

                    def choose(step: int, frequencies: np.ndarray) -> np.ndarray:
                        probabilities = frequencies / float(1 << PRECISION_BITS)
                        chosen = np.zeros(len(lengths), dtype=np.int64)
                        for row, size in enumerate(lengths):
                            if step < size:
                                chosen[row] = decoders[row].decode(family, probabilities[row:row + 1])[0]
                                decoded[row].append(int(chosen[row]))
                        return chosen

                    _drive(model, lengths, choose)
                    for row, ((_, crc), size) in enumerate(zip(records, lengths)):
                        chunk = bytes(decoded[row])
                        if _crc32(chunk) != crc:
                            raise CompressedFileError(f"{name}: damaged .bmz file (chunk {index + row} does not "
                                                      "decode to its checksum)")
                        digest.update(chunk)
                        out.write(chunk)
                    index += len(lengths)
                    position += sum(lengths)
                    bar.update(sum(lengths))
            check_end(source, name)
            if digest.hexdigest() != header.get("sha256"):
                raise CompressedFileError(f"{name}: the decoded data does not match the original's SHA-256 "
                                          "(damaged file or another setup); nothing was written")
    finally:
        model.train(was_training)


def _crc32(data: bytes) -> int:
    import zlib

    return zlib.crc32(data)


def compress(model, data: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE, batch_size: int = DEFAULT_BATCH_SIZE,
             progress: bool = False) -> bytes:
    """``data`` losslessly compressed under ``model``'s next-byte probabilities: a ``.bmz`` blob.

    ``chunk_size`` bytes are coded per independent chunk, ``batch_size`` chunks at once. Decompress with the
    same model (its weights hash is checked) on the same torch, device and thread count."""
    data = bytes(data)
    out = io.BytesIO()
    _compress_stream(model, io.BytesIO(data).read, len(data), hashlib.sha256(data).hexdigest(), out, chunk_size,
                     batch_size, progress)
    return out.getvalue()


def decompress(model, blob: bytes, *, progress: bool = False) -> bytes:
    """The original bytes of a ``.bmz`` blob made by :func:`compress` with this ``model``. Raises
    ``CompressedFileError`` (one line) for a damaged or foreign blob, another model, or a setup that does not
    reproduce the compressor's probabilities."""
    out = io.BytesIO()
    _decompress_stream(model, io.BytesIO(bytes(blob)), "the .bmz data", out, progress)
    return out.getvalue()


def compress_file(model, source: str | Path, output: BinaryIO, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> int:
    """Compress the file ``source`` into the open binary ``output``, streaming (memory: one batch of chunks).
    Returns the original's length."""
    source = Path(source)
    length, sha256 = source.stat().st_size, file_sha256(source)  # the header needs both before the first chunk
    with open(source, "rb") as file:
        read_sha = _compress_stream(model, file.read, length, sha256, output, chunk_size, batch_size, progress)
        if read_sha != sha256 or file.read(1):
            raise CompressedFileError(f"{source}: the file changed while being compressed; try again")
    return length


def decompress_file(model, source: str | Path, output: str | Path | None, *, progress: bool = False,
                    write_to: BinaryIO | None = None) -> None:
    """Decompress the ``.bmz`` file ``source`` to ``output``, written atomically: decoded to a temporary file
    beside it, checked against the original's SHA-256, then renamed into place (nothing is left on a failure).
    With ``write_to`` (a binary stream, e.g. stdout) the checked result is copied there instead."""
    from bytemodels.runfolder import atomic_file

    source = Path(source)
    with open(source, "rb") as file:
        if write_to is not None:
            import tempfile

            with tempfile.TemporaryFile() as temporary:
                _decompress_stream(model, file, str(source), temporary, progress)
                temporary.seek(0)
                while block := temporary.read(1 << 20):
                    write_to.write(block)
            return
        with atomic_file(output) as temporary, open(temporary, "wb") as out:
            _decompress_stream(model, file, str(source), out, progress)
            out.flush()
            os.fsync(out.fileno())
            usual_file_mode(temporary)


def usual_file_mode(path: str | Path) -> None:
    """Give a temporary file (``mkstemp``: private, 0600) the permissions of a new file under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
