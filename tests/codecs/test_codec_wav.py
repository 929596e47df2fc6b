"""WAV codec: bit-exact 16-bit PCM, mu-law within its step, conversions, truncated payloads."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import bytecodecs
from bytecodecs import Audio, CodecError, WavCodec
from bytecodecs.mulaw import mulaw_decode, mulaw_encode

RNG = np.random.default_rng(0)


def random_int16(frames: int, channels: int = 1) -> np.ndarray:
    shape = (frames,) if channels == 1 else (frames, channels)
    return RNG.integers(-32768, 32768, size=shape, dtype=np.int16)


def test_pcm16_file_round_trip_is_bit_exact(tmp_path) -> None:
    samples = random_int16(4001)
    samples[:3] = [-32768, 32767, 0]  # the extremes too
    source = tmp_path / "source.wav"
    soundfile.write(source, samples, 8000, subtype="PCM_16")
    codec = WavCodec(sample_rate=8000, sample_format="pcm16")

    data = codec.encode_file(source)
    assert data == samples.astype("<i2").tobytes()

    written = codec.write_bytes(data, tmp_path / "again.wav")
    again, rate = soundfile.read(written, dtype="int16")
    assert rate == 8000 and soundfile.info(written).subtype == "PCM_16"
    np.testing.assert_array_equal(again, samples)
    assert codec.encode_file(written) == data


def test_stereo_pcm16_is_interleaved_left_then_right(tmp_path) -> None:
    samples = random_int16(500, channels=2)
    source = tmp_path / "stereo.wav"
    soundfile.write(source, samples, 16000, subtype="PCM_16")
    codec = WavCodec(sample_rate=16000, channels=2, sample_format="pcm16")
    data = codec.encode_file(source)
    assert data == samples.astype("<i2").tobytes()  # row-major (frames, 2): L0 R0 L1 R1 ...
    assert codec.framing == bytecodecs.Framing(record_size=None, align=4)
    decoded = codec.decode(data)
    assert decoded.samples.shape == (500, 2)
    np.testing.assert_array_equal(np.rint(decoded.samples * 32768).astype(np.int16), samples)


def _mulaw_levels() -> np.ndarray:
    return mulaw_decode(np.arange(256, dtype=np.uint8)).astype(np.float64)


@settings(max_examples=50)
@given(arrays(np.float32, st.integers(1, 200), elements=st.floats(-1, 1, width=32)))
def test_mulaw_round_trip_is_within_its_quantisation_step(samples: np.ndarray) -> None:
    codec = WavCodec(sample_format="mulaw")
    data = codec.encode(Audio(samples, 8000))
    assert len(data) == len(samples)
    decoded = codec.decode(data).samples.astype(np.float64)
    levels = _mulaw_levels()
    # Rounding happens in the companded domain, so the decoded level is one of the two levels
    # around the sample (not always the nearer one): the error is within that quantisation step.
    upper = np.clip(np.searchsorted(levels, samples, side="left"), 1, 255)
    step = levels[upper] - levels[upper - 1]
    error = np.abs(decoded - samples)
    assert np.all(error <= step + 1e-6)
    assert np.all(error <= 0.0616)  # the largest mu-law step is about 0.0615


def test_mulaw_levels_are_symmetric_and_cover_the_range() -> None:
    levels = _mulaw_levels()
    assert levels[0] == -1.0 and levels[255] == 1.0
    assert np.all(np.diff(levels) > 0)
    np.testing.assert_allclose(levels, -levels[::-1], atol=1e-7)
    assert levels[128] - levels[127] < 1e-3  # fine steps near silence, the point of mu-law
    assert mulaw_encode(np.array([0.0]))[0] == 128


@given(arrays(np.float32, st.integers(1, 100), elements=st.floats(-1, 1, width=32)))
def test_linear8_round_trip_within_half_a_step(samples: np.ndarray) -> None:
    codec = WavCodec(sample_format="linear8")
    decoded = codec.decode(codec.encode((samples, 8000))).samples
    representable = np.clip(samples, -1.0, 127 / 128)  # unsigned 8-bit tops out one step below 1
    assert np.all(np.abs(decoded - representable) <= 1 / 256 + 1e-6)


def test_odd_length_pcm16_payload_decodes_without_the_cut_sample() -> None:
    codec = WavCodec(sample_format="pcm16")
    data = np.array([1000, -1000, 5], dtype="<i2").tobytes()[:-1]
    decoded = codec.decode(data)
    assert decoded.sample_rate == 8000
    np.testing.assert_array_equal(decoded.samples * 32768, [1000, -1000])
    stereo = WavCodec(channels=2, sample_format="pcm16")
    assert stereo.decode(data).samples.shape == (1, 2)  # 5 bytes: one whole frame, the rest dropped
    assert codec.decode(b"").samples.shape == (0,)


def test_write_bytes_never_raises_on_cut_output(tmp_path) -> None:
    codec = WavCodec(sample_format="pcm16")
    for data in (b"", b"\x01", bytes(range(7))):
        path = codec.write_bytes(data, tmp_path / f"cut{len(data)}")
        assert path.suffix == ".wav"
        assert soundfile.info(path).frames == len(data) // 2


def test_mono_mix_down_and_stereo_duplication() -> None:
    left = np.full(100, 0.5, dtype=np.float32)
    right = np.full(100, -0.25, dtype=np.float32)
    mono = WavCodec(sample_format="pcm16").canonical(Audio(np.stack([left, right], axis=1), 8000))
    np.testing.assert_allclose(mono.samples, 0.125)
    stereo = WavCodec(channels=2, sample_format="pcm16").canonical((left, 8000))
    np.testing.assert_array_equal(stereo.samples, np.stack([left, left], axis=1))
    surround = np.tile(np.arange(6, dtype=np.float32) / 10, (50, 1))
    np.testing.assert_allclose(WavCodec(channels=2).canonical((surround, 8000)).samples[0], [0.0, 0.1])


def test_resampling_keeps_duration_and_pitch() -> None:
    rate = 16000
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    audio = WavCodec(sample_rate=8000, sample_format="pcm16").canonical(Audio(tone, rate))
    assert audio.sample_rate == 8000 and len(audio.samples) == 8000
    spectrum = np.abs(np.fft.rfft(audio.samples))
    assert np.argmax(spectrum) == 440  # 1 s of audio: bin k is k Hz
    assert 0.45 < np.max(np.abs(audio.samples[100:-100])) < 0.55


@pytest.mark.parametrize("file_format, subtype", [
    ("WAV", "PCM_U8"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"),
])
def test_reads_what_soundfile_reads(tmp_path, file_format: str, subtype: str) -> None:
    t = np.arange(4000) / 8000
    tone = (0.5 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    path = tmp_path / f"tone.{file_format.lower()}"
    soundfile.write(path, tone, 8000, format=file_format, subtype=subtype)
    codec = WavCodec(sample_format="pcm16")
    decoded = codec.decode(codec.encode_file(path)).samples
    assert len(decoded) == 4000
    tolerance = 0.05 if subtype == "VORBIS" else 1 / 64
    assert np.max(np.abs(decoded - tone)) < tolerance


def test_encode_accepts_integer_samples_and_rejects_others() -> None:
    codec = WavCodec(sample_format="pcm16")
    samples = np.array([-32768, 0, 12345], dtype=np.int16)
    assert codec.encode(samples) == samples.astype("<i2").tobytes()  # bare array: at the codec rate
    with pytest.raises(CodecError, match="zero frames"):
        codec.encode(np.zeros(0, dtype=np.float32))
    with pytest.raises(CodecError, match="not str"):
        codec.encode("noise")
    with pytest.raises(CodecError, match="neither float nor signed integer"):
        codec.encode(np.zeros(4, dtype=np.complex64))


def test_options_are_checked_and_recorded() -> None:
    codec = bytecodecs.get_codec("wav", sample_rate=16000, channels=2, sample_format="linear8")
    assert codec.config() == {"name": "wav", "sample_rate": 16000, "channels": 2, "sample_format": "linear8"}
    assert bytecodecs.codec_from_config(codec.config()) == codec
    assert (codec.tag, codec.modality, codec.framing.align) == (1, "audio", 2)
    with pytest.raises(CodecError, match="sample_format"):
        WavCodec(sample_format="mp3")
    with pytest.raises(CodecError, match="channels"):
        WavCodec(channels=6)
    with pytest.raises(CodecError, match="sample_rate"):
        WavCodec(sample_rate=0)


@pytest.mark.parametrize("channels", [1, 2])
def test_audio_that_resamples_to_zero_frames_is_an_error_not_empty_bytes(tmp_path, channels) -> None:
    path = tmp_path / "one44.wav"
    soundfile.write(path, np.array([0.5], np.float32), 44100, subtype="PCM_16")
    codec = bytecodecs.get_codec("wav", channels=channels)
    with pytest.raises(CodecError, match=r"one44\.wav: audio has zero frames .*too short.*8000 Hz"):
        codec.encode_file(path)
    with pytest.raises(CodecError, match="audio has zero frames .*too short for the codec's sample rate"):
        codec.encode((np.array([0.5], np.float32), 44100))
    assert len(codec.encode((np.full(44, 0.5, np.float32), 44100))) == 8 * channels  # long enough: encoded


@pytest.mark.parametrize("rate", [True, False, np.True_, 0, -8000, np.int64(0), 8000.0, "8000", None])
def test_a_pair_with_a_bad_sample_rate_is_refused(rate) -> None:
    codec = WavCodec()
    with pytest.raises(CodecError, match="audio sample rate .* is not a positive integer"):
        codec.encode((np.zeros(3, np.float32), rate))


def test_a_pair_with_an_integer_sample_rate_is_taken() -> None:
    codec = WavCodec(sample_format="pcm16")
    for rate in (8000, np.int32(8000), np.int64(8000)):
        assert codec.encode((np.zeros(3, np.float32), rate)) == bytes(6)
