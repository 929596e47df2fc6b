"""Train a byte-level MEGABYTE model on TinyStories and sample stories from it.

TinyStories (Eldan & Li 2023, arXiv 2305.07759) is a set of short stories that a small model can learn
to write fluently. This recipe picks the data, the text codec and a model preset and hands them to
``bytemodels.Trainer``; the loop, checkpoints, metrics and curve are the trainer's.

Commands, in the order you would run them (from the checkout)::

    # 1. train: on CPU the defaults finish within --time and print stories at every evaluation
    python -m recipes.tinystories --data ../shared/data/tinystories        # offline copy beside the checkout
    python -m recipes.tinystories                                          # GPU: base preset, data from the hub
    python -m recipes.tinystories --resume --time 20m                      # continue runs/tinystories

    # 2. sample a story from a checkpoint (or `bytemodels sample runs/tinystories --prompt ...`)
    python -m recipes.tinystories sample --checkpoint runs/tinystories --prompt "Once upon a time"

    # 3. fine-tune on TinyStories-Instruct entries, then prompt with them
    python -m recipes.tinystories --instruct --init runs/tinystories --data ../shared/data/tinystories
    python -m recipes.tinystories sample --checkpoint runs/tinystories-instruct \\
        --prompt "Features: Dialogue\\nWords: cat, ball, happy\\nStory: "

Every stage can be re-run: the stories are read through ``datasets`` (the hub, or local ``.txt`` files
with ``<|endoftext|>`` separators, JSON/JSONL or parquet) and cached once as bytes under ``--cache-dir``.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bytemodels.app.flags import COUNT, FRACTION, NON_NEGATIVE, apply_overrides, number, seed as seed_flag
from bytemodels.app.hub import HubError, hub_unreachable_reason
from bytemodels.app.recipe import (RecipeError, add_model_and_training_arguments, add_run_arguments,
                                    check_resume_flags, defaults_epilog, device_kind, make_trainer,
                                    model_config_from_args, no_result_line, open_run, print_done, recipe_prog,
                                    resolve_device, run_command, stop_if_interrupted, training_flags)
from bytemodels.config import MegabyteConfig
from bytemodels.data import MANIFEST_FILE, ByteDataset, EmptyDataError, file_key, key_digest, prompt_ids
from bytemodels.runfolder import RunFolderError, write_error
from recipes.tinystories_instruct import STORY_FIELD, is_instruct_entry, make_instruct_entry, story_prompt

RECIPE = "tinystories"
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
DEFAULT_VAL_FRACTION = 0.05
"""Stories held out for validation when the data has no validation split and --val-fraction is not given."""

PLAIN_PROMPTS = ("Once upon a time", "One day, a little")
INSTRUCT_PROMPT = "Features: Dialogue\nWords: cat, ball, happy\nStory: "

#: What the recipe sets where it differs from the preset and TrainConfig defaults, by device kind. On a CPU
#: the budget is small: windows of 1,024 bytes hold a whole story (30 min: 1.40 bits/byte over the validation
#: stories, 1.45 with 4 x 256); 4 of them per step run 17% more bytes per second than 2 and learn more in the
#: same time (whole validation text, 10 min: 1.317 against 1.330), and a linear decay to zero beats a cosine to
#: a tenth of the peak (1.309). With QK-norm (the model's default) lr 6e-3 beats 4e-3 and 8e-3 (4,073 steps:
#: 1.275 against 1.280 and 1.277). The tiny preset's local model widened from 64 to 128 learns more per second
#: despite fewer steps (10 min: 1.330 against 1.418 bits/byte with 2 windows per step). Compiling costs about a
#: minute and then runs 1.6x the steps per second on a 2-core CPU (it falls back to uncompiled training where it
#: cannot compile).
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": dict(preset="tiny", model=dict(max_seq_len=1024, dims=(128, 128)), time="10m", batch_size=4, lr=6e-3,
                min_lr=0.0, schedule="linear", warmup_steps=100, eval_every=1000, eval_windows=64,
                checkpoint_every=1000, sample_bytes=600, compile=True),
    "gpu": dict(preset="base", model={}, time="1h", batch_size=32, lr=6e-4, min_lr=6e-5, warmup_steps=500,
                eval_every=1000, eval_windows=256, checkpoint_every=2000, sample_bytes=1500),
}
#: Fine-tuning on instruct entries starts from trained weights: a lower peak rate and a shorter budget.
INSTRUCT_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": dict(time="3m", lr=1e-3, min_lr=1e-4, warmup_steps=50, eval_every=500),
    "gpu": dict(time="20m", lr=2e-4, min_lr=2e-5, warmup_steps=100, eval_every=500),
}


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


# -- 3. stories during training: printed, and written through the text codec ---------------------------------
def make_sample_fn(codec: Any, prompts: Sequence[str], max_new_bytes: int, temperature: float = 0.8,
                   top_k: int | None = 50, seed: int = 0) -> Callable[[Any, int, Path], None]:
    """The trainer's ``sample_fn``: one story per prompt, printed and saved as ``samples/step_NNNNNN_I.txt``."""
    from tqdm.auto import tqdm

    done: set[int] = set()

    def sample_stories(model: Any, step: int, folder: Path) -> None:
        if step in done:  # the trainer samples at the end too, which may be a step it just sampled
            return
        done.add(step)
        prefix = prompt_ids(codec.tag, "packed", model.config.patch_size, b"", model.config.num_tags)
        for index, prompt in enumerate(prompts):
            data = codec.encode(prompt)
            story = data + model.generate(data, max_new_bytes, temperature=temperature, top_k=top_k,
                                          seed=(seed + index) % 2**64, prefix_ids=prefix)
            path = codec.write_bytes(story, folder / f"step_{step:06d}_{index}.txt")
            tqdm.write(f"--- story {index + 1} at step {step} ({path}) ---\n{codec.decode(story)}\n")

    return sample_stories


