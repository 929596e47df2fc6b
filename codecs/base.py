"""The contract every codec follows: ``ByteCodec``, its ``Framing`` and ``CodecError``.

A codec turns one item of a modality (a string, a sound, a picture) into bytes and back. The core
model never sees the item, only the bytes, so everything modality-specific lives here: how the
bytes are framed, which modality tag the codec claims, how a file is read and a sample written.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

__all__ = ["ByteCodec", "CodecError", "Framing", "check_bool", "option_names", "options_error"]


class CodecError(ValueError):
    """The one exception for bad input: an unreadable file, bytes that are not the format, a bad option.

    ``str(error)`` is one sentence that names the file (when there is one) and the reason; the two
    parts are also kept as ``error.path`` and ``error.reason`` so a folder loader can report them.
    """

    def __init__(self, reason: str, path: str | Path | None = None) -> None:
        self.reason = reason
        self.path = None if path is None else Path(path)
        super().__init__(reason if path is None else f"{path}: {reason}")


def check_bool(option: str, value: Any, owner: str = "") -> None:
    """Raise ``CodecError`` unless ``value`` is ``True`` or ``False`` (not a string, not a number).

    A string such as ``"False"`` is truthy, so accepting it would turn the option on; the message
    names the option, the value and ``owner`` (e.g. ``"text codec"``), and for a string says how to
    write a bool from the command line.
    """
    if isinstance(value, bool):
        return
    prefix = f"{owner}: " if owner else ""
    hint = f" (on the command line write -O {option}=true or -O {option}=false)" if isinstance(value, str) else ""
    raise CodecError(f"{prefix}{option} must be true or false, got {value!r}{hint}")


def option_names(cls: type) -> list[str]:
    """The keyword options the codec class ``cls`` takes: its dataclass fields, else its constructor's keywords."""
    if dataclasses.is_dataclass(cls):
        return [field.name for field in dataclasses.fields(cls) if field.init]
    import inspect

    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def options_error(cls: type, options: Mapping[str, Any], error: TypeError, context: str,
                  lead: bool = False) -> "CodecError":
    """The ``CodecError`` for a codec constructor's ``TypeError``: the options it does not know, named with the ones
    it takes (``-O bogus=1`` lists the valid options instead of Python's ``unexpected keyword argument``), else
    ``context: error``. ``lead``: start with ``context`` in both cases."""
    valid = option_names(cls)
    unknown = [name for name in options if name not in valid]
    if not unknown:
        return CodecError(f"{context}: {error}")
    listed = (f"codec {cls.name!r} has no option{'s' if len(unknown) > 1 else ''} "
              f"{', '.join(map(repr, unknown))}; its options are: {', '.join(valid) or 'none'}")
    return CodecError(f"{context}: {listed}" if lead else listed)


@dataclass(frozen=True)
class Framing:
    """How the data layer should cut a codec's byte stream.

    ``record_size`` is the exact length of every encoded item in bytes, or ``None`` when items
    vary in length (text, audio). ``align`` is the codec's natural unit in bytes (one audio sample
    frame, one image row): a patch size that is a multiple of it keeps units whole inside patches.
    """

    record_size: int | None = None
    align: int = 1

    def __post_init__(self) -> None:
        if self.record_size is not None and self.record_size < 1:
            raise ValueError(f"Framing.record_size={self.record_size} must be positive or None")
        if self.align < 1:
            raise ValueError(f"Framing.align={self.align} must be at least 1")


class ByteCodec(ABC):
    """Base class of every codec: one modality item <-> bytes, plus files and configuration.

    Subclasses set the class attributes below and implement ``encode``, ``decode``, ``load`` and
    ``save``. Options are constructor keywords; write the codec as a frozen ``dataclass`` and
    ``config()``/``from_config()`` work unchanged (otherwise override ``options()``).
    """

    #: Registry name, lower case (``"text"``, ``"wav"``, ``"image"``); recorded in ``config()``.
    name: ClassVar[str] = ""
    #: Modality in words (``"text"``, ``"audio"``, ``"image"``); for people and reports.
    modality: ClassVar[str] = ""
    #: Index of the modality tag the codec claims (``bytemodels.tokens.tag_id(tag)``); None for none.
    tag: ClassVar[int | None] = None
    #: Extension ``save`` writes by default and ``write_bytes`` adds when a path has none.
    extension: ClassVar[str] = ".bin"
    #: Extensions ``load`` reads; a folder loader picks files by them (empty: every file).
    extensions: ClassVar[tuple[str, ...]] = ()

    # -- bytes ----------------------------------------------------------------------------------
    @abstractmethod
    def encode(self, item: Any) -> bytes:
        """The bytes the model is trained on for ``item``; raises ``CodecError`` for bad input."""

    @abstractmethod
    def decode(self, data: bytes) -> Any:
        """The item for ``data``. Model output may be cut anywhere: decode it without raising
        unless the codec was asked to be strict."""

    # -- files ----------------------------------------------------------------------------------
    @abstractmethod
    def load(self, path: str | Path) -> Any:
        """Read one item from a file; raises ``CodecError`` naming the file when it is unusable."""

    @abstractmethod
    def save(self, item: Any, path: str | Path) -> Path:
        """Write ``item`` to ``path`` atomically (temporary file, then rename); returns the path."""

    def encode_file(self, path: str | Path) -> bytes:
        """``encode(load(path))``, with encoding errors naming the file."""
        item = self.load(path)
        try:
            return self.encode(item)
        except CodecError as error:
            if error.path is not None:
                raise
            raise CodecError(error.reason, path) from error

    def encode_file_chunks(self, path: str | Path) -> Iterator[bytes]:
        """The bytes of ``encode_file(path)`` in pieces, for files too large to hold in memory whole.

        The pieces joined are exactly ``encode_file(path)``. This default yields that in one piece; a codec
        whose bytes can be made a piece at a time (text) overrides it so that memory stays bounded."""
        yield self.encode_file(path)

    def write_bytes(self, data: bytes, path: str | Path) -> Path:
        """Decode model output and save it; ``self.extension`` is added when ``path`` has none.

        Never raises on truncated or garbled output (only on an unwritable path), so a training
        run can always write its samples.
        """
        path = Path(path)
        if not path.suffix:
            path = path.with_name(path.name + self.extension)
        return self.save(self.decode(bytes(data)), path)

    # -- framing and configuration --------------------------------------------------------------
    @property
    def framing(self) -> Framing:
        """How the data layer frames this codec's bytes; variable length, byte-aligned by default."""
        return Framing()

    def options(self) -> dict[str, Any]:
        """Every option, JSON-able, as keywords the constructor takes back."""
        if dataclasses.is_dataclass(self):
            return dataclasses.asdict(self)
        return {}

    def config(self) -> dict[str, Any]:
        """``{"name": ..., **options}``: what a checkpoint records to rebuild this exact codec."""
        return {"name": self.name, **self.options()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ByteCodec":
        """Rebuild a codec of this class from ``config()``; a wrong name or option is a ``CodecError``."""
        options = dict(config)
        name = options.pop("name", cls.name)
        if name != cls.name:
            raise CodecError(f"codec config names {name!r}, but {cls.__name__} is the {cls.name!r} codec")
        try:
            return cls(**options)
        except TypeError as error:
            raise options_error(cls, options, error, f"codec config for {cls.name!r} is invalid",
                                lead=True) from error

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.tag is not None and not (isinstance(cls.tag, int) and cls.tag >= 0):
            raise TypeError(f"{cls.__name__}.tag must be a non-negative int or None, not {cls.tag!r}")
