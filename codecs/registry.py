"""Codec registry: names to codec classes, built-ins imported lazily, third parties via entry points.

Like Python's codec registry and Pillow's plugins, each built-in codec registers itself at the bottom
of its own module; this registry only knows which module to import for which name, so asking for
``"text"`` never imports Pillow. Third-party packages add codecs through the entry-point group
``bytemodels.codecs`` (``name = "package.module:CodecClass"``), found with ``importlib.metadata``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from typing import Any, Mapping

from bytecodecs.base import ByteCodec, CodecError, options_error

__all__ = [
    "ENTRY_POINT_GROUP",
    "available_codecs",
    "codec_class",
    "codec_from_config",
    "get_codec",
    "register_codec",
]

#: Entry-point group third-party packages declare their codecs in.
ENTRY_POINT_GROUP = "bytemodels.codecs"

#: Built-in codec name -> module that registers it when imported.
_BUILTIN_MODULES = {"text": "bytecodecs.text", "wav": "bytecodecs.wav", "image": "bytecodecs.image"}

_codecs: dict[str, type[ByteCodec]] = {}


def register_codec(name: str, cls: type[ByteCodec], *, replace: bool = False) -> None:
    """Register ``cls`` under ``name``; a name already taken is an error unless ``replace=True``.

    A name is taken when it is registered, when it is a built-in codec (even one not imported yet)
    and when an installed package declares it as an entry point. With ``replace=True`` ``cls`` wins:
    a built-in module imported later keeps it, and the entry point of that name is not loaded.
    """
    _check_codec(name, cls)
    if not replace:
        owner = _owner(name, cls)
        if owner is not None:
            raise ValueError(f"codec name {name!r} is already registered to {owner}; "
                             "pass replace=True to replace it")
    _codecs[name] = cls


def _register_builtin(cls: type[ByteCodec]) -> None:
    """Called at the bottom of each built-in codec module: register ``cls`` unless a user's
    ``register_codec(..., replace=True)`` already took its name (the user's class stays)."""
    _check_codec(cls.name, cls)
    _codecs.setdefault(cls.name, cls)


def _check_codec(name: str, cls: type[ByteCodec]) -> None:
    if not (isinstance(cls, type) and issubclass(cls, ByteCodec)):
        raise TypeError(f"codec {name!r}: {cls!r} is not a subclass of bytecodecs.ByteCodec")
    if not isinstance(name, str) or not name or name != name.strip() or name != name.lower():
        raise ValueError(f"codec name {name!r} must be a non-empty lower-case word")
    if name != cls.name:
        raise ValueError(f"codec {cls.__name__} has name {cls.name!r} but is registered as {name!r}; "
                         "they must match so that config() rebuilds it")


def _owner(name: str, cls: type[ByteCodec]) -> str | None:
    """Who holds ``name`` already (in words), or None when it is free for ``cls``."""
    if name in _codecs:
        return _qualname(_codecs[name])
    if name in _BUILTIN_MODULES:
        return f"the built-in codec of module {_BUILTIN_MODULES[name]}"
    for entry_point in _entry_points():
        # A module named by its own entry point may register its class itself when imported.
        if entry_point.name == name and (entry_point.module, entry_point.attr) != (cls.__module__, cls.__qualname__):
            return f"entry point {entry_point.name!r} = {entry_point.value!r} (group {ENTRY_POINT_GROUP!r})"
    return None


def codec_class(name: str) -> type[ByteCodec]:
    """The class registered as ``name``: registered, built-in, or from an installed entry point."""
    if name not in _codecs and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])  # registers itself at the bottom
    if name not in _codecs:
        for entry_point in _entry_points():
            if entry_point.name == name:
                _register_entry_point(entry_point)
                break
    if name not in _codecs:
        raise CodecError(f"unknown codec {name!r}; available codecs: {', '.join(available_codecs())}")
    return _codecs[name]


def get_codec(name: str, **options: Any) -> ByteCodec:
    """A codec instance by name, e.g. ``get_codec("wav", sample_rate=16000)``."""
    cls = codec_class(name)
    try:
        return cls(**options)
    except TypeError as error:
        raise options_error(cls, options, error, f"codec {name!r} does not take these options") from error


def codec_from_config(config: Mapping[str, Any]) -> ByteCodec:
    """Rebuild the codec a checkpoint recorded with ``codec.config()``."""
    if "name" not in config:
        raise CodecError(f"codec config {dict(config)!r} has no 'name'")
    return codec_class(config["name"]).from_config(config)


def available_codecs() -> list[str]:
    """Names of every codec that ``get_codec`` can build, sorted (entry points are not imported)."""
    names = set(_codecs) | set(_BUILTIN_MODULES) | {entry_point.name for entry_point in _entry_points()}
    return sorted(names)


# -- entry points ------------------------------------------------------------------------------
def _entry_points() -> list[importlib.metadata.EntryPoint]:
    # Scanned on every call (cheap) so that a package installed while Python runs is seen.
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _register_entry_point(entry_point: importlib.metadata.EntryPoint) -> None:
    source = f"entry point {entry_point.name!r} = {entry_point.value!r} (group {ENTRY_POINT_GROUP!r})"
    if entry_point.name in _BUILTIN_MODULES:
        warnings.warn(f"{source} is ignored: {entry_point.name!r} is a built-in codec", stacklevel=3)
        return
    try:
        cls = entry_point.load()
    except Exception as error:  # a broken third-party package must say which one it is
        raise CodecError(f"{source} failed to load: {error!r}") from error
    if _codecs.get(entry_point.name) is cls:  # its module registered itself on import
        return
    try:
        _check_codec(entry_point.name, cls)
    except (TypeError, ValueError) as error:
        raise CodecError(f"{source} is not a usable codec: {error}") from error
    if entry_point.name in _codecs:  # loading it registered another class under its name
        raise CodecError(f"{source} is not a usable codec: codec name {entry_point.name!r} is already "
                         f"registered to {_qualname(_codecs[entry_point.name])}")
    _codecs[entry_point.name] = cls


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
