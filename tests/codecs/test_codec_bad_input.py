"""Every bad input of the issue gives one clear CodecError naming the file, and nothing else."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from bytecodecs import CodecError, ImageCodec, TextCodec, WavCodec

CODECS = [TextCodec(), WavCodec(), ImageCodec()]


def good_wav_bytes(frames: int = 4000) -> bytes:
    buffer = io.BytesIO()
    samples = np.random.default_rng(1).integers(-3000, 3000, frames, dtype=np.int16)
    soundfile.write(buffer, samples, 8000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def noisy_png_bytes(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(2).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_png_header_bytes(width: int = 50000, height: int = 50000) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with almost no data behind it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b""))


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_codec_error(codec, path: Path, reason: str) -> CodecError:
    with pytest.raises(CodecError) as caught:
        codec.load(path)
    error = caught.value
    assert str(path) in str(error), "the message names the file"
    assert error.path == path
    assert reason in error.reason
    assert "\n" not in str(error)
    return error


def test_corrupt_wav(tmp_path) -> None:
    good = good_wav_bytes()
    garbage = np.random.default_rng(3).integers(0, 256, 200, dtype=np.uint8).tobytes()
    corrupt = write(tmp_path, "corrupt.wav", good[:12] + garbage)
    assert_codec_error(WavCodec(), corrupt, "is not a readable audio file")
    no_data = write(tmp_path, "nodata.wav", good[:30])
    assert_codec_error(WavCodec(), no_data, "is not a readable audio file")


def test_truncated_wav(tmp_path) -> None:
    good = good_wav_bytes()
    truncated = write(tmp_path, "truncated.wav", good[: len(good) // 2])
    assert_codec_error(WavCodec(), truncated, "is truncated")
    odd_cut = write(tmp_path, "odd.wav", good[:1001])
    assert_codec_error(WavCodec(), odd_cut, "is truncated")
    assert WavCodec().load(write(tmp_path, "whole.wav", good)).samples.shape == (4000,)


def test_wav_with_zero_frames(tmp_path) -> None:
    path = tmp_path / "silent.wav"
    soundfile.write(path, np.zeros(0, dtype=np.int16), 8000, subtype="PCM_16")
    assert_codec_error(WavCodec(), path, "zero audio frames")


def test_truncated_png(tmp_path) -> None:
    data = noisy_png_bytes()
    path = write(tmp_path, "truncated.png", data[: len(data) // 2])
    assert_codec_error(ImageCodec(), path, "is not a readable image")


def test_file_that_is_not_an_image(tmp_path) -> None:
    path = write(tmp_path, "photo.png", b"this is a text file, not a picture\n")
    assert_codec_error(ImageCodec(), path, "is not an image")


def test_decompression_bomb_header_is_refused(tmp_path) -> None:
    assert Image.MAX_IMAGE_PIXELS is not None  # the guard is on
    path = write(tmp_path, "bomb.png", huge_png_header_bytes())
    error = assert_codec_error(ImageCodec(), path, "too large to decode safely")
    assert "2500000000" in str(error)
    # between the limit and twice it Pillow only warns: refused as well
    side = int((Image.MAX_IMAGE_PIXELS * 1.5) ** 0.5)
    warned = write(tmp_path, "big.png", huge_png_header_bytes(side, side))
    assert_codec_error(ImageCodec(), warned, "too large to decode safely")


def test_non_utf8_text_with_strict(tmp_path) -> None:
    path = write(tmp_path, "latin1.txt", "café\n".encode("latin-1"))
    assert_codec_error(TextCodec(strict=True), path, "is not valid UTF-8 at byte 3")
    assert TextCodec().load(path) == "caf\ufffd\n"  # not strict: replaced, no error


@pytest.mark.parametrize("codec", CODECS, ids=lambda codec: codec.name)
def test_empty_file(tmp_path, codec) -> None:
    path = write(tmp_path, "empty" + codec.extension, b"")
    if isinstance(codec, TextCodec):  # the empty string is text, and saving it writes an empty file
        assert codec.load(path) == "" and codec.load(codec.save("", tmp_path / "saved.txt")) == ""
        return
    assert_codec_error(codec, path, "is empty")


@pytest.mark.parametrize("codec", CODECS, ids=lambda codec: codec.name)
def test_directory(tmp_path, codec) -> None:
    folder = tmp_path / ("folder" + codec.extension)
    folder.mkdir()
    assert_codec_error(codec, folder, "is a directory")


@pytest.mark.parametrize("codec", CODECS, ids=lambda codec: codec.name)
def test_missing_path(tmp_path, codec) -> None:
    assert_codec_error(codec, tmp_path / ("missing" + codec.extension), "no such file")


@pytest.mark.parametrize("codec", CODECS, ids=lambda codec: codec.name)
def test_encode_file_names_the_file_too(tmp_path, codec) -> None:
    with pytest.raises(CodecError, match="missing"):
        codec.encode_file(tmp_path / "missing.bin")


def test_codec_error_is_a_value_error_with_one_sentence() -> None:
    error = CodecError("is empty", "data/a.wav")
    assert isinstance(error, ValueError)
    assert str(error) == "data/a.wav: is empty"
    assert str(CodecError("bad option")) == "bad option"
