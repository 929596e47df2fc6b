"""Image codec: exact raster round trips, crop and pad, header, truncated payloads, arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import bytecodecs
from bytecodecs import CodecError, ImageCodec

RNG = np.random.default_rng(0)


def random_image(width: int, height: int, mode: str) -> Image.Image:
    shape = (height, width) if mode == "L" else (height, width, 3)
    return Image.fromarray(RNG.integers(0, 256, size=shape, dtype=np.uint8), mode=mode)


@pytest.mark.parametrize("mode, channels", [("RGB", 3), ("L", 1)])
def test_round_trip_is_exact_at_the_target_size(tmp_path, mode: str, channels: int) -> None:
    codec = ImageCodec(width=20, height=12, mode=mode)
    image = random_image(20, 12, mode)
    data = codec.encode(image)
    assert data == image.tobytes() and len(data) == 20 * 12 * channels
    assert codec.framing == bytecodecs.Framing(record_size=20 * 12 * channels, align=20 * channels)
    decoded = codec.decode(data)
    assert decoded.mode == mode and decoded.size == (20, 12)
    assert decoded.tobytes() == image.tobytes()
    path = codec.write_bytes(data, tmp_path / "sample")
    assert path.name == "sample.png"
    assert codec.encode_file(path) == data  # PNG is lossless


def test_bytes_are_rows_top_to_bottom_with_channels_interleaved() -> None:
    array = np.zeros((2, 3, 3), dtype=np.uint8)
    array[0, 1] = (10, 20, 30)  # row 0, column 1
    array[1, 0] = (40, 50, 60)  # row 1, column 0
    data = ImageCodec(width=3, height=2).encode_array(array)
    assert data[3:6] == bytes([10, 20, 30]) and data[9:12] == bytes([40, 50, 60])


def test_center_crop_keeps_the_middle() -> None:
    stripes = np.zeros((32, 96, 3), dtype=np.uint8)
    stripes[:, :32] = (255, 0, 0)
    stripes[:, 32:64] = (0, 255, 0)
    stripes[:, 64:] = (0, 0, 255)
    decoded = ImageCodec(width=32, height=32, fit="crop").decode_array(
        ImageCodec(width=32, height=32, fit="crop").encode(Image.fromarray(stripes)))
    assert np.all(decoded == (0, 255, 0))


def test_pad_keeps_everything_and_fills_the_rest() -> None:
    codec = ImageCodec(width=32, height=32, mode="L", fit="pad", fill=7)
    wide = Image.new("L", (64, 32), 200)  # scaled to 32x16, centered: 8 rows of fill above and below
    decoded = codec.decode_array(codec.encode(wide))
    assert np.all(decoded[:8] == 7) and np.all(decoded[-8:] == 7)
    assert np.all(decoded[8:24] == 200)


def test_resize_and_mode_conversion() -> None:
    codec = ImageCodec(width=8, height=8, mode="L")
    data = codec.encode(Image.new("RGB", (100, 50), (255, 255, 255)))
    assert data == bytes([255]) * 64
    sixteen_bit = Image.fromarray(np.array([[0, 256, 32768, 65535]], dtype=np.uint16))
    assert ImageCodec(width=4, height=1, mode="L").encode(sixteen_bit) == bytes([0, 1, 128, 255])
    transparent = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert ImageCodec(width=8, height=8, fill=9).encode(transparent) == bytes([9]) * 192


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 3 * 6 * 5), st.sampled_from(["RGB", "L"]))
def test_short_payload_decodes_with_missing_pixels_filled(cut: int, mode: str) -> None:
    codec = ImageCodec(width=6, height=5, mode=mode, fill=17)
    data = codec.encode(random_image(6, 5, mode))
    decoded = codec.decode(data[:cut])
    assert decoded.size == (6, 5)
    raster = decoded.tobytes()
    assert raster[:cut] == data[:cut]
    assert raster[cut:] == bytes([17]) * (len(data) - min(cut, len(data)))


def test_long_payload_is_cut_to_one_image() -> None:
    codec = ImageCodec(width=2, height=2, mode="L")
    assert codec.decode(bytes(range(10))).tobytes() == bytes(range(4))


def test_fixed_size_header() -> None:
    codec = ImageCodec(width=4, height=3, mode="RGB", header=True)
    image = random_image(4, 3, "RGB")
    data = codec.encode(image)
    assert data[:5] == bytes([4, 0, 3, 0, 3]) and data[5:] == image.tobytes()
    assert codec.framing == bytecodecs.Framing(record_size=5 + 36, align=1)
    assert codec.decode(data).tobytes() == image.tobytes()


def test_keep_fit_stores_each_image_at_its_own_size() -> None:
    codec = ImageCodec(width=32, height=32, mode="L", fit="keep", header=True)
    assert codec.framing.record_size is None
    small = random_image(20, 10, "L")
    data = codec.encode(small)
    assert data[:5] == bytes([20, 0, 10, 0, 1]) and len(data) == 5 + 200
    assert codec.decode(data).tobytes() == small.tobytes()
    big = codec.decode(codec.encode(Image.new("L", (128, 32), 90)))
    assert big.size == (32, 8)  # shrunk into the 32x32 box, aspect kept
    with pytest.raises(CodecError, match="needs header=True"):
        ImageCodec(fit="keep")


@given(st.binary(max_size=40))
def test_any_generated_payload_decodes_in_bounds(data: bytes) -> None:
    codec = ImageCodec(width=5, height=4, mode="L", fit="keep", header=True)
    image = codec.decode(data)
    assert 1 <= image.width <= 5 and 1 <= image.height <= 4


def test_encode_array_matches_encode_and_checks_input() -> None:
    codec = ImageCodec(width=28, height=28, mode="L")
    digits = RNG.integers(0, 256, size=(28, 28), dtype=np.uint8)
    assert codec.encode_array(digits) == digits.tobytes() == codec.encode(Image.fromarray(digits))
    assert codec.encode_array(digits[:, :, None]) == digits.tobytes()
    bigger = RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    assert codec.encode_array(bigger) == codec.encode(Image.fromarray(bigger))
    with pytest.raises(CodecError, match="uint8"):
        codec.encode_array(digits.astype(np.float32))
    with pytest.raises(CodecError, match="shape"):
        codec.encode_array(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(CodecError, match="PIL images"):
        codec.encode("digit.png")


def test_options_are_checked_and_recorded() -> None:
    codec = bytecodecs.get_codec("image", width=28, height=28, mode="L")
    assert codec.config() == {"name": "image", "width": 28, "height": 28, "mode": "L",
                              "fit": "crop", "header": False, "fill": 0}
    assert bytecodecs.codec_from_config(codec.config()) == codec
    assert (codec.tag, codec.modality, codec.framing.record_size, codec.framing.align) == (2, "image", 784, 28)
    for bad in (dict(mode="CMYK"), dict(fit="stretch"), dict(width=0), dict(fill=300)):
        with pytest.raises(CodecError, match=next(iter(bad))):
            ImageCodec(**bad)
