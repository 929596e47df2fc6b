"""Audio codec: any file soundfile reads <-> raw samples at one rate, channel count and sample format.

Canonical form: ``sample_rate`` Hz (resampled with soxr), mono (channels mixed down) or interleaved
stereo, and one of three sample formats: ``"mulaw"`` (8-bit mu-law, 1 byte per sample, the
default), ``"linear8"`` (unsigned 8-bit, 128 is silence) or ``"pcm16"`` (16-bit little-endian).
There is no header: the bytes are the samples, frame after frame, left before right.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import soundfile
import soxr

from bytecodecs.base import ByteCodec, CodecError, Framing
from bytecodecs.files import atomic_path, require_file
from bytecodecs.mulaw import linear8_decode, linear8_encode, mulaw_decode, mulaw_encode
from bytecodecs.registry import _register_builtin

__all__ = ["Audio", "WavCodec", "SAMPLE_FORMATS", "MIN_SAMPLE_RATE", "MAX_SAMPLE_RATE", "MAX_RESAMPLED_SAMPLES"]

#: Sample format -> bytes per sample.
SAMPLE_FORMATS = {"mulaw": 1, "linear8": 1, "pcm16": 2}
#: Lowest and highest sample rate (Hz) of the codec and of any audio it encodes. Real audio lies far inside (8 kHz
#: telephone speech to 384 kHz studio files); a rate outside is a broken header or a typo, and resampling from 1 Hz
#: to 8 kHz would grow the data 8,000-fold.
MIN_SAMPLE_RATE = 100
MAX_SAMPLE_RATE = 768_000
#: Most samples (frames x channels) one resampled clip may have: 2**28, 1 GiB as float32 (93 minutes of 48 kHz
#: mono). Checked from frames x ratio before resampling, so memory stays bounded whatever rates a file claims.
MAX_RESAMPLED_SAMPLES = 2**28


class Audio(NamedTuple):
    """Float32 samples in [-1, 1] and their rate. ``samples`` is ``(frames,)`` for mono and
    ``(frames, channels)`` otherwise, as soundfile reads them; unpack as ``samples, rate = audio``."""

    samples: np.ndarray
    sample_rate: int


@dataclass(frozen=True)
class WavCodec(ByteCodec):
    """Audio <-> raw samples. Variable-length records aligned to one sample frame; claims tag 1."""

    sample_rate: int = 8000
    """Samples per second of the bytes, 100..768000 (8000 suits speech, e.g. the Free Spoken Digit Dataset)."""
    channels: int = 1
    """1: mix every channel down to mono; 2: interleaved stereo (mono is duplicated)."""
    sample_format: str = "mulaw"
    """"mulaw" (8-bit mu-law), "linear8" (unsigned 8-bit) or "pcm16" (16-bit little-endian)."""

    name = "wav"
    modality = "audio"
    tag = 1
    extension = ".wav"
    extensions = (".wav", ".wave", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".au", ".snd", ".caf", ".w64")

    def __post_init__(self) -> None:
        if self.sample_format not in SAMPLE_FORMATS:
            raise CodecError(f"wav codec: sample_format={self.sample_format!r} must be one of {tuple(SAMPLE_FORMATS)}")
        if type(self.channels) is not int or self.channels not in (1, 2):  # not True, not 1.0
            raise CodecError(f"wav codec: channels={self.channels!r} must be 1 (mono) or 2 (stereo)")
        if (not isinstance(self.sample_rate, int) or isinstance(self.sample_rate, bool)
                or not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE):
            raise CodecError(f"wav codec: sample_rate={self.sample_rate!r} must be an integer in "
                             f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} (Hz)")

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of one sample frame: bytes per sample times channels."""
        return SAMPLE_FORMATS[self.sample_format] * self.channels

    @property
    def framing(self) -> Framing:
        return Framing(record_size=None, align=self.bytes_per_frame)

    # -- bytes ----------------------------------------------------------------------------------
    def canonical(self, audio: Any) -> Audio:
        """``audio`` at the codec's rate and channel count, float32 in [-1, 1].

        Accepts an ``Audio``, a ``(samples, rate)`` pair, or bare samples taken to be at the codec's
        rate. Integer samples are scaled as WAV stores them (int16 / 32768, uint8 around 128).
        """
        samples, rate = _split(audio, self.sample_rate)
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise CodecError(f"audio sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz "
                             "(a broken header?)")
        samples = _as_float(samples)
        if samples.shape[0] == 0:
            raise CodecError("audio has zero frames")
        if samples.shape[1] != self.channels:
            if self.channels == 1:
                samples = samples.mean(axis=1, keepdims=True)
            elif samples.shape[1] == 1:
                samples = np.repeat(samples, 2, axis=1)
            else:  # WAV channel order puts front left and front right first
                samples = samples[:, :2]
        if rate != self.sample_rate:
            frames = samples.shape[0]
            resampled = -(-frames * self.sample_rate // rate) * self.channels  # soxr's output length, rounded up
            if resampled > MAX_RESAMPLED_SAMPLES:
                raise CodecError(f"audio of {frames:,} frames at {rate} Hz becomes {resampled:,} samples at the "
                                 f"codec's {self.sample_rate} Hz, over the limit of {MAX_RESAMPLED_SAMPLES:,} "
                                 "(split the file, or encode at a lower rate)")
            samples = soxr.resample(samples, rate, self.sample_rate)
            if samples.shape[0] == 0:
                raise CodecError(f"audio has zero frames after resampling: {frames} frame(s) at {rate} Hz are "
                                 f"too short for the codec's sample rate of {self.sample_rate} Hz")
        samples = np.clip(np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        return Audio(samples[:, 0] if self.channels == 1 else samples, self.sample_rate)

    def encode(self, item: Any) -> bytes:
        """Samples in the canonical form, interleaved, ``bytes_per_frame`` bytes per frame."""
        samples = self.canonical(item).samples
        if self.sample_format == "mulaw":
            return mulaw_encode(samples).tobytes()
        if self.sample_format == "linear8":
            return linear8_encode(samples).tobytes()
        return _to_int16(samples).astype("<i2").tobytes()

    def decode(self, data: bytes) -> Audio:
        """``Audio`` at the codec's rate; a trailing partial sample or frame is dropped, never an error."""
        data = bytes(data)
        data = data[: len(data) - len(data) % self.bytes_per_frame]
        if self.sample_format == "pcm16":
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        else:
            codes = np.frombuffer(data, dtype=np.uint8)
            samples = mulaw_decode(codes) if self.sample_format == "mulaw" else linear8_decode(codes)
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels)
        return Audio(samples.astype(np.float32, copy=False), self.sample_rate)

    # -- files ----------------------------------------------------------------------------------
    def load(self, path: str | Path) -> Audio:
        """The audio of any file soundfile reads, at its own rate and channels (``encode`` converts)."""
        path = require_file(path)
        _check_riff_complete(path)
        try:
            samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
        except soundfile.LibsndfileError as error:
            raise CodecError(f"is not a readable audio file ({error.error_string})", path) from None
        except (RuntimeError, OSError, ValueError, TypeError) as error:
            raise CodecError(f"is not a readable audio file ({error})", path) from None
        if samples.shape[0] == 0:
            raise CodecError("has zero audio frames", path)
        return Audio(samples[:, 0] if samples.shape[1] == 1 else samples, int(rate))

    def save(self, item: Any, path: str | Path) -> Path:
        """Write 16-bit PCM (WAV unless ``path`` names another format soundfile writes)."""
        samples, rate = _split(item, self.sample_rate)
        samples = _to_int16(np.clip(np.nan_to_num(_as_float(samples)), -1.0, 1.0))
        path = Path(path)
        file_format = path.suffix[1:].upper()
        if file_format not in soundfile.available_formats():
            file_format = "WAV"
        subtype = "PCM_16" if soundfile.check_format(file_format, "PCM_16") else None
        with atomic_path(path) as temporary:
            soundfile.write(temporary, samples, int(rate), subtype=subtype, format=file_format)
        return path


# -- helpers -----------------------------------------------------------------------------------
def _split(audio: Any, default_rate: int) -> tuple[np.ndarray, int]:
    if isinstance(audio, tuple) and len(audio) == 2:
        samples, rate = audio
        if not isinstance(rate, (int, np.integer)) or isinstance(rate, bool) or rate < 1:  # not True, not 8000.0
            raise CodecError(f"audio sample rate {rate!r} is not a positive integer")
        return np.asarray(samples), int(rate)
    if isinstance(audio, np.ndarray):
        return audio, default_rate
    raise CodecError(f"wav codec encodes Audio, (samples, rate) or a numpy array, not {type(audio).__name__}")


def _as_float(samples: np.ndarray) -> np.ndarray:
    """``(frames, channels)`` float32 in WAV's scaling, from 1-D or 2-D float or integer samples."""
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.ndim != 2:
        raise CodecError(f"audio samples must be (frames,) or (frames, channels), not shape {samples.shape}")
    kind = samples.dtype.kind
    if kind == "f":
        return samples.astype(np.float32, copy=False)
    if kind == "u" and samples.dtype.itemsize == 1:
        return (samples.astype(np.float32) - 128.0) / 128.0
    if kind == "i":
        return (samples / float(2 ** (8 * samples.dtype.itemsize - 1))).astype(np.float32)
    raise CodecError(f"audio samples of dtype {samples.dtype} are neither float nor signed integer PCM")


def _to_int16(samples: np.ndarray) -> np.ndarray:
    # x * 32768 inverts soundfile's int16 -> float scaling exactly, so 16-bit audio stays bit-exact.
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype(np.int16)


def _check_riff_complete(path: Path) -> None:
    """Raise ``CodecError`` when a WAV file's data chunk is cut short (libsndfile reads it silently)."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return  # not RIFF WAVE: soundfile judges it
        endian = "<" if head[:4] == b"RIFF" else ">"
        position = 12
        while position + 8 <= size:
            file.seek(position)
            chunk_id, length = struct.unpack(endian + "4sI", file.read(8))
            if chunk_id == b"data":
                present = size - position - 8
                # 0 and 0xFFFFFFFF are the placeholders streaming writers leave for "unknown".
                if length not in (0, 0xFFFFFFFF) and length > present:
                    raise CodecError(f"is truncated: its data chunk declares {length} bytes but only "
                                     f"{present} are present", path)
                return
            position += 8 + length + (length & 1)


_register_builtin(WavCodec)
