"""Image codec: anything Pillow opens <-> raw raster bytes at a fixed size (the MEGABYTE ImageNet form).

Canonical form: ``width`` x ``height`` pixels (resized with a center crop, or padded with ``fill``),
mode ``"RGB"`` (3 bytes per pixel, channels interleaved) or ``"L"`` (1 byte), rows top to bottom.
With ``header=True`` the bytes start with width and height (uint16 little-endian) and the channel
count (uint8), which lets ``fit="keep"`` store each image at its own size (at most width x height).
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bytecodecs.base import ByteCodec, CodecError, Framing, check_bool
from bytecodecs.files import atomic_path, require_file
from bytecodecs.registry import _register_builtin

__all__ = ["ARRAY_SUFFIXES", "HEADER", "MAX_RECORD_PIXEL_BYTES", "ImageCodec", "array_codec_options", "load_array"]

#: Header layout when ``header=True``: width, height (uint16 little-endian), channels (uint8).
HEADER = struct.Struct("<HHB")
#: Suffixes of the numpy files ``load_array`` reads.
ARRAY_SUFFIXES = (".npz", ".npy")
#: Most pixel bytes (width x height x channels) of one record: 2**26, 64 MiB, e.g. 4096 x 4096 RGB. A record is a
#: training document and a sample's default length, so it must fit in memory many times over; this also keeps every
#: record below Pillow's decompression-bomb limit (89,478,485 pixels), so what the codec writes Pillow reads back.
MAX_RECORD_PIXEL_BYTES = 2**26

_CHANNELS = {"L": 1, "RGB": 3}
_FITS = ("crop", "pad", "keep")
_RESAMPLE = Image.Resampling.LANCZOS


@dataclass(frozen=True)
class ImageCodec(ByteCodec):
    """Image <-> raw pixels. Fixed-size records aligned to one row (unless ``fit="keep"``); tag 2."""

    width: int = 32
    """Pixels per row of the bytes (with ``fit="keep"``: the largest width kept)."""
    height: int = 32
    """Rows of the bytes (with ``fit="keep"``: the largest height kept)."""
    mode: str = "RGB"
    """"RGB" (3 bytes per pixel) or "L" (grey, 1 byte per pixel)."""
    fit: str = "crop"
    """"crop": resize to cover, then center-crop; "pad": resize to fit, then center and pad with
    ``fill``; "keep": keep the image's own size, shrinking it into width x height (needs ``header``)."""
    header: bool = False
    """Start the bytes with width, height and channels (5 bytes) so that decoding needs no options."""
    fill: int = 0
    """Grey level (0-255, every channel) of padding and of pixels missing from a truncated payload."""

    name = "image"
    modality = "image"
    tag = 2
    extension = ".png"
    extensions = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                  ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico")

    def __post_init__(self) -> None:
        if self.mode not in _CHANNELS:  # first: the size limit needs the channel count
            raise CodecError(f"image codec: mode={self.mode!r} must be one of {tuple(_CHANNELS)}")
        if self.fit not in _FITS:
            raise CodecError(f"image codec: fit={self.fit!r} must be one of {_FITS}")
        check_bool("header", self.header, "image codec")
        for option in ("width", "height"):
            value = getattr(self, option)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 0xFFFF:
                raise CodecError(f"image codec: {option}={value!r} must be an integer in 1..65535")
        if self.width * self.height * self.channels > MAX_RECORD_PIXEL_BYTES:
            raise CodecError(f"image codec: width={self.width} x height={self.height} x {self.channels} channel(s) "
                             f"({self.mode}) is {self.width * self.height * self.channels:,} bytes per image, over "
                             f"the limit of {MAX_RECORD_PIXEL_BYTES:,}; lower width or height")
        if self.fit == "keep" and not self.header:
            raise CodecError("image codec: fit='keep' stores each image at its own size, so it needs header=True")
        if not isinstance(self.fill, int) or isinstance(self.fill, bool) or not 0 <= self.fill <= 255:
            raise CodecError(f"image codec: fill={self.fill!r} must be an integer in 0..255")

    @property
    def channels(self) -> int:
        """Bytes per pixel: 3 for RGB, 1 for L."""
        return _CHANNELS[self.mode]

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the canonical image (its largest size with ``fit="keep"``)."""
        return self.width, self.height

    @property
    def framing(self) -> Framing:
        row = self.width * self.channels
        if self.fit == "keep":
            return Framing(record_size=None, align=1)
        if self.header:  # the header shifts rows off any row-sized grid
            return Framing(record_size=HEADER.size + row * self.height, align=1)
        return Framing(record_size=row * self.height, align=row)

    # -- bytes ----------------------------------------------------------------------------------
    def canonical(self, image: Image.Image) -> Image.Image:
        """``image`` in the codec's mode and size (transparency flattened onto ``fill``)."""
        if not isinstance(image, Image.Image):
            raise CodecError(f"image codec encodes PIL images, not {type(image).__name__}")
        if image.width < 1 or image.height < 1:
            raise CodecError(f"image has no pixels ({image.width}x{image.height})")
        if image.mode.startswith("I;16"):  # 16-bit grey: keep the high byte (convert() would clip at 255)
            image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
        if image.mode != self.mode:
            if "A" in image.getbands() or "transparency" in image.info:
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (self.fill, self.fill, self.fill, 255))
                image = Image.alpha_composite(background, image)
            image = image.convert(self.mode)
        if self.fit == "keep":
            if image.width > self.width or image.height > self.height:
                image = ImageOps.contain(image, self.size, method=_RESAMPLE)
        elif image.size != self.size:
            if self.fit == "crop":
                image = ImageOps.fit(image, self.size, method=_RESAMPLE)
            else:
                image = ImageOps.pad(image, self.size, method=_RESAMPLE, color=self._fill_color())
        return image

    def encode(self, item: Image.Image) -> bytes:
        """Raw pixels, row-major, channels interleaved (after the header when ``header``)."""
        image = self.canonical(item)
        pixels = image.tobytes()
        if self.header:
            return HEADER.pack(image.width, image.height, self.channels) + pixels
        return pixels

    def encode_array(self, array: np.ndarray) -> bytes:
        """Bytes of a uint8 array shaped ``(height, width)`` or ``(height, width, channels)``.

        An array already at the codec's size and channel count is copied as is (fast for data sets
        such as MNIST and CIFAR stored as numpy arrays).
        """
        array = np.asarray(array)
        if array.dtype != np.uint8:
            raise CodecError(f"image arrays must be uint8, not {array.dtype}")
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise CodecError(f"image array shape {array.shape} is not (height, width) or (height, width, 3 or 4)")
        expected = (self.height, self.width) if self.channels == 1 else (self.height, self.width, 3)
        if array.shape == expected and not self.header:
            return np.ascontiguousarray(array).tobytes()
        return self.encode(Image.fromarray(array))

    @property
    def max_record_size(self) -> int:
        """Most bytes one encoded image takes: the header (when ``header``) and width x height x channels."""
        return HEADER.size * self.header + self.width * self.height * self.channels

    def decode(self, data: bytes) -> Image.Image:
        """The image for ``data``; a short payload is completed with ``fill``, never an error. Bytes past
        ``max_record_size`` are ignored, so decoding never allocates more than one record."""
        width, height, pixels = self._layout(data)
        return Image.frombytes(self.mode, (width, height), pixels)

    def decode_array(self, data: bytes) -> np.ndarray:
        """Like ``decode`` but a uint8 array, ``(height, width)`` for L, ``(height, width, 3)`` for RGB."""
        width, height, pixels = self._layout(data)
        shape = (height, width) if self.channels == 1 else (height, width, self.channels)
        return np.frombuffer(pixels, dtype=np.uint8).reshape(shape).copy()

    def _layout(self, data: bytes) -> tuple[int, int, bytes]:
        """Width, height and exactly width*height*channels pixel bytes for any payload."""
        data = bytes(data[:self.max_record_size])  # slice first: a long payload is never copied whole
        width, height = self.size
        if self.header:
            if len(data) >= HEADER.size:
                stated_width, stated_height, _ = HEADER.unpack_from(data)
                if self.fit == "keep":  # generated headers may be nonsense: keep them in bounds
                    width = min(max(stated_width, 1), self.width)
                    height = min(max(stated_height, 1), self.height)
            data = data[HEADER.size:]
        count = width * height * self.channels
        pixels = data[:count] + bytes([self.fill]) * max(0, count - len(data))
        return width, height, pixels

    def _fill_color(self) -> int | tuple[int, ...]:
        return self.fill if self.channels == 1 else (self.fill,) * self.channels

    # -- files ----------------------------------------------------------------------------------
    def load(self, path: str | Path) -> Image.Image:
        """The image in a file Pillow opens, fully decoded and turned upright (EXIF orientation).

        Truncated or corrupt files, non-images and images over Pillow's decompression-bomb limit
        raise ``CodecError`` naming the file.
        """
        path = require_file(path)
        try:
            with warnings.catch_warnings():
                # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse those too.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    image.load()  # decode now, inside the try: truncation shows up here
                    return ImageOps.exif_transpose(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise CodecError(f"is too large to decode safely ({error})", path) from None
        except Image.UnidentifiedImageError:
            raise CodecError("is not an image Pillow can identify", path) from None
        except Exception as error:  # Pillow's decoders raise OSError, SyntaxError, ValueError, ...
            raise CodecError(f"is not a readable image ({type(error).__name__}: {error})", path) from None

    def save(self, item: Image.Image, path: str | Path) -> Path:
        """Write the image; the format follows the extension (PNG when it is not an image one)."""
        if not isinstance(item, Image.Image):
            raise CodecError(f"image codec saves PIL images, not {type(item).__name__}")
        path = Path(path)
        image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
        with atomic_path(path) as temporary:
            item.save(temporary, format=image_format)
        return path


def load_array(path: str | Path, key: str | None = None) -> np.ndarray:
    """The uint8 images stored in a ``.npy`` file, or in a ``.npz`` file's array ``key`` (else ``images``, else
    its first array shaped like images): ``(count, height, width)`` or ``(count, height, width, channels)``.

    Data sets such as MNIST and CIFAR-10 come this way; ``ImageCodec.encode_array`` encodes one image of
    the array. An unreadable file, a missing array or an array that is not uint8 images raises
    ``CodecError`` naming the file."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CodecError(f"not a readable numpy file ({error})", path) from None
    if isinstance(loaded, np.ndarray):
        array = loaded
    else:
        with loaded:
            names = loaded.files
            if key is None:
                key = "images" if "images" in names else next(
                    (n for n in names if loaded[n].dtype == np.uint8 and loaded[n].ndim in (3, 4)), None)
            if key not in names:
                raise CodecError(f"no image array{'' if key is None else f' {key!r}'}; it holds {', '.join(names)} "
                                 "(name the array to read)", path)
            array = loaded[key]
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[3] not in (1, 3, 4)):
        raise CodecError(f"the array is {array.dtype} {array.shape}; expected uint8 images shaped "
                         "(count, height, width) or (count, height, width, 1, 3 or 4)", path)
    return array


def array_codec_options(array: np.ndarray) -> dict[str, int | str]:
    """``width``, ``height`` and ``mode`` of the images in an array from ``load_array``: the codec options that
    keep them at the size (and greys or colours) they come in."""
    mode = "L" if array.ndim == 3 or array.shape[3] == 1 else "RGB"
    return {"width": int(array.shape[2]), "height": int(array.shape[1]), "mode": mode}


_register_builtin(ImageCodec)