# -- 4. training ------------------------------------------------------------------------------------------
def recipe_defaults(kind: str, instruct: bool) -> dict[str, Any]:
    """The recipe's defaults for this device kind (and for fine-tuning on instruct entries)."""
    return {**DEVICE_DEFAULTS[kind], **(INSTRUCT_DEFAULTS[kind] if instruct else {})}


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


def init_weights(trainer: Any, checkpoint: str) -> None:
    """Start ``trainer``'s model from the weights of a checkpoint (fine-tuning), not from random ones."""
    from bytemodels.checkpoint import open_checkpoint
    from bytemodels.model import Megabyte

    folder, _, _ = open_checkpoint(checkpoint)
    trained = Megabyte.from_pretrained(folder)
    try:
        trainer.model.load_state_dict(trained.state_dict())
    except RuntimeError:  # the model flags changed a shape: the weights cannot be reused
        raise RecipeError(f"--init {checkpoint}: the model flags change the shape of its model; drop them "
                          "(dropout is the one that may change)") from None


def checkpoint_model_config(checkpoint: str) -> Any:
    """The model config of a checkpoint or run folder (a fine-tuning run keeps the shape it starts from)."""
    from bytemodels.checkpoint import open_checkpoint

    folder, _, _ = open_checkpoint(checkpoint)
    return MegabyteConfig.load(folder / "config.json")


def default_init() -> str:
    """A fine-tuning run starts from ``runs/tinystories`` when that holds a checkpoint."""
    from bytemodels.checkpoint import latest_checkpoint

    if latest_checkpoint(Path("runs") / RECIPE) is None:
        raise RecipeError("--instruct fine-tunes a trained model: pass --init CHECKPOINT (e.g. the run folder of "
                          f"{recipe_prog(RECIPE)})")
    return str(Path("runs") / RECIPE)


def story_model_config(args: argparse.Namespace, defaults: dict[str, Any], init: str | None) -> MegabyteConfig:
    """The model of a new run: the preset (or the ``--init`` checkpoint's shape) with the model flags applied."""
    if init:
        try:
            return apply_overrides(checkpoint_model_config(init), args)
        except ValueError as error:  # config validation names the field; the flag has the same name
            raise RecipeError(str(error)) from None
    # the recipe's model for this device (a preset with a few fields changed), unless --preset names one
    return model_config_from_args(args, defaults, fields=None if args.preset else defaults["model"])


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


def print_summary(summary: Any, out: Path) -> None:
    """The numbers a run ends with, where its files are, and how to write more stories."""
    print_done(summary)
    if no_result_line(summary):
        print(no_result_line(summary))
    if summary.val_bpb is None:
        print("final validation: none (no validation stories)")
    elif not summary.no_result:
        best = "" if summary.best_val_bpb is None else f" (best {summary.best_val_bpb:.4f})"
        print(f"final validation: {summary.val_bpb:.4f} bits/byte{best}")
    print(f"checkpoint: {summary.checkpoint}; curve: {out / 'curve.png'}; samples: {out / 'samples'}")
    print(f"write more stories: {recipe_prog(RECIPE, 'sample')} --checkpoint {out} --prompt \"Once upon a time\"")


