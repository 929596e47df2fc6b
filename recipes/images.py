"""Train a byte-level MEGABYTE model on images at a fixed size: raw pixels, one image per record, a row per patch.

The recipe picks the images, the image codec and a preset, draws samples and completions as PNG grids and
compares the model with PNG on the held-out images (``compression.json``). Commands and flags: docs/recipes.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bytemodels.app.flags import COUNT, NON_NEGATIVE
from bytemodels.app.hub import DEFAULT_SPLIT, HUB_DATA_FLAGS, add_hub_arguments
from recipes.media import (Reader, add_media_run_arguments, array_reader, check_held_out, check_one_source,
                           check_patch_fits, comparison, fixed_size_image_options, folder_source, generate_records,
                           hub_source, image_array, image_grid, print_comparison, row_patch_size, run_media_command,
                           save_png, shared_data_hint, write_records)
from bytemodels.app.recipe import (DataFlags, RecipeError, add_model_and_training_arguments, defaults_epilog,
                                    finish_with_comparison, make_trainer, model_config_from_args, recipe_parser,
                                    records_dataset, start_run)
from bytemodels.data import file_key, record_ids, whole_document_windows

RECIPE = "images"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"
"""MNIST and CIFAR-10 arrays beside the checkout (when there are some)."""
EVAL_WINDOW_CAP = 256
"""Validation windows: whole held-out images, up to about this many windows."""

#: What the recipe sets where it differs from the preset and TrainConfig defaults, by device kind.
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": dict(preset="tiny", time="10m", batch_size=8, lr=2e-3, min_lr=2e-4, warmup_steps=50, eval_every=200,
                checkpoint_every=500),
    "gpu": dict(preset="small", time="1h", batch_size=32, lr=6e-4, min_lr=6e-5, warmup_steps=500, eval_every=1000,
                checkpoint_every=2000),
}
#: The image flags a checkpoint records (by the names it records them under), so --resume needs none of them.
DATA_FLAGS = DataFlags(names={"path": "data", "array_key": "array_key", **HUB_DATA_FLAGS, "limit": "limit"},
                       sources=("data", "hub_dataset"), paths=("data",), defaults={"hub_split": DEFAULT_SPLIT})


# -- 1. images: a numpy array file, a folder of image files or a Hugging Face data set ---------------------
def offline_hint() -> str:
    """What to pass instead of the hub: the offline arrays beside the checkout when there are some."""
    return shared_data_hint(SHARED_DATA / "mnist_test.npz", "(MNIST beside this checkout) or another .npz or image "
                            "folder", "pass --data PATH (a folder of image files, or images as a .npz or .npy array)")


def read_image(data: bytes) -> Any:
    """The Pillow image of an image file's bytes, loaded."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def hub_images(name: str, split: str, config: str | None, column: str | None, codec: Any,
               limit: int | None) -> tuple[dict[str, Any], Reader]:
    """(cache key, reader) for a hub data set's images; the hub is only contacted when the cache is built."""
    return hub_source(name, split, config, column, codec, limit, feature="Image", read=read_image, readable="image",
                      unit="image", offline_hint=offline_hint())


def image_source(args: argparse.Namespace, codec_options: dict[str, Any]) -> tuple[Any, dict, Reader]:
    """(codec, cache key, reader) for --data or --hub-dataset; an array's own size is the default size."""
    import bytecodecs
    from bytecodecs.image import ARRAY_SUFFIXES

    check_one_source(args, metavar="PATH", what="images", hint=offline_hint())
    if args.hub_dataset:
        codec = bytecodecs.get_codec("image", **codec_options)
        return codec, *hub_images(args.hub_dataset, args.hub_split, args.hub_config, args.hub_column, codec,
                                  args.limit)
    path = Path(args.data).expanduser()
    if path.is_file() and path.suffix.lower() in ARRAY_SUFFIXES:
        codec, array = image_array(path, args.array_key, codec_options, flag="--data")
        key = {"array": file_key(path), "key": args.array_key, "limit": args.limit}
        return codec, key, array_reader(array, codec, args.limit, progress=f"encoding {path.name}")
    if path.is_file():
        raise RecipeError(f"--data {path}: give a folder of images or a {' or '.join(ARRAY_SUFFIXES)} array file")
    codec = bytecodecs.get_codec("image", **codec_options)
    return codec, *folder_source(path, codec, args.limit, what="image")


