"""Byte datasets: an on-disk cache of documents, and the deterministic windows the trainer reads.

A dataset is built once from any iterable of documents (``bytes``, or ``(bytes, tag)`` with a modality
tag index) into a cache folder holding exactly:

- ``data.bin``: the documents' bytes, one after the other (a uint8 memmap: about one byte on disk per
  byte of data, and never loaded into memory whole);
- ``offsets.npy`` (int64, documents + 1 entries) and ``tags.npy`` (int16, -1 = no tag);
- ``manifest.json``: what was built from what. The folder is written under a temporary name and
  renamed when complete, so a folder with a manifest is always a whole cache.

The folder name carries a hash of the caller's ``key`` (source and codec configuration): change the
key and the next build makes a new cache; keep it and the next build opens the old one without
reading a single document.

Special ids never touch the disk: they are inserted when windows are read. Two layouts:

``packed`` (text)
    Each document is ``BOS [tag] bytes EOS``; documents are joined into one stream and a training
    window is ``max_seq_len`` ids starting anywhere in it.
``records`` (images, audio clips)
    Each record is a header patch ``BOS, tag-or-PAD, PAD, ...`` (one whole patch, so the data starts on
    a patch boundary), its bytes, ``EOS``, then PAD to a whole number of patches. A record longer than
    ``max_seq_len`` is split on patch boundaries into several windows (later ones have no header),
    never truncated. Short windows are padded with PAD.

Training reads its windows in shuffled epochs, each a pure function of the seed and its number: a resumed run
sees exactly the batches it would have seen, and each distributed rank takes its own slice of the same global draw.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bytemodels import tokens
from bytemodels.runfolder import file_sha256, lock_folder, remove_leftovers, write_error, writing
from bytemodels.window_order import step_choices

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
DATA_FILE = "data.bin"
OFFSETS_FILE = "offsets.npy"
TAGS_FILE = "tags.npy"
LAYOUTS = ("packed", "records")
NO_TAG = -1
_MAX_TAG = np.iinfo(np.int16).max

Document = bytes | tuple[bytes, int | None]


class DataCacheError(ValueError):
    """A dataset cache folder is incomplete, corrupted or from another format version."""


class EmptyDataError(ValueError):
    """No documents to build a dataset from: the source is empty, or every one of its files was skipped."""


# -- building ------------------------------------------------------------------------------------
def key_digest(key: dict[str, Any], layout: str) -> str:
    """Hex SHA-256 of the cache key (with the layout and format version): the cache folder's identity."""
    try:
        payload = json.dumps({"format": FORMAT_VERSION, "layout": layout, "key": key},
                             sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"dataset key must be a JSON-able dict (source and codec configuration): {error}") from None
    return hashlib.sha256(payload.encode()).hexdigest()


