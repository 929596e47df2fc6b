"""Train a byte-level MEGABYTE model on images at a fixed size: raw pixels, one image per record.

The image codec turns every picture into rows of raw pixels (e.g. 28x28 grey or 32x32 RGB); the patch
size is aligned to those rows (one row per patch by default), so the global model steps row by row and the
local model writes the pixels of a row. The loop, checkpoints, metrics and curve are the ``Trainer``'s;
this file picks the data, the codec and a preset, draws samples and completions as PNG grids and compares
the model with PNG on the held-out images.

Commands, in the order you would run them (from the checkout)::

    # 1. train on MNIST digits stored as a numpy array beside the checkout (28x28 grey, read from the array)
    python -m recipes.images --data ../shared/data/images/mnist_test.npz --time 10m

    # ... on CIFAR-10 images (32x32 RGB), a folder of image files, or a Hugging Face image data set
    python -m recipes.images --data ../shared/data/images/cifar10_test_sample5000.npz --out runs/cifar
    python -m recipes.images --data photos/ --width 32 --height 32 --mode RGB --out runs/photos
    python -m recipes.images --hub-dataset ylecun/mnist --width 28 --height 28 --mode L      # GPU, online

    # 2. continue the run in runs/images for ten more minutes
    python -m recipes.images --resume --time 20m

    # 3. look: runs/images/samples/step_*/grid.png (new images; held-out images; their top halves completed)

Every stage can be re-run: the images are encoded once into a byte cache under ``--cache-dir``, reused while
the source and the codec options stay the same. At the end the recipe prints validation bits/byte beside
PNG's size on the same held-out images (bits per raw pixel byte) and writes that table to
``compression.json`` in the run folder.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import socket
import struct
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

RECIPE = "images"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"
"""MNIST and CIFAR-10 arrays beside the checkout (when there are some)."""
PROBE_TIMEOUT_S = 3.0
ARRAY_SUFFIXES = (".npz", ".npy")
EVAL_WINDOW_CAP = 256
"""Validation windows: whole held-out images, up to about this many windows."""
CELL_PIXELS = 84
"""Grids scale each image up (nearest neighbour) to about this many pixels on its longer side."""

#: What the recipe sets where it differs from the preset and TrainConfig defaults, by device kind.
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": dict(preset="tiny", time="10m", batch_size=8, lr=2e-3, min_lr=2e-4, warmup_steps=50, eval_every=200,
                checkpoint_every=500),
    "gpu": dict(preset="small", time="1h", batch_size=32, lr=6e-4, min_lr=6e-5, warmup_steps=500, eval_every=1000,
                checkpoint_every=2000),
}


class RecipeError(Exception):
    """A problem the user can fix (a flag, a file, the network); printed as one line, no traceback."""


# -- 1. images: a numpy array file, a folder of image files or a Hugging Face data set ---------------------
def file_key(path: Path) -> dict[str, Any]:
    """Identifies one file for the byte cache: its path, size and modification time."""
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def folder_key(root: Path, paths: list[Path]) -> dict[str, Any]:
    """Identifies a folder's files for the byte cache: their names, sizes and modification times."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"folder": str(root.resolve()), "files": len(paths), "sha256": digest.hexdigest()}


