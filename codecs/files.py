"""File helpers shared by the codecs: check a path before reading, write through a temporary file."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bytecodecs.base import CodecError

__all__ = ["atomic_path", "require_file"]


def require_file(path: str | Path, allow_empty: bool = False) -> Path:
    """``path`` as a ``Path`` if it is a regular file, non-empty unless ``allow_empty`` (a format whose empty
    file is a valid item, such as text), else a ``CodecError`` saying why."""
    path = Path(path)
    try:
        if path.is_dir():
            raise CodecError("is a directory, not a file", path)
        size = path.stat().st_size
    except FileNotFoundError:
        raise CodecError("no such file", path) from None
    except OSError as error:  # permission denied, name too long, broken link ...
        raise CodecError(f"cannot be read ({error.strerror or error})", path) from error
    if not path.is_file():
        raise CodecError("is not a regular file", path)
    if size == 0 and not allow_empty:
        raise CodecError("is empty", path)
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``, else delete it.

    Readers never see a half-written file. Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, unique, and with the real suffix last so format sniffing by name still works.
    temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
