"""What a byte model has to beat: general compressors and the format a user would otherwise keep.

Every number is **bits per byte of the bytes the model is scored on** (the codec's bytes):
``8 * compressed size / raw size``. Smaller is better; 8 means no compression.

- General compressors from Python (strongest settings): ``gzip -9``, ``bzip2 -9``, ``xz -9e``
  (LZMA2, extreme preset) and ``zstd -22`` (ultra) when the ``zstandard`` package is installed.
  Each runs two ways: on all items joined into one stream (the compressor sees every item, as a
  packed text model does) and on each item alone, sizes summed (one file per clip or image, as a
  records model scores them). Per-item sizes include each format's header and trailer.
- FLAC (audio) through soundfile at compression level 1.0 (libFLAC level 8), one file per clip.
- PNG (images) through Pillow with ``optimize=True``, one file per image.

``benchmarks/compare.py`` puts these rows beside the models'; for the compressor rows alone::

    python benchmarks/compare.py --skip-models --modality all
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from collections.abc import Callable, Sequence

import numpy as np

Compressor = Callable[[bytes], bytes]


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def _bzip2(data: bytes) -> bytes:
    return bz2.compress(data, compresslevel=9)


XZ_MAX_DICT = 64 << 20
"""The dictionary of ``xz -9``: 64 MiB."""


def _xz(data: bytes) -> bytes:
    """``xz -9e``; the dictionary shrinks to the input's size (down to xz's 4 KiB minimum), which gives the
    same output length (a window larger than the input finds no more matches) but spares allocating
    and clearing 64 MiB for every small item."""
    dict_size = min(XZ_MAX_DICT, max(len(data), 4096))
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dict_size}]
    return lzma.compress(data, format=lzma.FORMAT_XZ, filters=filters)


def _zstd_or_none() -> Compressor | None:
    """``zstd -22 --ultra`` when the zstandard package is installed, else None."""
    try:
        import zstandard
    except ImportError:
        return None
    compressor = zstandard.ZstdCompressor(level=22)
    return compressor.compress


def _zstd_long_or_none() -> Compressor | None:
    """``zstd -19 --long`` (long-distance matching, a 128 MiB window) when zstandard is installed, else None."""
    try:
        import zstandard
    except ImportError:
        return None
    parameters = zstandard.ZstdCompressionParameters.from_level(19, enable_ldm=True, window_log=27)
    return zstandard.ZstdCompressor(compression_params=parameters).compress


def general_compressors(long_zstd: bool = False) -> dict[str, Compressor]:
    """The general-purpose compressors available here, by the name shown in tables; ``long_zstd``: ``zstd -19
    --long`` in place of ``zstd -22``."""
    compressors: dict[str, Compressor] = {"gzip -9": _gzip, "bzip2 -9": _bzip2, "xz -9e": _xz}
    zstd = _zstd_long_or_none() if long_zstd else _zstd_or_none()
    if zstd is not None:
        compressors["zstd -19 --long" if long_zstd else "zstd -22"] = zstd
    return compressors


def bits_per_byte(compressed_bytes: int, raw_bytes: int) -> float:
    """``8 * compressed / raw``: the compressed size in bits per byte of the original."""
    if raw_bytes <= 0:
        raise ValueError("cannot compute bits per byte of zero raw bytes")
    return 8.0 * compressed_bytes / raw_bytes


def joined_and_each(compress: Compressor, items: Sequence[bytes]) -> tuple[float, float]:
    """Bits per byte of ``items`` compressed joined into one stream, and compressed one by one (summed)."""
    raw = sum(len(item) for item in items)
    joined = len(compress(b"".join(items)))
    each = sum(len(compress(item)) for item in items)
    return bits_per_byte(joined, raw), bits_per_byte(each, raw)


def general_rows(items: Sequence[bytes]) -> dict[str, float]:
    """``{"gzip -9 (all joined)": bpb, "gzip -9 (each item)": bpb, ...}`` for every available compressor."""
    rows: dict[str, float] = {}
    for name, compress in general_compressors().items():
        rows[f"{name} (all joined)"], rows[f"{name} (each item)"] = joined_and_each(compress, items)
    return rows


# -- the formats users keep -----------------------------------------------------------------------
def flac_size(samples: np.ndarray, sample_rate: int) -> int:
    """Bytes of a FLAC file (16-bit, highest compression level) holding ``samples`` (int16, mono)."""
    if samples.dtype != np.int16:
        raise TypeError(f"FLAC input must be int16 samples, not {samples.dtype}")
    buffer = io.BytesIO()
    import soundfile

    soundfile.write(buffer, samples, sample_rate, subtype="PCM_16", format="FLAC", compression_level=1.0)
    return buffer.getbuffer().nbytes


def flac_bits_per_codec_byte(clips: Sequence[np.ndarray], sample_rate: int, codec_bytes: int) -> float:
    """One FLAC file per clip; total FLAC bits per byte of the codec's form of the same clips."""
    return bits_per_byte(sum(flac_size(clip, sample_rate) for clip in clips), codec_bytes)


def png_size(image: np.ndarray) -> int:
    """Bytes of an optimised PNG of ``image`` (uint8, (height, width) grey or (height, width, 3) RGB)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getbuffer().nbytes


def png_bits_per_byte(images: Sequence[np.ndarray]) -> float:
    """One optimised PNG per image; total PNG bits per raw pixel byte."""
    raw = sum(image.nbytes for image in images)
    return bits_per_byte(sum(png_size(image) for image in images), raw)