def load_array(path: Path, key: str | None) -> np.ndarray:
    """The uint8 image array of a ``.npy`` file or of a ``.npz`` file (``key``, else ``images``, else the
    first array shaped like images): ``(count, height, width)`` or ``(count, height, width, channels)``."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise RecipeError(f"--data {path}: not a readable numpy file ({error})") from None
    if isinstance(loaded, np.ndarray):
        array = loaded
    else:
        with loaded:
            names = loaded.files
            if key is None:
                key = "images" if "images" in names else next(
                    (n for n in names if loaded[n].dtype == np.uint8 and loaded[n].ndim in (3, 4)), None)
            if key not in names:
                raise RecipeError(f"--data {path}: no image array{'' if key is None else f' {key!r}'}; it holds "
                                  f"{', '.join(names)} (name one with --array-key)")
            array = loaded[key]
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[3] not in (1, 3, 4)):
        raise RecipeError(f"--data {path}: the array is {array.dtype} {array.shape}; expected uint8 images shaped "
                          "(count, height, width) or (count, height, width, 1, 3 or 4)")
    return array


def array_codec_options(array: np.ndarray) -> dict[str, Any]:
    """Width, height and mode of the images in an array: the size a data set stored as an array comes in."""
    mode = "L" if array.ndim == 3 or array.shape[3] == 1 else "RGB"
    return {"width": int(array.shape[2]), "height": int(array.shape[1]), "mode": mode}


def array_images(path: Path, array: np.ndarray, key: str | None, codec: Any,
                 limit: int | None) -> tuple[dict[str, Any], Callable[[], Iterator[bytes]]]:
    """(cache key, reader) for the images of an array file."""
    from tqdm.auto import tqdm

    count = len(array) if limit is None else min(limit, len(array))

    def read() -> Iterator[bytes]:
        for index in tqdm(range(count), desc=f"encoding {path.name}", unit="image"):
            yield codec.encode_array(array[index])

    return {"array": file_key(path), "key": key, "limit": limit}, read


def folder_images(root: Path, codec: Any, limit: int | None) -> tuple[dict[str, Any], Callable[[], Iterator[bytes]]]:
    """(cache key, reader) for the image files under ``root``; the reader skips and counts bad files."""
    import bytecodecs
    from tqdm.auto import tqdm

    try:
        paths = bytecodecs.list_files(root, codec.extensions)[:limit]
    except bytecodecs.CodecError as error:
        raise RecipeError(f"--data {error}") from None
    if not paths:
        raise RecipeError(f"--data {root}: no image files ({', '.join(codec.extensions)}) in the folder or below it")

    def read() -> Iterator[bytes]:
        files = bytecodecs.FolderFiles(root=root, codec=codec, paths=paths)
        for _, data in tqdm(files, total=len(paths), desc=f"encoding {root}", unit="file"):
            yield data
        if files.skipped:
            print(files.report(), file=sys.stderr)

    return folder_key(root, paths), read


def hub_unreachable_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub cannot be used now (offline mode or no connection), or None if it answers.

    ``datasets`` retries for minutes without a network; this probe decides within ``timeout`` seconds."""
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{variable} is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    # Behind a proxy the hub is reached through it, so the proxy is what must answer.
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy if proxy and "://" in proxy else f"http://{proxy}") if proxy else endpoint
    host = target.hostname or "huggingface.co"
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"cannot connect to {host}:{port} ({error.strerror or error})"


def offline_hint() -> str:
    """What to pass instead of the hub: the offline arrays beside the checkout when there are some."""
    mnist = SHARED_DATA / "mnist_test.npz"
    if mnist.is_file():
        return f"pass --data {os.path.relpath(mnist)} (MNIST beside this checkout) or another .npz or image folder"
    return "pass --data PATH (a folder of image files, or images as a .npz or .npy array)"


def load_hub_split(name: str, split: str, config: str | None) -> Any:
    """One split of a hub data set, or a ``RecipeError`` within seconds when the hub cannot be reached."""
    reason = hub_unreachable_reason()
    if reason:
        raise RecipeError(f"cannot download {name} from the Hugging Face hub ({reason}); {offline_hint()}")
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as error:  # any failure of the download is one line for the user
        raise RecipeError(f"could not load {name} (split {split}) from the hub: {error}; {offline_hint()}") from None


def image_column(dataset: Any, requested: str | None, where: str) -> str:
    """The column holding the images: ``requested``, else the first column of the ``Image`` feature type."""
    import datasets

    if requested:
        if requested not in dataset.column_names:
            raise RecipeError(f"--hub-column {requested}: {where} has no such column "
                              f"(columns: {', '.join(dataset.column_names)})")
        return requested
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise RecipeError(f"{where} has no Image column (columns: {', '.join(dataset.column_names)}); "
                      "name the one holding the images with --hub-column")


