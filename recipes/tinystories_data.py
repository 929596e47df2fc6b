"""TinyStories for the recipe: the stories from local files or the hub, split into stories, and cached as bytes.

``StorySource`` says where the stories come from (``local_source``, ``hub_source``); ``byte_datasets`` turns them
into the (train, validation) ``ByteDataset`` the trainer reads, built once under the cache folder; ``data_record``
is what a checkpoint records of them, so ``--resume`` reads the same stories (``source_from_args``).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bytemodels.app.hub import HubError, hub_unreachable_reason
from bytemodels.app.recipe import RecipeError
from bytemodels.data import MANIFEST_FILE, ByteDataset, EmptyDataError, file_key, key_digest
from bytemodels.runfolder import RunFolderError, write_error
from recipes.tinystories_instruct import is_instruct_entry, make_instruct_entry

RECIPE = "tinystories"
"""Names the byte caches (as the recipe of ``python -m recipes.tinystories``)."""
SEPARATOR = "<|endoftext|>"
"""Ends each story in the original ``TinyStories*.txt`` files."""
HUB_DATASET = "roneneldan/TinyStories"
HUB_V2_FILES = {"train": "TinyStoriesV2-GPT4-train.txt", "validation": "TinyStoriesV2-GPT4-valid.txt"}
"""The GPT-4-only "V2" stories, plain text files in the same hub repository."""
HUB_INSTRUCT = "roneneldan/TinyStoriesInstruct"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinystories"
"""The offline copy of real TinyStories beside the checkout (when there is one)."""
LOCAL_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
"""File suffix -> the ``datasets`` loader that reads it."""
TEXT_COLUMNS = ("text", "story")
"""Column holding the story in JSON and parquet files, first match wins."""


# -- 1. stories: one Dataset per split, from the hub or from local files ---------------------------------
@dataclass
class StorySource:
    """Where the stories come from. ``load()`` reads them (once) as a ``DatasetDict`` with a ``text`` column."""

    description: str
    """For messages: a hub name or a local path."""
    key: dict[str, Any]
    """Identifies the data for the byte cache: hub name and revision, or ``{"files": {split: [file_key, ...]}}``."""
    splits: tuple[str, ...]
    """``("train", "validation")``, or ``("train",)`` when validation is held out of train."""
    loader: Callable[[], Any] = field(repr=False)
    _loaded: Any = field(default=None, repr=False)

    def load(self) -> Any:
        if self._loaded is None:
            self._loaded = self.loader()
        return self._loaded

    def split_key(self, split: str) -> dict[str, Any]:
        """What identifies one split's data: local files are keyed split by split, so editing the training
        files leaves the validation cache, and the fingerprint a resume checks, as they were."""
        files = self.key.get("files")
        return self.key if files is None else {"files": files[split]}


def offline_hint(instruct: bool = False) -> str:
    """What to pass instead of the hub: the offline copy beside the checkout when there is one."""
    if SHARED_DATA.is_dir():
        hint = f"pass --data {os.path.relpath(SHARED_DATA)} (real TinyStories beside this checkout)"
    else:
        hint = "pass --data PATH (a TinyStories .txt file or folder, JSON/JSONL or parquet)"
    return hint + ("; with --instruct, plain stories are turned into instruct entries" if instruct else "")


def hub_source(instruct: bool = False, v2: bool = False, revision: str = "main") -> StorySource:
    """TinyStories (or TinyStoriesInstruct, or the V2 GPT-4 files) on the Hugging Face hub."""
    name = HUB_INSTRUCT if instruct else HUB_DATASET
    data_files = HUB_V2_FILES if v2 and not instruct else None
    # The .txt files on the hub load as one row per line; the default TinyStories data is one row per story.
    line_rows = instruct or data_files is not None

    def load() -> Any:
        import datasets

        reason = hub_unreachable_reason()
        if reason:
            raise HubError(f"cannot download {name} from the Hugging Face hub ({reason}); {offline_hint(instruct)}")
        try:
            loaded = datasets.load_dataset(name, data_files=data_files, revision=revision)
        except Exception as error:  # any failure of the download is one line for the user
            if full := _disk_failure(error, "the Hugging Face datasets cache"):
                raise full from None
            raise HubError(f"could not load {name} (revision {revision}) from the hub: {error}; "
                              f"{offline_hint(instruct)}") from None
        return datasets.DatasetDict({split: stories_from_lines(loaded[split]) if line_rows
                                     else story_column(loaded[split], name) for split in ("train", "validation")})

    key = {"hub": name, "revision": revision, "data_files": data_files}
    return StorySource(f"{name} (hub)", key, ("train", "validation"), load)


def split_of(path: Path) -> str | None:
    """``train`` or ``validation`` when a file name says so (``train.txt``, ``TinyStories-valid.txt``)."""
    words = re.split(r"[^a-z]+", path.name.lower())
    if "train" in words:
        return "train"
    if {"valid", "validation", "val", "dev"} & set(words):
        return "validation"
    return None


def local_files(path: Path) -> dict[str, list[Path]]:
    """Files of each split under ``--data``: a file is the train split; a folder with train and validation
    files (``train.txt`` and ``valid.txt``) gives both, otherwise all its files are the train split."""
    if path.is_file():
        if path.suffix.lower() not in LOCAL_BUILDERS:
            raise RecipeError(f"--data {path}: unknown file type {path.suffix or '(none)'}; "
                              f"give one of {', '.join(LOCAL_BUILDERS)}")
        return {"train": [path]}
    if not path.is_dir():
        raise RecipeError(f"--data {path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in LOCAL_BUILDERS)
    by_split: dict[str, list[Path]] = {}
    for file in files:
        by_split.setdefault(split_of(file) or "", []).append(file)
    if by_split.get("train") and by_split.get("validation"):
        return {"train": by_split["train"], "validation": by_split["validation"]}
    if not files:
        raise RecipeError(f"--data {path}: the folder holds no {', '.join(LOCAL_BUILDERS)} files")
    return {"train": files}


def local_source(path: str | Path, cache_dir: Path | None = None) -> StorySource:
    """Stories from local files, read through the ``datasets`` loader for their type (text, json, parquet)."""
    path = Path(path).expanduser()
    by_split = local_files(path)
    suffixes = {LOCAL_BUILDERS[f.suffix.lower()] for files in by_split.values() for f in files}
    if len(suffixes) > 1:
        raise RecipeError(f"--data {path}: mixes {' and '.join(sorted(suffixes))} files; keep one kind in the folder")
    builder = suffixes.pop()
    empty = [f for files in by_split.values() for f in files if f.stat().st_size == 0]
    if empty:  # the datasets loader fails on them with a message that does not say so
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise RecipeError(f"--data {path}: {empty[0]} is empty{more}")

    key = {"files": {split: [file_key(f) for f in files] for split, files in by_split.items()}}

    def load() -> Any:
        import datasets

        data_files = {split: [str(f) for f in files] for split, files in by_split.items()}
        hf_cache = str(cache_dir / "hf-datasets") if cache_dir is not None else None
        try:
            if builder == "text":  # read here, not as lines by datasets: a file ends a story
                return datasets.DatasetDict({
                    split: file_stories(files, hf_cache, key_digest({"files": key["files"][split]}, "text"))
                    for split, files in data_files.items()})
            # datasets keys its own cache of local files by modification time: read them again (this runs only
            # when the byte cache, keyed by content, has to be built), so an edit that keeps the time is seen.
            loaded = datasets.load_dataset(builder, data_files=data_files, cache_dir=hf_cache,
                                           download_mode="force_redownload")
        except Exception as error:  # unreadable or malformed files: name them, no traceback
            if _caused_by(error, KeyboardInterrupt):  # datasets wraps a Ctrl-C in its own error
                raise KeyboardInterrupt from None
            if full := _disk_failure(error, hf_cache or "the Hugging Face datasets cache"):
                raise full from None
            raise RecipeError(f"--data {path}: could not read the {builder} files ({_innermost(error)})") from None
        try:  # reading the column writes to the datasets cache as well
            return datasets.DatasetDict({split: story_column(loaded[split], str(path)) for split in by_split})
        except Exception as error:
            if full := _disk_failure(error, hf_cache or "the Hugging Face datasets cache"):
                raise full from None
            raise

    return StorySource(str(path), key, tuple(by_split), load)


def _disk_failure(error: BaseException, cache: str) -> RunFolderError | None:
    """The one-line error for a failure of the ``datasets`` loader that is its cache's disk being full or
    read-only (it wraps the OSError in its own errors), or None when it is something else."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return write_error(cache, error, "the datasets loader wrote its cache")
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``error`` or an exception it was raised from (or while handling) is a ``kind``."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _innermost(error: BaseException) -> BaseException:
    """The exception ``error`` was raised from, followed to the first one (datasets wraps the reader's own)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def split_stories(lines: Iterable[str]) -> Iterator[str]:
    """The stories in ``lines`` (without line ends): a story ends where a line holds ``<|endoftext|>``, and at the
    end of the lines; blank stories are left out."""
    pending: list[str] = []
    for line in lines:
        parts = line.split(SEPARATOR)
        pending.append(parts[0])
        for part in parts[1:]:
            story = "\n".join(pending).strip()
            if story:
                yield story
            pending = [part]
    story = "\n".join(pending).strip()
    if story:
        yield story


def _join_stories(lines: Any) -> Iterator[dict[str, str]]:
    """Rows of ``{"text": story}`` from a ``Dataset`` of one row per line."""
    rows = (line for batch in lines.iter(batch_size=10_000) for line in batch["text"])
    for story in split_stories(rows):
        yield {"text": story}


def _stories_of_files(files: list[str]) -> Iterator[dict[str, str]]:
    """Rows of ``{"text": story}`` from UTF-8 text files: each file ends a story, so a folder of one story per
    file gives one story per file, and ``<|endoftext|>`` lines separate stories within a file."""
    for file in files:
        try:
            with open(file, encoding="utf-8") as handle:
                for story in split_stories(line.rstrip("\n") for line in handle):
                    yield {"text": story}
        except UnicodeDecodeError as error:
            raise RecipeError(f"{file} is not UTF-8 text ({error.reason})") from None
        except OSError as error:
            raise RecipeError(f"{file} cannot be read ({error.strerror or error})") from None


def file_stories(files: list[str], cache_dir: str | None, fingerprint: str) -> Any:
    """One row per story of the text ``files`` (see ``_stories_of_files``) as a ``Dataset``.

    ``fingerprint`` names the content of the files: datasets reuses its copy only for the same content."""
    import datasets

    try:
        return datasets.Dataset.from_generator(_stories_of_files, gen_kwargs={"files": files}, cache_dir=cache_dir,
                                               fingerprint=fingerprint)
    except Exception:
        if next(_stories_of_files(files), None) is None:  # datasets cannot generate zero rows: no story is empty
            return datasets.Dataset.from_dict({"text": []},
                                              features=datasets.Features({"text": datasets.Value("string")}))
        raise


def stories_from_lines(lines: Any, cache_dir: str | None = None) -> Any:
    """One row per story from a text ``Dataset`` of one row per line (how ``datasets`` reads ``.txt``).

    Lines rather than whole files: a file is one Arrow string in ``sample_by="document"`` mode, which
    cannot exceed 2 GiB (the V2 train file is 2.2 GB)."""
    import datasets

    return datasets.Dataset.from_generator(_join_stories, gen_kwargs={"lines": lines}, cache_dir=cache_dir)


def story_column(dataset: Any, where: str) -> Any:
    """``dataset`` with only its story column, named ``text``."""
    column = next((name for name in TEXT_COLUMNS if name in dataset.column_names), None)
    if column is None:
        raise RecipeError(f"{where}: no story column; expected one of {', '.join(TEXT_COLUMNS)} "
                          f"but found {', '.join(dataset.column_names)}")
    dataset = dataset.select_columns([column])
    return dataset.rename_column(column, "text") if column != "text" else dataset


# -- 2. bytes on disk: the codec's bytes of each story, cached once ------------------------------------------
def story_documents(stories: Callable[[], Any], codec: Any, instruct_seed: int | None) -> Iterator[tuple[bytes, int]]:
    """``(bytes, tag)`` per story; with ``instruct_seed`` plain stories become instruct entries.

    ``stories`` is called on the first document only, so a cache that already exists is opened without
    reading (or downloading) anything."""
    index = 0
    for batch in stories().iter(batch_size=1000):
        for text in batch["text"]:
            text = (text or "").strip()
            if not text:
                continue
            if instruct_seed is not None and not is_instruct_entry(text):
                text = make_instruct_entry(text, seed=instruct_seed * 1_000_003 + index)
            yield codec.encode(text), codec.tag
            index += 1


def byte_datasets(source: StorySource, codec: Any, cache_dir: Path, *, instruct_seed: int | None,
                  val_fraction: float, split_seed: int) -> tuple[Any, Any]:
    """(train, validation) ``ByteDataset`` views of the source's stories, built once under ``cache_dir``.

    Each split is cached under its own key (``StorySource.split_key``); a split without a story is a
    ``RecipeError`` naming it."""
    key = {"recipe": RECIPE, "codec": codec.config(),
           "instruct": None if instruct_seed is None else {"built_from_plain_stories_seed": instruct_seed}}
    name = RECIPE + ("-instruct" if instruct_seed is not None else "")

    def build(split: str, fraction: float) -> Any:
        split_key, split_name = {**key, "source": source.split_key(split), "split": split}, f"{name}-{split}"
        if not (ByteDataset.cache_path(cache_dir, split_key, "packed", split_name) / MANIFEST_FILE).is_file():
            source.load()  # read (or download) now: a failure is reported before any progress bar starts
        documents = story_documents(lambda: source.load()[split], codec, instruct_seed)
        try:
            return ByteDataset.build(documents, cache_dir, key=split_key, layout="packed", name=split_name,
                                     val_fraction=fraction, split_seed=split_seed)
        except EmptyDataError:
            where = f"--data {source.description}" if "files" in source.key else source.description
            raise RecipeError(f"{where}: the {split} split holds no stories "
                              f"(only blank text and {SEPARATOR} lines)") from None

    if "validation" in source.splits:
        return build("train", 0.0).train, build("validation", 0.0).train
    everything = build("train", val_fraction)
    return everything.train, everything.val


def check_held_out(train_data: Any, val_data: Any, source: StorySource, val_fraction: float, asked: bool) -> None:
    """Say so when ``val_fraction`` held out no story (one story in all): a ``RecipeError`` when ``--val-fraction``
    was given, else a warning on stderr; the run then trains without validation."""
    if len(val_data) or val_fraction == 0:
        return
    problem = (f"--val-fraction {val_fraction:g} holds out none of the {len(train_data):,} stories of "
               f"{source.description} (each file is one story or more, split at {SEPARATOR} lines)")
    remedy = "give two stories or more, or a valid.txt beside train.txt in a --data folder"
    if asked:
        raise RecipeError(f"{problem}; {remedy}")
    print(f"warning: {problem}, so the run has no validation; {remedy} (--val-fraction 0 trains without one quietly)",
          file=sys.stderr)



# -- 3. what a checkpoint records, and reading it back ---------------------------------------------
def source_from_args(args: argparse.Namespace, recorded: dict[str, Any] | None, cache_dir: Path) -> StorySource:
    """``--data``, else the data a resumed run recorded, else the hub."""
    if args.data:
        return local_source(args.data, cache_dir)
    if recorded and recorded.get("path"):
        return local_source(recorded["path"], cache_dir)
    if recorded and recorded.get("hub"):
        return hub_source(instruct=recorded["hub"] == HUB_INSTRUCT, v2=bool(recorded.get("v2")),
                          revision=recorded.get("revision", "main"))
    return hub_source(instruct=args.instruct, v2=args.v2, revision=args.revision)


def data_record(source: StorySource, instruct_seed: int | None, val_fraction: float,
                split_seed: int) -> dict[str, Any]:
    """What a checkpoint records about its data, so ``--resume`` rebuilds the same splits without flags."""
    if "files" in source.key:
        where = {"path": str(Path(source.description).resolve())}
    else:
        where = {"hub": source.key["hub"], "revision": source.key["revision"],
                 "v2": source.key["data_files"] is not None}
    return {**where, "instruct_seed": instruct_seed, "val_fraction": val_fraction, "split_seed": split_seed}
