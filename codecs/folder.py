"""Folder loader: encode every usable file under a folder, skip and count the bad ones.

    files = iter_folder("data/audio", get_codec("wav"))
    for path, data in files:
        ...
    print(files.report())   # "read 2998 files from data/audio; skipped 2 unusable files"

    read = iter_folder("data/images", get_codec("image"), limit=1000).encoded   # bytes only, callable again

A bad file (corrupt, truncated, empty, not the format) never stops the loop: it is counted in
``skipped`` with its ``CodecError``, and one warning with the count is logged when the loop ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from bytecodecs.base import ByteCodec, CodecError, check_bool

__all__ = ["FolderFiles", "iter_folder", "list_files"]

logger = logging.getLogger(__name__)


def list_files(root: str | Path, extensions: Iterable[str] = (), *, recursive: bool = True) -> list[Path]:
    """Regular files under ``root`` in sorted order, hidden ones left out; ``extensions`` filters
    by suffix (case-insensitive, e.g. ``(".wav", ".flac")``), an empty one keeps every file."""
    check_bool("recursive", recursive, "list_files")
    root = Path(root)
    if not root.is_dir():
        raise CodecError("no such folder" if not root.exists() else "is not a folder", root)
    wanted = {suffix.lower() if suffix.startswith(".") else "." + suffix.lower() for suffix in extensions}
    pattern = root.rglob("*") if recursive else root.glob("*")
    files = [
        path for path in pattern
        if not any(part.startswith(".") for part in path.relative_to(root).parts)
        and path.is_file()
        and (not wanted or path.suffix.lower() in wanted)
    ]
    return sorted(files)


@dataclass
class FolderFiles:
    """Iterates once over ``(path, encoded bytes)`` and keeps count of what was read and skipped."""

    root: Path
    codec: ByteCodec
    paths: list[Path]
    strict: bool = False
    """Raise the first ``CodecError`` instead of skipping the file."""
    loaded: int = 0
    """Files encoded so far."""
    skipped: list[CodecError] = field(default_factory=list)
    """One ``CodecError`` per skipped file (``error.path``, ``error.reason``)."""

    def __post_init__(self) -> None:
        check_bool("strict", self.strict, "folder loader")

    def __iter__(self) -> Iterator[tuple[Path, bytes]]:
        self.loaded, self.skipped = 0, []  # iterating again counts afresh
        for path in self.paths:
            try:
                data = self.codec.encode_file(path)
            except CodecError as error:
                if self.strict:
                    raise
                self.skipped.append(error if error.path is not None else CodecError(error.reason, path))
                continue
            self.loaded += 1
            yield path, data
        if self.skipped:
            logger.warning(self.report())

    def __len__(self) -> int:
        """Files to read (some may be skipped), so a progress bar wrapped around the files knows its total."""
        return len(self.paths)

    def encoded(self, progress: Callable[[Iterable], Iterable] | None = None) -> Iterator[bytes]:
        """The encoded bytes of each usable file, in order; each call reads the files again.

        ``progress`` wraps the iteration, e.g. ``functools.partial(tqdm, desc="encoding", unit="file")``."""
        for _, data in self if progress is None else progress(self):
            yield data

    @property
    def skipped_count(self) -> int:
        """How many files were skipped as unusable."""
        return len(self.skipped)

    def report(self) -> str:
        """One line: files read, files skipped and the first skipped file's reason."""
        line = f"read {self.loaded} files from {self.root}; skipped {self.skipped_count} unusable files"
        if self.skipped:
            line += f" (first: {self.skipped[0]})"
        return line


def iter_folder(
    path: str | Path,
    codec: ByteCodec,
    *,
    recursive: bool = True,
    extensions: Iterable[str] | None = None,
    strict: bool = False,
    limit: int | None = None,
) -> FolderFiles:
    """Encode the files under ``path`` with ``codec``, in sorted order, skipping unusable ones.

    ``extensions`` defaults to the ones the codec reads (``codec.extensions``). Iterate the result
    for ``(path, bytes)`` pairs (or call ``.encoded()`` for the bytes alone); afterwards ``.loaded``,
    ``.skipped`` and ``.report()`` say what happened. ``limit`` keeps the first ``limit`` files (None: all).
    """
    suffixes = codec.extensions if extensions is None else tuple(extensions)
    paths = list_files(path, suffixes, recursive=recursive)[:limit]
    return FolderFiles(root=Path(path), codec=codec, paths=paths, strict=strict)