def train(args: argparse.Namespace) -> None:
    """Stories -> bytes -> trainer: build each from the flags (or the checkpoint resumed), train, report."""
    import bytecodecs

    started = time.monotonic()
    flags = training_flags(args)  # checked before anything is read
    codec = bytecodecs.get_codec("text")
    out, resume_from, checkpoint = open_run(args, RECIPE,
                                            default_out=Path("runs") / f"{RECIPE}-instruct" if args.instruct else None)
    recorded = checkpoint.metadata if checkpoint else None
    if recorded is not None:
        check_resume_flags(args, checkpoint)
    recorded_data = (recorded or {}).get("data") or {}
    instruct = bool(recorded.get("instruct")) if recorded else args.instruct
    init = (args.init or default_init()) if instruct and resume_from is None else None
    defaults = recipe_defaults(device_kind(getattr(args, "device", "auto")), instruct)
    cache_dir = Path(args.cache_dir) if args.cache_dir else out.parent / "cache"
    seed = getattr(args, "seed", 0)
    val_fraction = recorded_data.get("val_fraction", DEFAULT_VAL_FRACTION if args.val_fraction is None
                                     else args.val_fraction)
    split_seed = recorded_data.get("split_seed", seed)
    instruct_seed = recorded_data.get("instruct_seed", seed) if instruct else None

    source = source_from_args(args, recorded_data, cache_dir)
    print(f"stories: {source.description}; byte cache: {cache_dir}")
    if instruct and source.key.get("hub") != HUB_INSTRUCT:
        print("instruct entries: stories that have a Story: line are used as they are; the others become entries "
              "built from the story (Words, Sentence, Features: Dialogue), an approximation of TinyStories-Instruct")
    train_data, val_data = byte_datasets(source, codec, cache_dir, instruct_seed=instruct_seed,
                                         val_fraction=val_fraction, split_seed=split_seed)
    print(f"train: {len(train_data):,} {'entries' if instruct else 'stories'}, {train_data.num_bytes:,} bytes; "
          f"validation: {len(val_data):,}, {val_data.num_bytes:,} bytes")
    check_held_out(train_data, val_data, source, val_fraction,
                   asked=args.val_fraction is not None and not recorded_data)

    prompts = (INSTRUCT_PROMPT, PLAIN_PROMPTS[0]) if instruct else PLAIN_PROMPTS
    sample_fn = make_sample_fn(codec, prompts, args.sample_bytes or defaults["sample_bytes"], seed=seed)
    if checkpoint is not None:
        model_config = MegabyteConfig.from_dict(checkpoint.model_config)
    else:
        model_config = story_model_config(args, defaults, init)
    metadata = {"recipe": RECIPE, "preset": args.preset or defaults["preset"], "codec": codec.config(),
                "layout": "packed", "instruct": instruct,
                "init": init, "data": data_record(source, instruct_seed, val_fraction, split_seed)}
    trainer = make_trainer(model_config, train_data, val_data, out=out, resume_from=resume_from,
                           flags=flags, defaults=defaults, sample_fn=sample_fn, metadata=metadata)
    if init:
        print(f"fine-tuning from {init}")
        init_weights(trainer, init)

    print(f"run folder: {out} (checkpoints/, metrics.jsonl, curve.png, samples/)")
    print(f"data and model ready in {time.monotonic() - started:.0f} s; the time budget starts now")
    summary = trainer.fit()
    stop_if_interrupted(summary, out)
    print_summary(summary, out)


# -- 5. sampling from a checkpoint ---------------------------------------------------------------------------
def sample(args: argparse.Namespace) -> None:
    """Stream one story from a checkpoint to stdout (and save it with ``--output``)."""
    import bytecodecs
    import torch
    from bytemodels.app.checkpoint_codecs import checkpoint_codec
    from bytemodels.app.cli import stream_sample
    from bytemodels.checkpoint import open_checkpoint
    from bytemodels.model import Megabyte

    device = resolve_device(args.device)  # before loading: a device this machine lacks is one line
    folder, metadata, _ = open_checkpoint(args.checkpoint)
    codec = checkpoint_codec(metadata) or bytecodecs.get_codec("text")
    model = Megabyte.from_pretrained(folder, map_location=device)
    config = model.config
    data = codec.encode(story_prompt(args.prompt))
    ids = torch.tensor([prompt_ids(codec.tag, "packed", config.patch_size, data, config.num_tags)],
                       device=next(model.parameters()).device)
    pieces = model.generate_stream(ids, args.max_bytes, temperature=args.temperature, top_k=args.top_k,
                                   top_p=args.top_p, seed=args.seed)
    # Streamed as `bytemodels sample` does: bytes that are not UTF-8 show as U+FFFD, a split character once whole.
    _, path = stream_sample(data, pieces, Path(args.output) if args.output else None, codec, show=True,
                            total=args.max_bytes)
    if path is not None:
        print(f"wrote the story to {path}", file=sys.stderr)


