"""Fault injection: codec options and file headers that claim absurd sizes are refused in one line, before any
memory is spent on them (a 1 Hz WAV, a 65535 x 65535 image codec, a huge payload to decode)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import soundfile

import bytecodecs
from bytecodecs import CodecError
from bytecodecs import wav as wav_module
from bytecodecs.image import ImageCodec
from bytecodecs.wav import Audio, WavCodec

ADDRESS_SPACE = 1 << 30
"""Virtual memory of the subprocesses below: Python, numpy, soxr and soundfile take about 150 MiB of it."""


def run_bounded(script: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh Python whose address space is capped at ``ADDRESS_SPACE``."""
    prelude = f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE}, {ADDRESS_SPACE}))\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=120)


def write_wav(path: Path, frames: int, rate: int) -> Path:
    samples = (np.sin(np.arange(frames) / 3.0) * 10000).astype(np.int16)
    soundfile.write(path, samples, rate, subtype="PCM_16")
    return path


# -- audio -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [1, 99, 768_001, 10**9])
def test_a_codec_rate_outside_the_range_is_one_line_naming_the_option(rate):
    with pytest.raises(CodecError, match=r"^wav codec: sample_rate=\d+ must be an integer in 100\.\.768000 \(Hz\)$"):
        WavCodec(sample_rate=rate)
    with pytest.raises(CodecError, match="sample_rate"):
        bytecodecs.codec_from_config({"name": "wav", "sample_rate": rate})


@pytest.mark.parametrize("rate", [100, 8000, 768_000])
def test_rates_at_the_ends_of_the_range_are_accepted(rate):
    assert WavCodec(sample_rate=rate).sample_rate == rate


def test_a_1_hz_wav_fails_fast_naming_the_file_within_bounded_memory(tmp_path):
    # 100,000 frames (200 KB) at 1 Hz: resampled to 8 kHz they were 800 million samples (3.2 GB of float32).
    bad = write_wav(tmp_path / "one_hertz.wav", 100_000, 1)
    good = write_wav(tmp_path / "tone.wav", 16_000, 16_000)
    result = run_bounded(f"""
        from bytecodecs import CodecError
        from bytecodecs.wav import WavCodec
        codec = WavCodec(sample_rate=8000)
        print("good", len(codec.encode_file({str(good)!r})))
        try:
            codec.encode_file({str(bad)!r})
        except CodecError as error:
            print("refused:", error)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "good 8000"  # one second at 16 kHz is 8,000 mu-law bytes at 8 kHz
    assert lines[1] == f"refused: {bad}: audio sample rate 1 Hz is outside 100..768000 Hz (a broken header?)"


def test_a_resampled_clip_over_the_cap_is_refused_before_resampling(tmp_path):
    # 100 Hz is a valid rate, but 40,000 frames of it at 768 kHz would be 307 million samples (1.2 GB).
    clip = write_wav(tmp_path / "low.wav", 40_000, 100)
    result = run_bounded(f"""
        from bytecodecs import CodecError
        from bytecodecs.wav import WavCodec
        try:
            WavCodec(sample_rate=768000).encode_file({str(clip)!r})
        except CodecError as error:
            print("refused:", error)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"refused: {clip}: audio of 40,000 frames at 100 Hz becomes 307,200,000 samples")
    assert "over the limit of 268,435,456" in result.stdout


def test_the_cap_is_checked_from_frames_and_ratio_not_after_resampling(monkeypatch):
    monkeypatch.setattr(wav_module, "MAX_RESAMPLED_SAMPLES", 1000, raising=False)
    codec = WavCodec(sample_rate=16000, channels=2, sample_format="pcm16")
    assert len(codec.encode(Audio(np.zeros(250, np.float32), 8000))) == 500 * 4  # 1,000 samples: at the cap

    def no_resampling(*args, **kwargs):
        raise AssertionError("resampled before checking the cap")

    monkeypatch.setattr(wav_module.soxr, "resample", no_resampling)
    with pytest.raises(CodecError, match="becomes 1,004 samples .* over the limit of 1,000"):
        codec.encode(Audio(np.zeros(251, np.float32), 8000))


# -- images ------------------------------------------------------------------------------------------------
def test_an_image_codec_over_the_record_limit_is_one_line_naming_the_options():
    message = r"^image codec: width=65535 x height=65535 x 3 channel\(s\) \(RGB\) is 12,884,508,675 bytes per image"
    with pytest.raises(CodecError, match=message):
        ImageCodec(width=65535, height=65535)
    with pytest.raises(CodecError, match="width=65535 x height=65535"):
        bytecodecs.codec_from_config({"name": "image", "width": 65535, "height": 65535, "mode": "L"})
    assert ImageCodec(width=4096, height=4096).framing.record_size == 4096 * 4096 * 3
    assert ImageCodec(width=8192, height=8192, mode="L").framing.record_size == 1 << 26  # the limit itself ...
    with pytest.raises(CodecError, match="over the limit of 67,108,864; lower width or height"):
        ImageCodec(width=8192, height=8193, mode="L")  # ... and one row more


@pytest.mark.parametrize("options", [dict(), dict(header=True), dict(header=True, fit="keep")])
def test_decoding_a_long_payload_allocates_one_record_not_the_payload(options):
    codec = ImageCodec(width=4, height=4, mode="L", **options)
    payload = bytearray(range(256)) * 200_000  # 51 MB of model output for a 16-byte image
    tracemalloc.start()
    try:
        image = codec.decode(payload)
        array = codec.decode_array(memoryview(payload))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.size == (4, 4) or options.get("fit") == "keep"
    assert array.size <= 16
    assert peak < 1 << 20, f"decoding allocated {peak:,} bytes"


# -- text files of any size are encoded a piece at a time ---------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=120).map(str.encode)),
       chunk=st.integers(1, 17), normalize=st.sampled_from([None, "NFC", "NFD", "NFKC", "NFKD"]))
def test_text_chunks_join_to_the_whole_encoding(tmp_path, data, chunk, normalize):
    from bytecodecs import TextCodec

    path = tmp_path / "any.txt"
    path.write_bytes(data)
    codec = TextCodec(normalize=normalize)
    assert b"".join(codec.encode_file_chunks(path, chunk)) == codec.encode_file(path)


def test_a_strict_text_codec_names_the_bad_byte_across_pieces(tmp_path):
    from bytecodecs import CodecError, TextCodec

    path = tmp_path / "bad.txt"
    path.write_bytes("é".encode() * 10 + b"\xff" + b"abc")
    with pytest.raises(CodecError, match="at byte 20") as whole:
        TextCodec(strict=True).encode_file(path)
    with pytest.raises(CodecError, match="at byte 20") as pieces:
        list(TextCodec(strict=True).encode_file_chunks(path, 3))
    assert str(pieces.value) == str(whole.value)


def test_a_large_text_file_is_encoded_in_bounded_memory(tmp_path):
    import tracemalloc

    from bytecodecs import TextCodec

    path = tmp_path / "large.txt"
    line = "Once upon a time, there was a little girl named Lily. ".encode() * 4 + b"\n"
    with open(path, "wb") as file:
        for _ in range(32 << 20 // len(line)):  # 32 MiB
            file.write(line)
    tracemalloc.start()
    try:
        total = sum(len(piece) for piece in TextCodec(normalize="NFC").encode_file_chunks(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == path.stat().st_size
    assert peak < 16 << 20, f"peak {peak:,} bytes for a {total:,}-byte file"
