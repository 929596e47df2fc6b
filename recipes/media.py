"""What the media recipes (audio, images, mixed) share: where their files come from (a folder, an image array, a
Hugging Face data set), the table comparing the model with a classic codec, generated records written as
files, a grid of images and a picture of spectrograms.

Nothing here picks data, a codec or a preset: a recipe does, and passes in what is its own (how to read one
hub file, which classic codec to compare with).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bytemodels.app.hub import media_documents
from bytemodels.app.flags import COUNT, FRACTION
from bytemodels.app.recipe import RecipeError, add_run_arguments, run_command
from bytemodels.data import file_key, folder_key, record_prompt

Reader = Callable[[], Iterator[bytes]]
"""Yields the codec bytes of each document; only called when the byte cache has to be built."""
CELL_PIXELS = 84
"""Grids scale each image up (nearest neighbour) to about this many pixels on its longer side."""


# -- the command line -------------------------------------------------------------------------------------------
def add_media_run_arguments(group: argparse._ArgumentGroup, recipe: str, device_defaults: Mapping[str, Any], *,
                            unit: str, recorded: str, held_out_for: str = "validation", per: str = "") -> None:
    """``--limit`` and ``--val-fraction`` of the ``unit`` read (``"clips"``; ``per`` adds to the limit's help, and
    ``held_out_for`` says what held-out ones serve), then the run flags of every recipe (``add_run_arguments``)."""
    group.add_argument("--limit", type=COUNT, metavar="N", help=f"read at most N {unit}{per} (default: all)")
    group.add_argument("--val-fraction", type=FRACTION, default=0.05,
                       help=f"share of the {unit} held out for {held_out_for} (default: 0.05)")
    add_run_arguments(group, recipe, device_defaults, documents=unit, recorded=recorded)


def run_media_command(parser: argparse.ArgumentParser, train: Callable[[argparse.Namespace], None],
                      argv: Sequence[str] | None) -> None:
    """``run_command`` with codec errors (an unreadable file, a bad codec option) as one-line errors too."""
    from bytecodecs import CodecError

    run_command(parser, train, argv, errors=(CodecError,))


# -- sources ----------------------------------------------------------------------------------------------------
def folder_files(root: Path, codec: Any, limit: int | None, *, flag: str, what: str) -> Any:
    """The first ``limit`` files under ``root`` (recursively) that ``codec`` reads, as a ``bytecodecs.FolderFiles``;
    a folder without any is a ``RecipeError`` naming ``flag`` and ``what`` they would be (``audio``)."""
    from bytecodecs import CodecError, iter_folder

    try:
        files = iter_folder(root, codec, limit=limit)
    except CodecError as error:
        raise RecipeError(f"{flag} {error}") from None
    if not files.paths:
        raise RecipeError(f"{flag} {root}: no {what} files ({', '.join(codec.extensions)}) in the folder or below it")
    return files


def folder_source(root: Path, codec: Any, limit: int | None, *, what: str) -> tuple[dict[str, Any], Reader]:
    """(cache key, reader) for the files under ``--data`` ``root``; the reader shows a progress bar, and skips and
    counts the files ``codec`` cannot read."""
    from tqdm.auto import tqdm

    files = folder_files(root, codec, limit, flag="--data", what=what)
    progress = partial(tqdm, desc=f"encoding {root}", unit="file")
    return folder_key(root, files.paths), partial(files.encoded, progress)


def files_under(path: Path, codec: Any, flag: str, what: str, limit: int | None = None) -> Any:
    """The files ``codec`` reads as a ``bytecodecs.FolderFiles``: ``path`` itself when it is a file, else the
    first ``limit`` files under it (recursively)."""
    import bytecodecs

    if path.is_file():
        return bytecodecs.FolderFiles(root=path.parent, codec=codec, paths=[path])
    return folder_files(path, codec, limit, flag=flag, what=what)


def source_key(path: Path, files: Any) -> dict[str, Any]:
    """Identifies ``path`` in a cache key: the file, or the files read under the folder."""
    return file_key(path) if path.is_file() else folder_key(path, files.paths)


def fixed_size_image_options(args: Any) -> dict[str, Any]:
    """The image codec flags given on the command line; sizes must be fixed (no ``fit=keep``)."""
    from bytecodecs import ImageCodec
    from bytemodels.app.flags import overrides_from_args

    options = overrides_from_args(ImageCodec, args)
    if options.get("fit") == "keep":
        raise RecipeError("--fit keep stores each image at its own size; this recipe needs one size: use crop or pad")
    return options


def image_array(path: Path, array_key: str | None, codec_options: Mapping[str, Any], *, flag: str) -> tuple[Any, Any]:
    """(image codec, array) for images stored as a ``.npz``/``.npy`` array: the array's own image size and mode
    unless ``codec_options`` say otherwise."""
    import bytecodecs
    from bytecodecs.image import array_codec_options, load_array

    try:
        array = load_array(path, array_key)
    except bytecodecs.CodecError as error:
        raise RecipeError(f"{flag} {error}") from None
    return bytecodecs.get_codec("image", **{**array_codec_options(array), **codec_options}), array


def array_reader(array: Any, codec: Any, limit: int | None, progress: str | None = None) -> Reader:
    """Reader of the first ``limit`` images of ``array``; ``progress`` labels a progress bar."""
    count = len(array) if limit is None else min(limit, len(array))

    def read() -> Iterator[bytes]:
        from tqdm.auto import tqdm

        for index in tqdm(range(count), desc=progress, unit="image", disable=progress is None):
            yield codec.encode_array(array[index])

    return read


def shared_data_hint(path: Path, described: str, otherwise: str) -> str:
    """What to pass instead of the hub: ``--data`` ``path`` and ``described`` when the offline copy beside the
    checkout exists, else ``otherwise``."""
    return f"pass --data {os.path.relpath(path)} {described}" if path.exists() else otherwise


def encode_hub_file(value: Mapping[str, Any], codec: Any, read: Callable[[bytes], Any], *, readable: str,
                    kind: str) -> bytes:
    """Codec bytes of one undecoded hub media value ``{"bytes": ..., "path": ...}``.

    ``read`` turns the file bytes into what ``codec.encode`` takes (``datasets``' own decoders need extra system
    libraries); bytes it cannot read are a ``CodecError`` (``is not a readable <readable>``), skipped and
    counted by the reader."""
    from bytecodecs import CodecError

    if value.get("bytes"):
        try:
            decoded = read(value["bytes"])
        except Exception as error:  # the file libraries raise several types for unreadable bytes
            raise CodecError(f"is not a readable {readable} ({error})", value.get("path") or "hub row") from None
        return codec.encode(decoded)
    if value.get("path"):
        return codec.encode_file(value["path"])
    raise CodecError(f"holds neither {kind} bytes nor a file path", "hub row")


def hub_source(name: str, split: str, config: str | None, column: str | None, codec: Any, limit: int | None, *,
               feature: str, read: Callable[[bytes], Any], readable: str, unit: str,
               offline_hint: str) -> tuple[dict[str, Any], Reader]:
    """(cache key, reader) for the ``feature`` column (``"Audio"``, ``"Image"``) of a hub data set; the hub is only
    contacted when the cache is built, and rows ``codec`` cannot read are skipped and counted."""
    from bytecodecs import CodecError

    encode = partial(encode_hub_file, codec=codec, read=read, readable=readable, kind=feature.lower())
    return media_documents(name, split, config, column, feature, encode, limit=limit, skip=(CodecError,), unit=unit,
                           offline_hint=offline_hint)


def check_one_source(args: Any, *, metavar: str, what: str, hint: str) -> None:
    """Exactly one of ``--data`` and ``--hub-dataset``, or a ``RecipeError`` that says what to pass."""
    if args.data and args.hub_dataset:
        raise RecipeError(f"give --data {metavar} or --hub-dataset NAME, not both")
    if not args.data and not args.hub_dataset:
        raise RecipeError(f"no {what} to train on; {hint} or --hub-dataset NAME")


def check_held_out(dataset: Any, val_fraction: float, unit: str) -> None:
    """A ``RecipeError`` when ``val_fraction`` held out none of ``dataset``'s documents (``unit``: ``"clips"``)."""
    if not len(dataset.val):
        raise RecipeError(f"--val-fraction {val_fraction} holds out none of the {len(dataset)} {unit}; raise it")