def chat_prompt(line: str, metadata: Mapping[str, Any]) -> str:
    """The text ``bytemodels chat`` starts a reply from for a typed ``line``: for a checkpoint fine-tuned on
    instruct entries, the entry format (``Words: dog, ball`` gets a ``Story:`` line; a plain line becomes the
    ``Summary:`` of the story asked for); for a plain one, the line as typed, ``\\n`` a newline."""
    if not metadata.get("instruct"):
        return line.replace("\\n", "\n")
    prompt = story_prompt(line)
    if not is_instruct_entry(prompt):
        prompt = f"Summary: {prompt.strip()}\n{STORY_FIELD}"
    return prompt


# -- 6. command line ---------------------------------------------------------------------------------------
def epilog() -> str:
    """The recipe defaults by device, plain and fine-tuning, for the end of ``--help``."""
    columns = {label: values for kind in ("cpu", "gpu") for label, values in (
        (kind, DEVICE_DEFAULTS[kind]), (f"{kind} with --instruct", INSTRUCT_DEFAULTS[kind]))}
    return defaults_epilog(columns, [
        "  sample_every follows eval_every: stories are printed at each evaluation and at the end.",
        f"sample from a checkpoint: {recipe_prog(RECIPE, 'sample')} --help"])


def build_train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=recipe_prog("tinystories"),
        description="Train a byte-level MEGABYTE model on TinyStories and print stories as it learns. "
                    "Subcommand: `sample` writes a story from a checkpoint.",
        epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--data", metavar="PATH",
                        help="local stories instead of the hub: a .txt file with <|endoftext|> separators, "
                             ".json/.jsonl or .parquet with a text (or story) column, or a folder of them "
                             "(train.* and valid.* become the two splits)")
    add_run_arguments(recipe, RECIPE, DEVICE_DEFAULTS, documents="stories", recorded="data",
                      notes={"--preset": "with max_seq_len 1024 and dims 128,128 on CPU",
                             "--time": "3m and 20m with --instruct",
                             "--out": "runs/tinystories-instruct with --instruct"})
    recipe.add_argument("--instruct", action="store_true",
                        help="fine-tune on TinyStories-Instruct entries (from the hub, from --data, or built "
                             "from plain stories: an approximation of the real set)")
    recipe.add_argument("--init", "--checkpoint", dest="init", metavar="CHECKPOINT",
                        help="with --instruct: the checkpoint or run folder to fine-tune (default: runs/tinystories)")
    recipe.add_argument("--v2", action="store_true",
                        help="from the hub, train on the GPT-4-only TinyStoriesV2 files instead of the default set")
    recipe.add_argument("--revision", default="main", help="hub revision of the data set (default: main)")
    recipe.add_argument("--val-fraction", type=FRACTION,
                        help="share of the stories held out for validation when the data has no validation "
                             f"split (default: {DEFAULT_VAL_FRACTION})")
    recipe.add_argument("--sample-bytes", type=COUNT, metavar="N",
                        help="longest story printed at each evaluation (default: 600 on CPU, 1500 on GPU)")
    add_model_and_training_arguments(parser, DEVICE_DEFAULTS)
    return parser


def build_sample_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=recipe_prog("tinystories", "sample"),
        description="Write a story from a checkpoint, streamed to stdout. The prompt is a plain opening "
                    "(\"Once upon a time\") or an instruct-style prompt (\"Features: Dialogue\\nWords: cat, "
                    "ball, happy\\nStory: \"); a typed \\n is a newline, and Story: is added when missing.")
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="a checkpoint folder, a run folder (its latest checkpoint) or a model folder")
    parser.add_argument("--prompt", default="Once upon a time", help="how the story starts (default: %(default)s)")
    parser.add_argument("--max-bytes", type=number(int, at_least=0), default=1000,
                        help="longest story in bytes (default: %(default)s)")
    parser.add_argument("--temperature", type=NON_NEGATIVE, default=0.8, help="0 is greedy (default: %(default)s)")
    parser.add_argument("--top-k", type=COUNT, default=50,
                        help="sample among the k likeliest bytes (default: %(default)s)")
    parser.add_argument("--top-p", type=number(float, above=0, at_most=1), help="nucleus sampling mass (default: off)")
    parser.add_argument("--seed", type=seed_flag, help="random seed for a reproducible story")
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default: %(default)s)")
    parser.add_argument("-o", "--output", metavar="FILE", help="also save the story as a text file")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m recipes.tinystories [sample] ...``; errors a user can fix are one line, no traceback."""
    from bytecodecs import CodecError
    from bytemodels.app import CommandError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("train", "sample") else "train"
    parser = build_sample_parser() if command == "sample" else build_train_parser()
    run_command(parser, sample if command == "sample" else train, argv, errors=(CodecError, CommandError))


if __name__ == "__main__":
    main()
