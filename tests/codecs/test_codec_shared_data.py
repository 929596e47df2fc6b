"""The codecs on the real offline samples in ../shared/data (skipped when the folder is absent)."""

from __future__ import annotations

import numpy as np
import soundfile

from bytecodecs import ImageCodec, TextCodec, WavCodec, iter_folder


def test_fsdd_recording_is_bit_exact_in_pcm16(shared_data) -> None:
    path = shared_data / "audio" / "fsdd" / "recordings" / "0_jackson_0.wav"
    raw, rate = soundfile.read(path, dtype="int16")
    assert rate == 8000
    assert WavCodec(sample_rate=8000, sample_format="pcm16").encode_file(path) == raw.astype("<i2").tobytes()
    mulaw = WavCodec().encode_file(path)
    assert len(mulaw) == len(raw)  # one byte per sample at the file's own rate


def test_fsdd_folder_loads_without_skips(shared_data) -> None:
    folder = shared_data / "audio" / "fsdd" / "recordings"
    files = iter_folder(folder, WavCodec(sample_rate=16000))
    first = [len(data) for _, (path, data) in zip(range(30), files)]
    assert files.skipped_count == 0 and len(first) == 30
    assert all(n > 0 for n in first)


def test_mnist_and_cifar_arrays_are_their_raster_bytes(shared_data) -> None:
    with np.load(shared_data / "images" / "mnist_test.npz") as mnist:
        digits = mnist["images"][:5]
    codec = ImageCodec(width=28, height=28, mode="L")
    assert [codec.encode_array(d) for d in digits] == [d.tobytes() for d in digits]
    np.testing.assert_array_equal(codec.decode_array(codec.encode_array(digits[0])), digits[0])
    with np.load(shared_data / "images" / "cifar10_test_sample5000.npz") as cifar:
        photos = cifar["images"][:5]
    codec = ImageCodec(width=32, height=32, mode="RGB")
    assert [codec.encode_array(p) for p in photos] == [p.tobytes() for p in photos]
    assert codec.decode(codec.encode_array(photos[1])).tobytes() == photos[1].tobytes()


def test_tinystories_text_round_trips(shared_data) -> None:
    path = shared_data / "tinystories" / "valid.txt"
    codec = TextCodec(strict=True)
    text = codec.load(path)
    story = text.split("\n<|endoftext|>\n")[0]
    assert story.startswith("Spot.")
    assert codec.decode(codec.encode(story)) == story
    assert codec.encode(text) == path.read_bytes()