# -- 2. the comparison: PNG of the same images ------------------------------------------------------------------
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


def compression_report(val_bpb: float | None, images: list[bytes], codec: Any) -> dict[str, Any]:
    """Model bits/byte beside PNG's bits per raw pixel byte on the same held-out images."""
    return comparison(val_bpb, png_size(images, codec), "pixel_bytes", images=len(images), codec=codec.config())


def print_report(report: dict[str, Any]) -> None:
    """The comparison as a small table."""
    codec = report["codec"]
    print_comparison(f"held-out images: {report['images']} ({codec['width']}x{codec['height']} {codec['mode']}, "
                     f"{report['pixel_bytes']:,} pixel bytes)", report["model_bits_per_byte"],
                     [("PNG (optimize), whole files", report["png_file_bits_per_byte"]),
                      ("PNG (optimize), pixel data only", report["png_idat_bits_per_byte"])], "raw pixels")


# -- 3. samples: new images and completions of held-out images, as PNG ----------------------------------------
def sample_writer(codec: Any, patch_size: int, held_out: list[bytes], *, count: int, temperature: float,
                  seed: int) -> Callable[[Any, int, Path], None]:
    """The ``sample_fn`` the trainer calls: ``count`` new images, ``count`` completions and their grid."""
    record = codec.framing.record_size
    given_rows = codec.height // 2
    tops = [image[:given_rows * codec.framing.align] for image in held_out[:count]]
    options = dict(temperature=temperature, seed=seed)

    def write_samples(model: Any, step: int, samples_dir: Path) -> None:
        folder = samples_dir / f"step_{step:06d}"
        samples = generate_records(model, codec, patch_size, [b""] * count, record, **options)
        completions = generate_records(model, codec, patch_size, tops, record - len(tops[0]), **options) if tops else []
        write_records(codec, samples, folder, "sample")
        write_records(codec, completions, folder, "completion")
        rows = [("samples", [codec.decode(data) for data in samples])]
        if completions:
            rows += [("held out", [codec.decode(data) for data in held_out[:count]]),
                     ("completed", [codec.decode(data) for data in completions])]
        save_png(image_grid(rows, split_row=given_rows if completions else None), folder / "grid.png")

    return write_samples


# -- 4. training -------------------------------------------------------------------------------------------------
def image_model_config(args: argparse.Namespace, codec: Any, defaults: dict[str, Any]) -> Any:
    """The preset with the model flags; by default one row per patch and one whole image per window."""
    row, record = codec.framing.align, codec.framing.record_size
    return model_config_from_args(args, defaults, patch_size=row_patch_size(row),
                                  check_patch=partial(check_patch_fits, row=row),
                                  max_seq_len=lambda patch: record_ids(record, patch))