def encode_hub_image(value: dict[str, Any], codec: Any) -> bytes:
    """Codec bytes of one undecoded hub image value ``{"bytes": ..., "path": ...}``."""
    from bytecodecs import CodecError
    from PIL import Image

    if value.get("bytes"):
        try:
            with Image.open(io.BytesIO(value["bytes"])) as image:
                image.load()
                return codec.encode(image)
        except CodecError:
            raise
        except Exception as error:  # Pillow raises several types for unreadable bytes
            raise CodecError(f"is not a readable image ({error})", value.get("path") or "hub row") from None
    if value.get("path"):
        return codec.encode_file(value["path"])
    raise CodecError("holds neither image bytes nor a file path", "hub row")


def hub_images(name: str, split: str, config: str | None, column: str | None, codec: Any,
               limit: int | None) -> tuple[dict[str, Any], Callable[[], Iterator[bytes]]]:
    """(cache key, reader) for a hub data set's images; the hub is only contacted when the cache is built."""
    from bytecodecs import CodecError
    from tqdm.auto import tqdm

    def read() -> Iterator[bytes]:
        import datasets

        dataset = load_hub_split(name, split, config)
        where = f"{name} (split {split})"
        chosen = image_column(dataset, column, where)
        dataset = dataset.cast_column(chosen, datasets.Image(decode=False)).select_columns([chosen])
        count = len(dataset) if limit is None else min(limit, len(dataset))
        skipped: list[str] = []
        for index in tqdm(range(count), desc=f"encoding {name}", unit="image"):
            try:
                yield encode_hub_image(dataset[index][chosen], codec)
            except CodecError as error:
                skipped.append(f"row {index}: {error.reason}")
        if skipped:
            print(f"skipped {len(skipped)} unusable images of {where} (first: {skipped[0]})", file=sys.stderr)

    return {"hub": name, "split": split, "config": config, "column": column, "limit": limit}, read


def image_source(args: argparse.Namespace, codec_options: dict[str, Any]) -> tuple[Any, dict, Callable]:
    """(codec, cache key, reader) for --data or --hub-dataset; an array's own size is the default size."""
    import bytecodecs

    if args.data and args.hub_dataset:
        raise RecipeError("give --data PATH or --hub-dataset NAME, not both")
    if args.hub_dataset:
        codec = bytecodecs.get_codec("image", **codec_options)
        return codec, *hub_images(args.hub_dataset, args.hub_split, args.hub_config, args.hub_column, codec,
                                  args.limit)
    if not args.data:
        raise RecipeError(f"no images to train on; {offline_hint()} or --hub-dataset NAME")
    path = Path(args.data).expanduser()
    if path.is_file() and path.suffix.lower() in ARRAY_SUFFIXES:
        array = load_array(path, args.array_key)
        codec = bytecodecs.get_codec("image", **{**array_codec_options(array), **codec_options})
        return codec, *array_images(path, array, args.array_key, codec, args.limit)
    if path.is_file():
        raise RecipeError(f"--data {path}: give a folder of images or a {' or '.join(ARRAY_SUFFIXES)} array file")
    codec = bytecodecs.get_codec("image", **codec_options)
    return codec, *folder_images(path, codec, args.limit)


def byte_dataset(key: dict[str, Any], read: Callable[[], Iterator[bytes]], codec: Any, cache_dir: Path,
                 val_fraction: float) -> Any:
    """The images as a records-layout ``ByteDataset`` (``.train`` / ``.val``), built once under ``cache_dir``."""
    from bytemodels.data import ByteDataset

    def documents() -> Iterator[tuple[bytes, int]]:
        for data in read():  # only called when the cache does not exist yet
            yield data, codec.tag

    return ByteDataset.build(documents(), cache_dir, key={"recipe": RECIPE, "source": key, "codec": codec.config()},
                             layout="records", name=RECIPE, val_fraction=val_fraction, split_seed=0,
                             progress=False)  # the reader shows its own bar, in files


# -- 2. patches aligned to rows ----------------------------------------------------------------------------------
def row_patch_size(row_bytes: int) -> int:
    """The default patch: one image row (two when a row is a single byte, since a patch holds BOS and a tag)."""
    return row_bytes if row_bytes >= 2 else 2