# -- patches that keep frames and rows whole ----------------------------------------------------------------------
def row_patch_size(row_bytes: int) -> int:
    """The default patch: one image row (two when a row is a single byte, since a patch holds BOS and a tag)."""
    return row_bytes if row_bytes >= 2 else 2


def check_patch_fits(patch_size: int, *, frame: int | None = None, frames: str = "sample frames",
                     row: int | None = None) -> None:
    """A patch holds whole ``frame``-byte audio frames, and whole image rows of ``row`` bytes or a whole fraction
    of a row, so that patches never straddle them; else a ``RecipeError`` naming ``--patch-sizes``."""
    if frame and patch_size % frame:
        raise RecipeError(f"--patch-sizes {patch_size} would split {frame}-byte {frames}; use a multiple of {frame}")
    if row and patch_size % row and row % patch_size:
        divisors = [d for d in range(2, row + 1) if row % d == 0]
        raise RecipeError(f"--patch-sizes {patch_size} does not line up with image rows of {row} bytes; use a "
                          f"multiple of {row} or one of its divisors ({', '.join(map(str, divisors[-6:]))})")


# -- the comparison with a classic codec -------------------------------------------------------------------------
def comparison(val_bpb: float | None, sizes: Mapping[str, int], raw: str, **about: Any) -> dict[str, Any]:
    """The table a recipe saves: ``about`` (what was compared), ``sizes`` in bytes, the model's bits/byte, and
    each size other than ``raw`` as bits per raw byte (``png_file_bytes`` -> ``png_file_bits_per_byte``)."""
    total = max(sizes[raw], 1)
    rates = {f"{key.removesuffix('_bytes')}_bits_per_byte": 8 * size / total
             for key, size in sizes.items() if key != raw}
    return {**about, **sizes, "model_bits_per_byte": val_bpb, **rates}