def train(args: argparse.Namespace) -> None:
    """Read the images, build the configs and the trainer, train, and print the comparison with PNG."""
    from bytecodecs import ImageCodec
    from bytemodels.config import MegabyteConfig

    run = start_run(args, RECIPE, DEVICE_DEFAULTS, codec_classes=[ImageCodec], data_flags=DATA_FLAGS)
    recorded = run.recorded
    codec_options = ({k: v for k, v in recorded.metadata["codec"].items() if k != "name"} if recorded is not None
                     else fixed_size_image_options(args))
    codec, key, read = image_source(args, codec_options)
    if recorded is not None:
        model_config = MegabyteConfig.from_dict(recorded.model_config)
    else:
        model_config = image_model_config(args, codec, run.defaults)
    print(f"images: {args.hub_dataset or args.data}; codec {json.dumps(codec.config())}; byte cache: {run.cache_dir}")
    dataset = records_dataset(read, codec, run.cache_dir, recipe=RECIPE, source=key, val_fraction=args.val_fraction)
    check_held_out(dataset, args.val_fraction, "images")
    train_data, val_data = dataset.train, dataset.val
    patch, seq_len = model_config.patch_size, model_config.max_seq_len
    rows = patch / codec.framing.align
    print(f"train: {len(train_data):,} images; held out: {len(val_data):,}; patch {patch} bytes "
          f"({rows:g} image row{'' if rows == 1 else 's'}), window {seq_len} ids")

    held_out = [val_data.document(i)[0] for i in range(min(len(val_data), args.num_samples))]
    sample_fn = sample_writer(codec, patch, held_out, count=args.num_samples, temperature=args.temperature,
                              seed=run.seed)
    metadata = {"recipe": RECIPE, "preset": args.preset or run.defaults["preset"], "codec": codec.config(),
                "layout": "records", "data": DATA_FLAGS.record(args)}
    # Validate on whole held-out images, so the comparison with PNG covers exactly the same pixels.
    trainer = make_trainer(model_config, train_data, val_data, out=run.out, resume_from=run.resume_from,
                           flags=run.flags, defaults=run.defaults, sample_fn=sample_fn, metadata=metadata,
                           eval_windows=whole_document_windows(val_data.lengths, patch, seq_len, EVAL_WINDOW_CAP))

    print(f"run folder: {run.out} (checkpoints/, metrics.jsonl, curve.png, samples/, compression.json)")
    summary = trainer.fit()
    table = finish_with_comparison(trainer, summary, run.out, val_data, partial(compression_report, codec=codec),
                                   print_report)
    if table is not None:
        print(f"\ncheckpoint: {summary.checkpoint}; curve: {run.out / 'curve.png'}; "
              f"samples: {run.out / 'samples'} (grid.png in each step folder); table: {table}")


# -- 5. command line ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Recipe flags, then one flag per field of the image codec, the model config and the training config."""
    from bytecodecs import ImageCodec
    from bytemodels.app.flags import add_config_arguments

    epilog = defaults_epilog(DEVICE_DEFAULTS, [
        "  patch_sizes: one image row (width x channels bytes, e.g. 28 for 28x28 L, 96 for 32x32 RGB); a "
        "--patch-sizes value must be whole rows or divide a row.",
        "  max_seq_len: one whole image per window (header patch + pixels + EOS in whole patches, e.g. 840 "
        "for 28x28 L with patch 28).",
        "  width, height and mode: those of a .npz/.npy array's images; 32x32 RGB for folders and the hub.",
        "  sample_every follows eval_every; eval_windows covers whole held-out images (about "
        f"{EVAL_WINDOW_CAP}), the images the PNG comparison uses."])
    parser, recipe = recipe_parser(
        RECIPE, "Train a byte-level MEGABYTE model on fixed-size images (one image per record, one row per patch), "
                "draw samples and completions as PNG grids, and compare validation bits/byte with PNG.", epilog)
    example = f" (e.g. {os.path.relpath(SHARED_DATA / 'mnist_test.npz')})" if SHARED_DATA.is_dir() else ""
    recipe.add_argument("--data", metavar="PATH", help="a folder of image files (searched recursively) or images "
                        f"as a .npz or .npy uint8 array{example}")
    recipe.add_argument("--array-key", metavar="NAME",
                        help="array of a .npz file holding the images (default: images, else the first "
                             "image-shaped one)")
    add_hub_arguments(recipe, "Image",
                      "a Hugging Face image data set instead of --data (e.g. ylecun/mnist, uoft-cs/cifar10)")
    add_media_run_arguments(recipe, RECIPE, DEVICE_DEFAULTS, unit="images", recorded="codec and images",
                            held_out_for="validation and completions")
    recipe.add_argument("--num-samples", type=COUNT, default=8, metavar="N",
                        help="new images and completions drawn at each sampling (default: 8)")
    recipe.add_argument("--temperature", type=NON_NEGATIVE, default=1.0, help="sampling temperature (default: 1.0)")
    add_config_arguments(parser, ImageCodec, title="image codec (how images become bytes)", exclude=("header",))
    add_model_and_training_arguments(parser, DEVICE_DEFAULTS)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m recipes.images ...``; errors a user can fix are one line, no traceback."""
    run_media_command(build_parser(), train, argv)


if __name__ == "__main__":
    main()