def record_window(record_size: int, patch_size: int) -> int:
    """Ids one image takes in the records layout: the header patch, its bytes and EOS, in whole patches."""
    return patch_size + math.ceil((record_size + 1) / patch_size) * patch_size


def check_row_alignment(patch_size: int, row_bytes: int) -> None:
    """A patch must be whole rows, or a whole fraction of a row, so that patches never straddle rows."""
    if patch_size % row_bytes and row_bytes % patch_size:
        divisors = [d for d in range(2, row_bytes + 1) if row_bytes % d == 0]
        raise RecipeError(f"--patch-sizes {patch_size} does not line up with image rows of {row_bytes} bytes; use a "
                          f"multiple of {row_bytes} or one of its divisors ({', '.join(map(str, divisors[-6:]))})")


# -- 3. the comparison: PNG of the same images ------------------------------------------------------------------
def png_bytes(data: bytes, codec: Any) -> bytes:
    """A PNG file (``optimize=True``) of one image's codec bytes."""
    buffer = io.BytesIO()
    codec.decode(data).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_idat_size(png: bytes) -> int:
    """Bytes of compressed pixel data (the IDAT chunks' contents) in a PNG file."""
    position, total = 8, 0
    while position + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[position:position + 8])
        if kind == b"IDAT":
            total += length
        position += 12 + length
    return total


def png_size(images: Iterable[bytes], codec: Any) -> dict[str, int]:
    """PNG sizes of ``images``: whole files and pixel data only (IDAT), and the raw pixel bytes."""
    files = pixels = raw = 0
    for data in images:
        png = png_bytes(data, codec)
        files += len(png)
        pixels += png_idat_size(png)
        raw += len(data)
    return {"pixel_bytes": raw, "png_file_bytes": files, "png_idat_bytes": pixels}