def print_comparison(heading: str, model_bpb: float | None, rows: Sequence[tuple[str, float]], raw: str) -> None:
    """The comparison as a small table: the model's validation bits/byte, the classic codec's ``rows``, and 8 for
    the ``raw`` bytes."""
    print(f"\n{heading}")
    print(f"{'':<34}{'bits/byte':>10}")
    print(f"{'model (validation)':<34}{'—' if model_bpb is None else f'{model_bpb:.3f}':>10}")
    for label, value in rows:
        print(f"{label:<34}{value:>10.3f}")
    print(f"{raw:<34}{8.0:>10.3f}")


# -- samples -------------------------------------------------------------------------------------------------
def generate_records(model: Any, codec: Any, patch_size: int, prompts: Sequence[bytes], max_bytes: int, *,
                     temperature: float, seed: int) -> list[bytes]:
    """One record per prompt (``b""`` starts a new one), generated from the header patch with ``codec``'s tag:
    each prompt followed by up to ``max_bytes`` the model wrote."""
    if not prompts:
        return []
    generated = model.generate(list(prompts), max_bytes, temperature=temperature, seed=seed,
                               prefix_ids=record_prompt(patch_size, codec.tag))
    return [prompt + data for prompt, data in zip(prompts, generated)]


def write_records(codec: Any, records: Sequence[bytes], folder: Path, stem: str) -> list[Path]:
    """Each record as a file in ``codec``'s format: ``folder/<stem>_00.<extension>``, ``_01``, ..."""
    return [codec.write_bytes(data, folder / f"{stem}_{index:02d}{codec.extension}")
            for index, data in enumerate(records)]


def save_png(picture: Any, path: Path) -> Path:
    """Write a Pillow image or a matplotlib figure to ``path`` as PNG, atomically."""
    from bytecodecs import atomic_path

    save = picture.savefig if hasattr(picture, "savefig") else picture.save
    with atomic_path(path) as temporary:
        save(temporary, format="png")
    return path


def image_grid(rows: Sequence[tuple[str, Sequence[Any]]], split_row: int | None = None, label_width: int = 80) -> Any:
    """One picture of labelled rows of images, scaled up without blurring (``label_width`` 0: no labels).

    ``split_row`` (in image rows) marks, with red ticks beside each image of the last row, where the
    given part of a completion ends and the generated part begins."""
    from PIL import Image, ImageDraw

    width, height = rows[0][1][0].size
    scale = max(1, round(CELL_PIXELS / max(width, height)))
    cell_w, cell_h, gap = width * scale, height * scale, 6
    columns = max(len(images) for _, images in rows)
    canvas = Image.new("RGB", (label_width + columns * (cell_w + gap) + gap, len(rows) * (cell_h + gap) + gap),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for row, (label, images) in enumerate(rows):
        y = gap + row * (cell_h + gap)
        if label:
            draw.text((6, y + cell_h // 2 - 6), label, fill="black")
        for column, image in enumerate(images):
            x = label_width + gap + column * (cell_w + gap)
            canvas.paste(image.convert("RGB").resize((cell_w, cell_h), Image.Resampling.NEAREST), (x, y))
            if split_row is not None and row == len(rows) - 1:
                tick = y + split_row * scale
                draw.line([(x - gap + 1, tick), (x - 2, tick)], fill="red", width=2)
                draw.line([(x + cell_w + 1, tick), (x + cell_w + gap - 2, tick)], fill="red", width=2)
    return canvas


def spectrograms(rows: list[tuple[str, list[np.ndarray]]], sample_rate: int, path: Path,
                 marks: list[float] | None = None) -> Path:
    """One PNG of spectrograms, a row per label (e.g. held out, continued, new), all on one time scale.

    ``marks`` (seconds, one per column) draw a line where the held-out start of a continuation ends."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    columns = max(len(clips) for _, clips in rows)
    longest = max((len(clip) for _, clips in rows for clip in clips), default=1) / sample_rate
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.6 * columns, 1.9 * len(rows)), dpi=100,
                                squeeze=False, sharex=True, sharey=True)
    for row, (label, clips) in enumerate(rows):
        axes[row][0].set_ylabel(f"{label}\nHz")
        for column in range(columns):
            axis = axes[row][column]
            clip = clips[column] if column < len(clips) else np.zeros(0)
            if len(clip) >= 64:  # shorter clips (an early EOS) have no spectrogram to speak of
                axis.specgram(clip, NFFT=256 if len(clip) >= 256 else 64, Fs=sample_rate, noverlap=0,
                              cmap="magma", scale="dB", vmin=-120)
            axis.set_xlim(0, max(longest, 1e-3))
            if marks is not None and label.startswith("continued") and column < len(marks):
                axis.axvline(marks[column], color="cyan", linewidth=1)
    for axis in axes[-1]:
        axis.set_xlabel("seconds")
    figure.tight_layout()
    save_png(figure, path)
    plt.close(figure)
    return path