def content_digest(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (``runfolder.file_sha256``); ``"unreadable: <reason>"`` for a file that cannot
    be read, which the reader of the data then reports or skips."""
    try:
        return file_sha256(path)
    except OSError as error:
        return f"unreadable: {error.strerror or error}"


def file_key(path: Path) -> dict[str, Any]:
    """Identifies one source file in a cache key by its content: the SHA-256 of its bytes.

    Not by path, size or modification time: a file edited in place (same size, same time) gets a new key, so a
    stale cache is never reused, and data moved or copied elsewhere keeps its cache."""
    return {"sha256": content_digest(path)}


def folder_key(root: Path, paths: list[Path]) -> dict[str, Any]:
    """Identifies a folder's source files in a cache key: one hash of their names under ``root`` (their order
    is the documents' order) and of each file's content; the folder's own path is left out, as in ``file_key``."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.relative_to(root)}\0{content_digest(path)}\n".encode())
    return {"files": len(paths), "sha256": digest.hexdigest()}


def _as_document(item: Any, index: int) -> tuple[memoryview, int]:
    """Normalise one item of the document iterable to (bytes view, tag or NO_TAG)."""
    tag = None
    if isinstance(item, tuple):
        if len(item) != 2:
            raise ValueError(f"document {index} is a tuple of {len(item)} items; give bytes or (bytes, tag)")
        item, tag = item
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise TypeError(f"document {index} is a {item.dtype} array; documents must be bytes or uint8 arrays")
        item = np.ascontiguousarray(item).reshape(-1)
    elif not isinstance(item, (bytes, bytearray, memoryview)):
        raise TypeError(f"document {index} is a {type(item).__name__}; documents must be bytes "
                        "(encode text or media with a codec first)")
    if tag is None:
        tag = NO_TAG
    elif not isinstance(tag, (int, np.integer)) or isinstance(tag, bool) or not 0 <= tag < _MAX_TAG:
        raise ValueError(f"document {index} has tag {tag!r}; a tag is a codec's tag index (an int >= 0) or None")
    return memoryview(item).cast("B"), int(tag)


def _fsync_dir(path: Path) -> None:
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _write_cache(documents: Iterable[Document], folder: Path, manifest: dict[str, Any], progress: bool,
                 shown: Path) -> dict:
    """Stream ``documents`` into ``folder``: data, offsets, tags, then the manifest last. A write that fails (disk
    full) is a ``RunFolderError`` naming the file as it will be in the cache folder ``shown``."""
    offsets, tags = array("q", [0]), array("h")
    total, pending = 0, 0
    with writing(shown / DATA_FILE, "building the byte cache"):
        data = open(folder / DATA_FILE, "wb", buffering=1 << 20)
    try:
        with tqdm(desc=f"building {manifest['name']}", unit="B", unit_scale=True, unit_divisor=1024,
                  disable=not progress, leave=False) as bar:
            for index, item in enumerate(documents):  # an error reading a document is the caller's, not ours
                view, tag = _as_document(item, index)
                try:
                    data.write(view)
                except OSError as error:
                    raise write_error(shown / DATA_FILE, error, "building the byte cache") from None
                total += view.nbytes
                offsets.append(total)
                tags.append(tag)
                pending += view.nbytes
                if pending >= 1 << 20:  # a bar update per document is too slow for millions of short ones
                    bar.update(pending)
                    pending = 0
            bar.update(pending)
            with writing(shown / DATA_FILE, "building the byte cache"):
                data.flush()
                os.fsync(data.fileno())
    finally:
        try:
            data.close()
        except OSError:  # only after an error (the data was flushed otherwise), which is the one to report
            pass
    if not tags:
        raise EmptyDataError(f"no documents to build dataset {manifest['name']!r} from; "
                             "the document iterable was empty")
    with writing(shown, "writing the byte cache's index files"):
        np.save(folder / OFFSETS_FILE, np.frombuffer(offsets, dtype=np.int64))
        np.save(folder / TAGS_FILE, np.frombuffer(tags, dtype=np.int16))
        used = sorted(int(t) for t in np.unique(np.frombuffer(tags, dtype=np.int16)) if t != NO_TAG)
        manifest = {**manifest, "documents": len(tags), "bytes": total, "tags": used,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with open(folder / MANIFEST_FILE, "w", encoding="utf-8") as file:
            file.write(json.dumps(manifest, indent=2) + "\n")
            file.flush()
            os.fsync(file.fileno())
    _fsync_dir(folder)
    return manifest


def _check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:  # also refuses nan
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")


def split_documents(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Document indices of the train and validation splits: disjoint, sorted, fixed by ``seed``.

    About ``val_fraction`` of the documents go to validation, at least one when the fraction is
    positive and there are two documents or more, and never all of them."""
    _check_val_fraction(val_fraction)
    val_count = round(count * val_fraction)
    if val_fraction > 0 and count >= 2:
        val_count = min(max(val_count, 1), count - 1)
    order = np.random.default_rng([seed, 0x5B1]).permutation(count)
    return np.sort(order[val_count:]), np.sort(order[:val_count])


class ByteDataset:
    """Documents in an on-disk cache, or one split of them (``dataset.train``, ``dataset.val``).

    Build with ``ByteDataset.build(documents, cache_dir, key=...)``; open an existing cache folder with
    ``ByteDataset.open(path)``. ``windows(seq_len, patch_size)`` gives what the trainer samples from.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], data: np.ndarray, offsets: np.ndarray,
                 tags: np.ndarray, doc_ids: np.ndarray, split: str, val_fraction: float, split_seed: int) -> None:
        self.path = path
        self.manifest = manifest
        self.split = split
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self._data, self._offsets, self._tags = data, offsets, tags
        self.doc_ids = doc_ids
        """Indices into the whole cache of this view's documents, in order."""

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def build(cls, documents: Iterable[Document], cache_dir: str | Path, *, key: dict[str, Any],
              layout: str = "packed", name: str = "dataset", val_fraction: float = 0.0, split_seed: int = 0,
              progress: bool = True) -> "ByteDataset":
        """Build (or reuse) the cache of ``documents`` under ``cache_dir`` and open it.

        ``key`` is a JSON-able dict naming the source and codec configuration; its hash names the cache
        folder ``<cache_dir>/<name>-<hash>``, so a new key builds a new cache and the same key reuses
        the old one without iterating ``documents``. ``layout`` is ``"packed"`` (text) or ``"records"``
        (one sample per document: images, clips). ``val_fraction`` of the documents (chosen by
        ``split_seed``) form ``.val``, the rest ``.train``; neither is part of the key.

        A build belongs to one process: it locks ``<cache_dir>/.<name>-<hash>.lock``, and a second builder of the
        same key waits for it (saying once for which process) and then opens the finished cache. The new owner
        removes what a killed build left (``.<name>-<hash>.building-*``). A cache that cannot be written (disk
        full, read-only) is a ``RunFolderError`` naming the file and the cause.
        """
        _check_val_fraction(val_fraction)  # before the documents are read
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r}; choose one of: {', '.join(LAYOUTS)}")
        digest = key_digest(key, layout)
        cache_dir = Path(cache_dir)
        final = cls.cache_path(cache_dir, key, layout, name)
        if not (final / MANIFEST_FILE).is_file():
            with lock_folder(cache_dir, f".{final.name}.lock", wait=True, what=f"byte cache {final.name}"):
                if not (final / MANIFEST_FILE).is_file():  # else another process built it while we waited
                    cls._build_locked(documents, final, manifest={
                        "format": FORMAT_VERSION, "name": name, "layout": layout, "key": key, "key_hash": digest},
                        progress=progress)
        dataset = cls.open(final, val_fraction=val_fraction, split_seed=split_seed)
        if dataset.manifest.get("key_hash") != digest:
            raise DataCacheError(f"{final}: the cache there was built from another key; delete it and build again")
        return dataset

    @staticmethod
    def _build_locked(documents: Iterable[Document], final: Path, manifest: dict[str, Any], progress: bool) -> None:
        """Write the cache ``final`` through a temporary folder; the caller holds the build's lock."""
        cache_dir = final.parent
        remove_leftovers(cache_dir, rf"\.{re.escape(final.name)}\.building-")  # of a killed build of this key
        with writing(cache_dir, f"creating byte cache {final.name}"):
            temp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{final.name}.building-"))
        try:
            _write_cache(documents, temp, manifest, progress, shown=final)
            try:
                os.rename(temp, final)
            except OSError:
                if not (final / MANIFEST_FILE).is_file():
                    raise DataCacheError(f"{final}: folder exists but holds no complete cache; "
                                         "delete it and build again") from None
                shutil.rmtree(temp, ignore_errors=True)  # built by a process that took no lock (an older version)
            _fsync_dir(cache_dir)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise

    @staticmethod
    def cache_path(cache_dir: str | Path, key: dict[str, Any], layout: str = "packed", name: str = "dataset") -> Path:
        """The folder ``build`` uses for ``key``: ``<cache_dir>/<name>-<hash>``; it holds a whole cache when it has
        a manifest."""
        return Path(cache_dir) / f"{name}-{key_digest(key, layout)[:16]}"

    @classmethod
    def open(cls, path: str | Path, *, val_fraction: float = 0.0, split_seed: int = 0) -> "ByteDataset":
        """Open a cache folder written by ``build``; raises ``DataCacheError`` naming what is wrong."""
        _check_val_fraction(val_fraction)  # here, not at the first use of .train or .val
        path = Path(path)
        manifest_path = path / MANIFEST_FILE
        if not manifest_path.is_file():
            raise DataCacheError(f"{path}: no {MANIFEST_FILE}, so the cache is incomplete (an interrupted build?); "
                                 "delete the folder and build again")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataCacheError(f"{manifest_path}: unreadable ({error}); delete {path} and build again") from None
        if manifest.get("format") != FORMAT_VERSION:
            raise DataCacheError(f"{path}: cache format {manifest.get('format')} is not {FORMAT_VERSION}; "
                                 "delete the folder and build again")
        try:
            offsets = np.load(path / OFFSETS_FILE, allow_pickle=False)
            tags = np.load(path / TAGS_FILE, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataCacheError(f"{path}: index files unreadable ({error}); "
                                 "delete the folder and build again") from None
        count, total = manifest["documents"], manifest["bytes"]
        data_path = path / DATA_FILE
        size = data_path.stat().st_size if data_path.is_file() else -1
        if len(offsets) != count + 1 or len(tags) != count or offsets[-1] != total or size != total:
            raise DataCacheError(f"{data_path}: {size} bytes and {len(tags)} documents on disk but the manifest says "
                                 f"{total} bytes and {count} documents; delete {path} and build again")
        data = np.memmap(data_path, dtype=np.uint8, mode="r") if total else np.zeros(0, np.uint8)
        return cls(path, manifest, data, offsets, tags, np.arange(count, dtype=np.int64), "all",
                   val_fraction, split_seed)

    def _view(self, doc_ids: np.ndarray, split: str) -> "ByteDataset":
        return ByteDataset(self.path, self.manifest, self._data, self._offsets, self._tags, doc_ids, split,
                           self.val_fraction, self.split_seed)

    @property
    def train(self) -> "ByteDataset":
        """The training documents (all of them when ``val_fraction`` is 0)."""
        return self._view(split_documents(self.manifest["documents"], self.val_fraction, self.split_seed)[0], "train")

    @property
    def val(self) -> "ByteDataset":
        """The validation documents: disjoint from ``train``, possibly empty."""
        return self._view(split_documents(self.manifest["documents"], self.val_fraction, self.split_seed)[1], "val")

    # -- reading --------------------------------------------------------------------------------
    @property
    def layout(self) -> str:
        return self.manifest["layout"]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def lengths(self) -> np.ndarray:
        """Byte length of each document of this view."""
        return self._offsets[self.doc_ids + 1] - self._offsets[self.doc_ids]

    @property
    def num_bytes(self) -> int:
        """Bytes of data in this view (specials not counted)."""
        return int(self.lengths.sum())

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What identifies this view's data: recorded in checkpoints so a resume can check it."""
        return {"name": self.name, "key_hash": self.manifest["key_hash"], "layout": self.layout,
                "split": self.split, "documents": len(self), "bytes": self.num_bytes}

    def __len__(self) -> int:
        return len(self.doc_ids)

    def document(self, index: int) -> tuple[bytes, int | None]:
        """Document ``index`` of this view as ``(bytes, tag or None)``."""
        doc = int(self.doc_ids[index])
        tag = int(self._tags[doc])
        return bytes(self._data[self._offsets[doc]:self._offsets[doc + 1]]), (None if tag == NO_TAG else tag)

    def __iter__(self) -> Iterator[tuple[bytes, int | None]]:
        for index in range(len(self)):
            yield self.document(index)

    def windows(self, seq_len: int, patch_size: int, num_tags: int = tokens.DEFAULT_NUM_TAGS) -> "Windows":
        """The windows of ``seq_len`` ids this view yields in its layout (see the module docstring)."""
        if self.layout == "records":
            return RecordWindows(self, seq_len, patch_size, num_tags)
        return PackedWindows(self, seq_len, patch_size, num_tags)

    def __repr__(self) -> str:
        return (f"ByteDataset({str(self.path)!r}, layout={self.layout!r}, split={self.split!r}, "
                f"documents={len(self)}, bytes={self.num_bytes})")


def document_windows(data: np.ndarray, tag: int | None, layout: str, seq_len: int, patch_size: int,
                     num_tags: int = tokens.DEFAULT_NUM_TAGS, offsets: np.ndarray | None = None) -> "Windows":
    """The fixed windows of documents held back to back in ``data`` (uint8; ``offsets``: where each starts, and
    the end; default one document) framed in ``layout``, as validation reads them from a cache holding only them,
    without writing one. ``np.broadcast_to(np.uint8(0), (n,))`` lays out where the bytes and the special ids of an
    ``n``-byte document fall without memory for its bytes."""
    offsets = np.array([0, len(data)], dtype=np.int64) if offsets is None else np.asarray(offsets, dtype=np.int64)
    count = len(offsets) - 1
    manifest = {"layout": layout, "name": "document", "documents": count}
    tags = np.full(count, NO_TAG if tag is None else tag, dtype=np.int16)
    view = ByteDataset(Path(), manifest, data, offsets, tags, np.arange(count), "all", 0.0, 0)
    return view.windows(seq_len, patch_size, num_tags)


def record_prompt(patch_size: int, tag: int | None = None, num_tags: int = tokens.DEFAULT_NUM_TAGS) -> list[int]:
    """The header patch that starts a record in the ``records`` layout: ``[BOS, tag or PAD, PAD, ...]``.

    A generator feeds it as the prompt of a new record, so the model starts on a patch boundary."""
    if patch_size < 2:
        raise ValueError(f"patch_size={patch_size} must be at least 2 to hold BOS and a tag")
    tag_token = tokens.PAD_ID if tag is None else tokens.tag_id(tag, num_tags)
    return [tokens.BOS_ID, tag_token] + [tokens.PAD_ID] * (patch_size - 2)


def prompt_ids(tag: int | None, layout: str, patch_size: int, data: bytes,
               num_tags: int = tokens.DEFAULT_NUM_TAGS) -> list[int]:
    """The ids a generation starts from: the framing a training document of ``layout`` begins with (with the
    codec's ``tag``, None for raw bytes), then ``data``."""
    if layout == "records":
        return record_prompt(patch_size, tag, num_tags) + list(data)
    header = [tokens.BOS_ID] + ([tokens.tag_id(tag, num_tags)] if tag is not None else [])
    return header + list(data)


def record_ids(length: int | np.ndarray, patch_size: int) -> int | np.ndarray:
    """Ids a document of ``length`` bytes takes in the ``records`` layout: its header patch, its bytes and EOS,
    padded to whole patches. ``length`` may be an array of lengths (int64)."""
    return patch_size + -(-(length + 1) // patch_size) * patch_size


def _record_window_ends(lengths: np.ndarray, patch_size: int, seq_len: int) -> np.ndarray:
    """For each document of a records-layout view: the windows of ``seq_len`` ids up to the end of its record."""
    return np.cumsum(-(-record_ids(np.asarray(lengths, dtype=np.int64), patch_size) // seq_len))


def whole_document_windows(lengths: np.ndarray, patch_size: int, seq_len: int, cap: int) -> int:
    """Validation windows that cover the most leading documents of a records-layout view whole within ``cap``
    windows (at least the first document, whole): validation then scores exactly those documents."""
    ends = _record_window_ends(lengths, patch_size, seq_len)
    if not len(ends):
        return 1
    inside = ends[ends <= cap]
    return int(inside[-1]) if len(inside) else int(ends[0])


def covered_documents(lengths: np.ndarray, patch_size: int, seq_len: int, windows: int) -> int:
    """How many leading documents of a records-layout view lie wholly inside its first ``windows`` windows."""
    return int(np.searchsorted(_record_window_ends(lengths, patch_size, seq_len), windows, side="right"))


# -- windows -------------------------------------------------------------------------------------
def spread_indices(total: int, count: int) -> Sequence[int]:
    """``count`` of the indices ``0 .. total - 1`` evenly spaced, in order (all of them if there are fewer)."""
    if count >= total:
        return range(total)
    return [index * total // count for index in range(max(count, 0))]


def _concat_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])`` without a Python loop."""
    ends = np.cumsum(counts)
    return np.arange(ends[-1] if len(ends) else 0, dtype=np.int64) - np.repeat(ends - counts - starts, counts)


class Windows:
    """Fixed-length windows of ids read from a dataset view; subclasses define the layout.

    Two ways in: ``window(i)`` for the ``len(self)`` fixed, non-overlapping windows (validation scores
    ``fixed(count)`` of them, the same set every time) and ``batch(seed, step, ...)`` for random training
    windows, a pure function of its arguments."""

    seq_len: int
    num_choices: int
    """How many distinct random windows there are (``choice`` takes 0 .. num_choices - 1)."""
    choice_stride: int = 1
    """How far apart two windows of one training epoch are, in choices (a stream's: ``seq_len``)."""

    def __init__(self, dataset: ByteDataset, seq_len: int, patch_size: int, num_tags: int) -> None:
        if len(dataset) == 0:
            raise ValueError(f"dataset {dataset.name!r} ({dataset.split} split) has no documents to read windows from")
        if seq_len < 1 or patch_size < 1 or seq_len % patch_size:
            raise ValueError(f"seq_len={seq_len} must be a positive multiple of patch_size={patch_size}")
        tags = dataset._tags[dataset.doc_ids].astype(np.int64)
        if len(tags) and tags.max() >= num_tags:
            raise ValueError(f"dataset {dataset.name!r} has tag {tags.max()} but the model has num_tags={num_tags}; "
                             "raise num_tags in the model config")
        self.dataset = dataset
        self.seq_len = seq_len
        self.patch_size = patch_size
        self._data = dataset._data
        self._starts = dataset._offsets[dataset.doc_ids]
        self._lengths = dataset.lengths
        self._tag_ids = np.where(tags >= 0, tokens.FIRST_TAG_ID + tags, NO_TAG)

    def __len__(self) -> int:
        raise NotImplementedError

    def window(self, index: int) -> np.ndarray:
        """Fixed window ``index`` as (seq_len,) int64 ids."""
        raise NotImplementedError

    def choice(self, value: int) -> np.ndarray:
        """Random window number ``value`` as (seq_len,) int64 ids."""
        raise NotImplementedError

    def fixed(self, count: int) -> np.ndarray:
        """``count`` fixed windows (all of them if there are fewer): (n, seq_len) int64, in order."""
        indices = self.fixed_indices(count)
        return (np.stack([self.window(i) for i in indices]) if len(indices)
                else np.zeros((0, self.seq_len), np.int64))

    def fixed_indices(self, count: int) -> Sequence[int]:
        """Which windows ``fixed(count)`` returns: the first ``count`` here; ``PackedWindows`` spreads them."""
        return range(min(count, len(self)))

    def batch(self, seed: int, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Rank ``rank``'s ``batch_size`` windows of training step ``step``: (batch_size, seq_len) int64.

        Windows are read in shuffled epochs, each a pure function of ``seed`` and its number, and each rank takes
        its own slice of the step's global batch (:func:`bytemodels.window_order.step_choices`)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        mine = step_choices(seed, step, batch_size, self.num_choices, self.choice_stride, rank, world_size)
        return np.stack([self.choice(int(v)) for v in mine])

    def _read(self, sources: np.ndarray, out: np.ndarray, targets: np.ndarray) -> None:
        """``out[targets] = data[sources]``, slicing the memmap when the sources are one run of bytes."""
        if not len(sources):
            return
        first, last = sources[0], sources[-1]
        if last - first + 1 == len(sources):  # contiguous: a plain slice reads fastest
            out[targets] = self._data[first:last + 1]
        else:
            out[targets] = self._data[sources]


class PackedWindows(Windows):
    """Documents joined as ``BOS [tag] bytes EOS`` into one stream; a window starts at any position."""

    def __init__(self, dataset: ByteDataset, seq_len: int, patch_size: int,
                 num_tags: int = tokens.DEFAULT_NUM_TAGS) -> None:
        super().__init__(dataset, seq_len, patch_size, num_tags)
        self._header = np.where(self._tag_ids >= 0, 2, 1)
        stream_lengths = self._header + self._lengths + 1
        self._stream_starts = np.concatenate(([0], np.cumsum(stream_lengths)))
        self.total = int(self._stream_starts[-1])
        """Length of the joined stream in ids."""
        self.num_choices = max(self.total - seq_len + 1, 1)
        self.choice_stride = seq_len

    def __len__(self) -> int:
        return -(-self.total // self.seq_len)

    def window(self, index: int) -> np.ndarray:
        return self.window_at(index * self.seq_len)

    def fixed_indices(self, count: int) -> Sequence[int]:
        """``count`` windows evenly spaced over the stream (all if there are fewer), in order.

        Spread rather than leading: held-out files are often sorted (by source, by length), so the first
        windows can score far from the whole split; on TinyStories' validation text the first 64 of 773
        windows scored 1.23 bits/byte where all of them scored 1.35."""
        return spread_indices(len(self), count)

    def choice(self, value: int) -> np.ndarray:
        return self.window_at(value)

    def window_at(self, start: int) -> np.ndarray:
        """The ``seq_len`` ids of the stream from position ``start`` (PAD past its end)."""
        out = np.full(self.seq_len, tokens.PAD_ID, dtype=np.int64)
        end = min(start + self.seq_len, self.total)
        if end <= start:
            return out
        first = int(np.searchsorted(self._stream_starts, start, side="right")) - 1
        last = int(np.searchsorted(self._stream_starts, end - 1, side="right")) - 1
        docs = slice(first, last + 1)
        doc_start, header, length = self._stream_starts[docs], self._header[docs], self._lengths[docs]
        # Bytes of each document inside [start, end): byte indices [lo, hi) of the document.
        lo = np.clip(start - doc_start - header, 0, length)
        hi = np.clip(end - doc_start - header, 0, length)
        sources, targets, counts = self._starts[docs] + lo, doc_start + header + lo - start, hi - lo
        if last - first < 32:  # a few documents: one slice each beats building index arrays
            for source, target, count in zip(sources.tolist(), targets.tolist(), counts.tolist()):
                out[target:target + count] = self._data[source:source + count]
        else:
            self._read(_concat_ranges(sources, counts), out, _concat_ranges(targets, counts))
        # Specials at their stream positions, where they fall inside the window.
        tag_ids = self._tag_ids[docs]
        tagged = tag_ids >= 0
        positions = np.concatenate((doc_start, doc_start[tagged] + 1, doc_start + header + length))
        values = np.concatenate((np.full(len(doc_start), tokens.BOS_ID), tag_ids[tagged],
                                 np.full(len(doc_start), tokens.EOS_ID)))
        inside = (positions >= start) & (positions < end)
        out[positions[inside] - start] = values[inside]
        return out


class RecordWindows(Windows):
    """One record per window: header patch, bytes, EOS, PAD; long records span several windows."""

    def __init__(self, dataset: ByteDataset, seq_len: int, patch_size: int,
                 num_tags: int = tokens.DEFAULT_NUM_TAGS) -> None:
        super().__init__(dataset, seq_len, patch_size, num_tags)
        if patch_size < 2:
            raise ValueError(f"patch_size={patch_size} must be at least 2 for the records layout (BOS and a tag)")
        record_lengths = patch_size + -(-(self._lengths + 1) // patch_size) * patch_size
        windows_per_record = -(-record_lengths // seq_len)
        self._first_window = np.concatenate(([0], np.cumsum(windows_per_record)))
        self.num_choices = int(self._first_window[-1])

    def __len__(self) -> int:
        return self.num_choices

    def choice(self, value: int) -> np.ndarray:
        return self.window(value)

    def window(self, index: int) -> np.ndarray:
        record = int(np.searchsorted(self._first_window, index, side="right")) - 1
        lo = (index - int(self._first_window[record])) * self.seq_len  # record position of the window's first id
        size, length = self.patch_size, int(self._lengths[record])
        out = np.full(self.seq_len, tokens.PAD_ID, dtype=np.int64)
        if lo == 0:
            out[0] = tokens.BOS_ID
            if self._tag_ids[record] >= 0:
                out[1] = self._tag_ids[record]
        byte_lo, byte_hi = max(lo - size, 0), min(lo + self.seq_len - size, length)
        if byte_hi > byte_lo:
            start = int(self._starts[record])
            out[byte_lo + size - lo:byte_hi + size - lo] = self._data[start + byte_lo:start + byte_hi]
        eos = size + length - lo
        if 0 <= eos < self.seq_len:
            out[eos] = tokens.EOS_ID
        return out