def covered_documents(lengths: np.ndarray, patch_size: int, seq_len: int, windows: int) -> int:
    """How many leading documents of a records-layout view lie wholly inside its first ``windows`` windows."""
    record = patch_size + -(-(np.asarray(lengths, dtype=np.int64) + 1) // patch_size) * patch_size
    ends = np.cumsum(-(-record // seq_len))
    return int(np.searchsorted(ends, windows, side="right"))


def whole_image_windows(lengths: np.ndarray, patch_size: int, seq_len: int, cap: int) -> int:
    """Windows covering the most leading held-out images whole within ``cap`` windows (at least one image)."""
    record = patch_size + -(-(np.asarray(lengths, dtype=np.int64) + 1) // patch_size) * patch_size
    ends = np.cumsum(-(-record // seq_len))
    if not len(ends):
        return 1
    inside = ends[ends <= cap]
    return int(inside[-1]) if len(inside) else int(ends[0])


def compression_report(val_bpb: float | None, images: list[bytes], codec: Any) -> dict[str, Any]:
    """Model bits/byte beside PNG's bits per raw pixel byte on the same held-out images."""
    sizes = png_size(images, codec)
    raw = max(sizes["pixel_bytes"], 1)
    return {"images": len(images), "codec": codec.config(), **sizes, "model_bits_per_byte": val_bpb,
            "png_file_bits_per_byte": 8 * sizes["png_file_bytes"] / raw,
            "png_idat_bits_per_byte": 8 * sizes["png_idat_bytes"] / raw}


def print_report(report: dict[str, Any]) -> None:
    """The comparison as a small table."""
    codec = report["codec"]
    model = report["model_bits_per_byte"]
    print(f"\nheld-out images: {report['images']} ({codec['width']}x{codec['height']} {codec['mode']}, "
          f"{report['pixel_bytes']:,} pixel bytes)")
    print(f"{'':<34}{'bits/byte':>10}")
    print(f"{'model (validation)':<34}{'—' if model is None else f'{model:.3f}':>10}")
    print(f"{'PNG (optimize), whole files':<34}{report['png_file_bits_per_byte']:>10.3f}")
    print(f"{'PNG (optimize), pixel data only':<34}{report['png_idat_bits_per_byte']:>10.3f}")
    print(f"{'raw pixels':<34}{8.0:>10.3f}")


# -- 4. samples: new images and completions of held-out images, as PNG ----------------------------------------
def image_grid(rows: Sequence[tuple[str, Sequence[Any]]], split_row: int | None = None) -> Any:
    """One picture of labelled rows of images, scaled up without blurring.

    ``split_row`` (in image rows) marks, with red ticks beside each image of the last row, where the
    given part of a completion ends and the generated part begins."""
    from PIL import Image, ImageDraw

    width, height = rows[0][1][0].size
    scale = max(1, round(CELL_PIXELS / max(width, height)))
    cell_w, cell_h, gap, label_w = width * scale, height * scale, 6, 80
    columns = max(len(images) for _, images in rows)
    canvas = Image.new("RGB", (label_w + columns * (cell_w + gap) + gap, len(rows) * (cell_h + gap) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    for row, (label, images) in enumerate(rows):
        y = gap + row * (cell_h + gap)
        draw.text((6, y + cell_h // 2 - 6), label, fill="black")
        for column, image in enumerate(images):
            x = label_w + gap + column * (cell_w + gap)
            canvas.paste(image.convert("RGB").resize((cell_w, cell_h), Image.Resampling.NEAREST), (x, y))
            if split_row is not None and row == len(rows) - 1:
                tick = y + split_row * scale
                draw.line([(x - gap + 1, tick), (x - 2, tick)], fill="red", width=2)
                draw.line([(x + cell_w + 1, tick), (x + cell_w + gap - 2, tick)], fill="red", width=2)
    return canvas


def sample_writer(codec: Any, patch_size: int, held_out: list[bytes], *, count: int, temperature: float,
                  seed: int) -> Callable[[Any, int, Path], None]:
    """The ``sample_fn`` the trainer calls: ``count`` new images, ``count`` completions and their grid."""
    from bytecodecs import atomic_path
    from bytemodels.data import record_prompt

    record = codec.framing.record_size
    row = codec.framing.align
    given_rows = codec.height // 2
    tops = [image[:given_rows * row] for image in held_out[:count]]
    header = record_prompt(patch_size, codec.tag)

    def write_samples(model: Any, step: int, samples_dir: Path) -> None:
        folder = samples_dir / f"step_{step:06d}"
        options = dict(temperature=temperature, seed=seed, prefix_ids=header)
        samples = model.generate([b""] * count, record, **options)
        completions = [top + rest for top, rest in zip(tops, model.generate(tops, record - len(tops[0]), **options))
                       ] if tops else []
        for index, data in enumerate(samples):
            codec.write_bytes(data, folder / f"sample_{index:02d}.png")
        for index, data in enumerate(completions):
            codec.write_bytes(data, folder / f"completion_{index:02d}.png")
        rows = [("samples", [codec.decode(data) for data in samples])]
        if completions:
            rows += [("held out", [codec.decode(data) for data in held_out[:count]]),
                     ("completed", [codec.decode(data) for data in completions])]
        with atomic_path(folder / "grid.png") as temporary:
            image_grid(rows, split_row=given_rows if completions else None).save(temporary, format="PNG")

    return write_samples


# -- 5. training -------------------------------------------------------------------------------------------------
def device_kind(device: str) -> str:
    """``gpu`` when ``--device`` resolves to CUDA, else ``cpu``: which column of the recipe defaults applies."""
    from bytemodels.distributed import choose_device

    try:
        return "gpu" if choose_device(device).type == "cuda" else "cpu"
    except RuntimeError as error:
        raise RecipeError(f"--device {device}: {error}") from None


def model_config_from_args(args: argparse.Namespace, codec: Any, defaults: dict[str, Any]) -> Any:
    """The preset with the model flags; by default one row per patch and one whole image per window."""
    from bytemodels.config import MegabyteConfig
    from bytemodels.options import overrides_from_args

    row, record = codec.framing.align, codec.framing.record_size
    overrides = overrides_from_args(MegabyteConfig, args)
    patch = overrides["patch_sizes"][0] if overrides.get("patch_sizes") else row_patch_size(row)
    check_row_alignment(patch, row)
    overrides.setdefault("patch_sizes", (patch,))
    overrides.setdefault("max_seq_len", record_window(record, patch))
    try:
        return MegabyteConfig.preset(args.preset or defaults["preset"], **overrides)
    except ValueError as error:  # config validation names the field; the flag has the same name
        raise RecipeError(str(error)) from None


def codec_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The image codec flags given on the command line; sizes must be fixed (no ``fit=keep``)."""
    from bytecodecs import ImageCodec
    from bytemodels.options import overrides_from_args

    options = overrides_from_args(ImageCodec, args)
    if options.get("fit") == "keep":
        raise RecipeError("--fit keep stores each image at its own size; this recipe needs one size: use crop or pad")
    return options


def data_record(args: argparse.Namespace) -> dict[str, Any]:
    """What a checkpoint records about its data, so ``--resume`` reads the same images without flags."""
    return {"path": str(Path(args.data).expanduser().resolve()) if args.data else None, "array_key": args.array_key,
            "hub": args.hub_dataset, "hub_split": args.hub_split, "hub_config": args.hub_config,
            "hub_column": args.hub_column, "limit": args.limit, "val_fraction": args.val_fraction}


def restore_data_args(args: argparse.Namespace, recorded: dict[str, Any]) -> None:
    """On ``--resume``, read the images the run was trained on unless --data or --hub-dataset names others."""
    if not (args.data or args.hub_dataset):
        args.data, args.hub_dataset = recorded.get("path"), recorded.get("hub")
        args.array_key, args.limit = recorded.get("array_key"), recorded.get("limit")
        args.hub_split, args.hub_config = recorded.get("hub_split", "train"), recorded.get("hub_config")
        args.hub_column = recorded.get("hub_column")
    args.val_fraction = recorded.get("val_fraction", args.val_fraction)


def train(args: argparse.Namespace) -> None:
    """Read the images, build the configs and the trainer, train, and print the comparison with PNG."""
    from bytecodecs import ImageCodec
    from bytemodels import checkpoint as ckpt
    from bytemodels.config import MegabyteConfig
    from bytemodels.options import overrides_from_args
    from bytemodels.train import Trainer, TrainConfig

    out = Path(args.out or Path("runs") / RECIPE)
    resume_from, recorded = None, None
    if args.resume:
        resume_from = ckpt.resolve_checkpoint(out if args.resume == "auto" else args.resume)
        recorded = ckpt.load_checkpoint(resume_from)
        if not isinstance(recorded.metadata, dict) or recorded.metadata.get("recipe") != RECIPE:
            raise RecipeError(f"--resume {resume_from}: not a checkpoint of recipes.{RECIPE}")
        if args.out is None:  # continue in the run folder the checkpoint belongs to
            out = resume_from.parent.parent if resume_from.parent.name == ckpt.CHECKPOINTS_DIR else out
        if overrides_from_args(MegabyteConfig, args) or overrides_from_args(ImageCodec, args) or args.preset:
            raise RecipeError("--resume keeps the model and codec of the checkpoint; drop --preset, the model "
                              "flags and the codec flags")
        restore_data_args(args, recorded.metadata.get("data", {}))
    elif ckpt.latest_checkpoint(out / ckpt.CHECKPOINTS_DIR) is not None:
        raise RecipeError(f"--out {out} already holds a run; pass --resume to continue it or --out NEW_FOLDER")

    defaults = DEVICE_DEFAULTS[device_kind(getattr(args, "device", "auto"))]
    cache_dir = Path(args.cache_dir) if args.cache_dir else out.parent / "cache"
    codec_options = ({k: v for k, v in recorded.metadata["codec"].items() if k != "name"} if recorded is not None
                     else codec_options_from_args(args))
    codec, key, read = image_source(args, codec_options)
    if recorded is not None:
        model_config = MegabyteConfig.from_dict(recorded.model_config)
    else:
        model_config = model_config_from_args(args, codec, defaults)
    print(f"images: {args.hub_dataset or args.data}; codec {json.dumps(codec.config())}; byte cache: {cache_dir}")
    dataset = byte_dataset(key, read, codec, cache_dir, args.val_fraction)
    train_data, val_data = dataset.train, dataset.val
    if not len(val_data):
        raise RecipeError(f"--val-fraction {args.val_fraction} holds out none of the {len(dataset)} images; raise it")
    patch, seq_len = model_config.patch_size, model_config.max_seq_len
    rows = patch / codec.framing.align
    print(f"train: {len(train_data):,} images; held out: {len(val_data):,}; patch {patch} bytes "
          f"({rows:g} image row{'' if rows == 1 else 's'}), window {seq_len} ids")

    train_flags = overrides_from_args(TrainConfig, args)
    if args.time is not None:
        train_flags["time"] = args.time
    seed = recorded.train_config["seed"] if recorded is not None else train_flags.get("seed", 0)
    held_out = [val_data.document(i)[0] for i in range(min(len(val_data), args.num_samples))]
    sample_fn = sample_writer(codec, patch, held_out, count=args.num_samples, temperature=args.temperature,
                              seed=seed)
    try:
        if resume_from is not None:
            trainer = Trainer.resume(resume_from, train_data, val_data, sample_fn=sample_fn,
                                     **{**train_flags, "out_dir": str(out)})
        else:
            settings = {name: value for name, value in defaults.items() if name in TrainConfig.__dataclass_fields__}
            if any(train_flags.get(name) for name in ("max_steps", "max_bytes")) and "time" not in train_flags:
                settings.pop("time")  # a budget given on the command line replaces the default time budget
            settings["sample_every"] = train_flags.get("eval_every", settings["eval_every"])
            # Validate on whole held-out images, so the comparison with PNG covers exactly the same pixels.
            settings["eval_windows"] = whole_image_windows(val_data.lengths, patch, seq_len, EVAL_WINDOW_CAP)
            train_config = TrainConfig(**{**settings, **train_flags, "out_dir": str(out)})
            metadata = {"recipe": RECIPE, "codec": codec.config(), "layout": "records", "data": data_record(args)}
            trainer = Trainer(model_config, train_config, train_data, val_data, sample_fn=sample_fn,
                              metadata=metadata)
    except ValueError as error:  # config validation names the field; the flag has the same name
        raise RecipeError(str(error)) from None

    print(f"run folder: {out} (checkpoints/, metrics.jsonl, curve.png, samples/, compression.json)")
    summary = trainer.fit()
    if not trainer.is_main:
        return
    print(f"done: {summary.step:,} steps, {summary.bytes_seen:,} bytes seen, stopped by {summary.stop_reason}")
    # The comparison uses the held-out images that the validation windows cover whole.
    compared = max(covered_documents(val_data.lengths, patch, seq_len, trainer.config.eval_windows), 1)
    report = compression_report(summary.val_bpb, [val_data.document(i)[0] for i in range(compared)], codec)
    report.update(step=summary.step, elapsed_s=round(trainer.elapsed_s, 1), stop_reason=summary.stop_reason)
    (out / "compression.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_report(report)
    print(f"\ncheckpoint: {summary.checkpoint}; curve: {out / 'curve.png'}; "
          f"samples: {out / 'samples'} (grid.png in each step folder); table: {out / 'compression.json'}")


# -- 6. command line ---------------------------------------------------------------------------------------
def defaults_epilog() -> str:
    """The recipe's defaults by device kind and how the shape follows the codec, for the end of ``--help``."""
    lines = ["recipe defaults (a flag given on the command line wins):"]
    for kind in ("cpu", "gpu"):
        lines.append(f"  {kind}: " + ", ".join(f"{k}={v}" for k, v in DEVICE_DEFAULTS[kind].items()))
    lines += ["  patch_sizes: one image row (width x channels bytes, e.g. 28 for 28x28 L, 96 for 32x32 RGB); a "
              "--patch-sizes value must be whole rows or divide a row.",
              "  max_seq_len: one whole image per window (header patch + pixels + EOS in whole patches, e.g. 840 "
              "for 28x28 L with patch 28).",
              "  width, height and mode: those of a .npz/.npy array's images; 32x32 RGB for folders and the hub.",
              "  sample_every follows eval_every; eval_windows covers whole held-out images (about "
              f"{EVAL_WINDOW_CAP}), the images the PNG comparison uses."]
    return "\n".join(textwrap.fill(line, width=110, subsequent_indent="      ") for line in lines)


def build_parser() -> argparse.ArgumentParser:
    """Recipe flags, then one flag per field of the image codec, the model config and the training config."""
    from bytecodecs import ImageCodec
    from bytemodels.config import PRESETS, MegabyteConfig
    from bytemodels.options import add_config_arguments
    from bytemodels.train import TrainConfig

    parser = argparse.ArgumentParser(
        prog="python -m recipes.images",
        description="Train a byte-level MEGABYTE model on fixed-size images (one image per record, one row per "
                    "patch), draw samples and completions as PNG grids, and compare validation bits/byte with PNG.",
        epilog=defaults_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    recipe = parser.add_argument_group("recipe")
    example = f" (e.g. {os.path.relpath(SHARED_DATA / 'mnist_test.npz')})" if SHARED_DATA.is_dir() else ""
    recipe.add_argument("--data", metavar="PATH", help="a folder of image files (searched recursively) or images "
                        f"as a .npz or .npy uint8 array{example}")
    recipe.add_argument("--array-key", metavar="NAME",
                        help="array of a .npz file holding the images (default: images, else the first "
                             "image-shaped one)")
    recipe.add_argument("--hub-dataset", metavar="NAME",
                        help="a Hugging Face image data set instead of --data (e.g. ylecun/mnist, uoft-cs/cifar10)")
    recipe.add_argument("--hub-split", default="train", metavar="SPLIT", help="split of --hub-dataset (default: train)")
    recipe.add_argument("--hub-config", metavar="NAME", help="configuration (subset) of --hub-dataset")
    recipe.add_argument("--hub-column", metavar="NAME",
                        help="image column of --hub-dataset (default: the first column of the Image type)")
    recipe.add_argument("--limit", type=int, metavar="N", help="read at most N images (default: all)")
    recipe.add_argument("--val-fraction", type=float, default=0.05,
                        help="share of the images held out for validation and completions (default: 0.05)")
    recipe.add_argument("--preset", choices=list(PRESETS), help="model size (default: tiny on CPU, small on GPU)")
    recipe.add_argument("--time", metavar="DURATION",
                        help="training time budget, e.g. 90s, 10m, 1.5h (default: 10m on CPU, 1h on GPU)")
    recipe.add_argument("--out", metavar="DIR", help=f"run folder (default: runs/{RECIPE})")
    recipe.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                        help="continue a run: its latest checkpoint in --out, or the given checkpoint or run "
                             "folder, with the codec and images it recorded (raise --time or --max-steps)")
    recipe.add_argument("--cache-dir", metavar="DIR",
                        help="where the images are cached as bytes (default: the cache folder beside --out)")
    recipe.add_argument("--num-samples", type=int, default=8, metavar="N",
                        help="new images and completions drawn at each sampling (default: 8)")
    recipe.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    add_config_arguments(parser, ImageCodec, title="image codec (how images become bytes)", exclude=("header",))
    add_config_arguments(parser, MegabyteConfig, title="model (override the preset's fields)")
    add_config_arguments(parser, TrainConfig, title="training (override the recipe defaults below)",
                         exclude=("out_dir", "time"))
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m recipes.images ...``; errors a user can fix are one line, no traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from bytecodecs import CodecError
    from bytemodels.checkpoint import CheckpointError
    from bytemodels.data import DataCacheError
    from bytemodels.pretrained import ModelFileError
    from bytemodels.train import TrainingDiverged

    try:
        train(args)
    except (RecipeError, CodecError, CheckpointError, DataCacheError, ModelFileError, TrainingDiverged) as error:
        sys.exit(f"{parser.prog}: error: {error}")
    except KeyboardInterrupt:
        sys.exit(f"{parser.prog}: interrupted")


if __name__ == "__main__":
    main()
