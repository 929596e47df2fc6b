"""Train one byte-level MEGABYTE model on text, audio and images at once, each document led by its modality tag.

Every document is a record whose header patch holds BOS and its codec's tag (text 0, audio 1, image 2), so sampling
from a tag produces that modality, written as ``.txt``, ``.wav`` or ``.png``; patches are aligned to image rows.
Commands and flags: docs/recipes.md.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bytemodels.app.flags import COUNT, NON_NEGATIVE, POSITIVE
from recipes.media import (add_media_run_arguments, check_held_out, check_patch_fits, fixed_size_image_options,
                           generate_records, image_grid, row_patch_size, run_media_command, save_png, write_records)
from bytemodels.app.recipe import (DataFlags, add_model_and_training_arguments, defaults_epilog, make_trainer,
                                    model_config_from_args, no_result_line, print_done, recipe_parser,
                                    start_run, stop_if_interrupted)
from bytemodels.data import record_ids, whole_document_windows
from recipes.mixed_data import RECIPE, SEPARATOR, byte_dataset, sources_from_args

MODALITIES = ("text", "audio", "image")
"""In the order of their tags (text 0, audio 1, image 2); a flag per modality names its source."""
EVAL_WINDOW_CAP = 256
"""Validation windows: whole held-out documents of every modality, up to about this many windows."""

#: What the recipe sets where it differs from the preset and TrainConfig defaults, by device kind.
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": dict(preset="tiny", time="10m", batch_size=8, lr=2e-3, min_lr=2e-4, warmup_steps=50, eval_every=200,
                checkpoint_every=500, max_seq_len=1024, sample_seconds=0.5),
    "gpu": dict(preset="small", time="1h", batch_size=32, lr=6e-4, min_lr=6e-5, warmup_steps=500, eval_every=1000,
                checkpoint_every=2000, max_seq_len=4096, sample_seconds=2.0),
}
#: The source flags a checkpoint records, so --resume needs none of them.
DATA_FLAGS = DataFlags(names={name: name for name in ("text", "audio", "images", "array_key", "limit")},
                       sources=("text", "audio", "images"), paths=("text", "audio", "images"))


# -- 1. one patch size for every modality ---------------------------------------------------------------------
def aligned_patch_size(codecs: dict[str, Any], default: int) -> int:
    """One image row per patch when there are images (made a multiple of the audio frame), else ``default``."""
    if "image" not in codecs:
        return default
    patch = codecs["image"].framing.align
    if "audio" in codecs:
        patch = math.lcm(patch, codecs["audio"].framing.align)
    return row_patch_size(patch)


def check_alignment(patch_size: int, codecs: dict[str, Any]) -> None:
    """A patch holds whole audio frames and whole image rows (or a whole fraction of a row)."""
    check_patch_fits(patch_size, frame=codecs["audio"].framing.align if "audio" in codecs else None,
                     frames="audio frames", row=codecs["image"].framing.align if "image" in codecs else None)


# -- 2. samples: one set per modality tag, each in its own format ---------------------------------------------
def sample_writer(codecs: dict[str, Any], patch_size: int, *, count: int, text_bytes: int, audio_seconds: float,
                  temperature: float, seed: int) -> Callable[[Any, int, Path], None]:
    """The ``sample_fn`` the trainer calls: ``count`` samples started from each modality's tag."""
    from tqdm.auto import tqdm

    lengths = {"text": text_bytes}
    if "audio" in codecs:
        audio = codecs["audio"]
        lengths["audio"] = max(1, round(audio_seconds * audio.sample_rate)) * audio.bytes_per_frame
    if "image" in codecs:
        lengths["image"] = codecs["image"].framing.record_size

    def write_samples(model: Any, step: int, samples_dir: Path) -> None:
        folder = samples_dir / f"step_{step:06d}"
        for name, codec in codecs.items():
            generated = generate_records(model, codec, patch_size, [b""] * count, lengths[name],
                                         temperature=temperature, seed=seed)
            paths = write_records(codec, generated, folder, name)
            if name == "text":
                for index, (path, data) in enumerate(zip(paths, generated)):
                    tqdm.write(f"--- text sample {index + 1} at step {step} ({path}) ---\n{codec.decode(data)}\n")
            if name == "image":  # the images side by side, for a glance
                save_png(image_grid([("", [codec.decode(data) for data in generated])], label_width=0),
                         folder / "images.png")

    return write_samples


# -- 3. training ---------------------------------------------------------------------------------------------
def mixed_model_config(args: argparse.Namespace, codecs: dict[str, Any], defaults: dict[str, Any]) -> Any:
    """The preset with the model flags; patches aligned to image rows, windows holding a whole image."""
    from bytemodels.config import MegabyteConfig

    def window(patch: int) -> int:
        seq_len = math.ceil(defaults["max_seq_len"] / patch) * patch
        if "image" in codecs:  # one whole image per window
            seq_len = max(seq_len, record_ids(codecs["image"].framing.record_size, patch))
        return seq_len

    preset = MegabyteConfig.preset(args.preset or defaults["preset"])
    return model_config_from_args(args, defaults, patch_size=aligned_patch_size(codecs, preset.patch_size),
                                  check_patch=lambda patch: check_alignment(patch, codecs), max_seq_len=window)


def codec_options_from_args(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The audio and image codec flags given on the command line, by modality."""
    from bytecodecs import WavCodec
    from bytemodels.app.flags import overrides_from_args

    return {"audio": overrides_from_args(WavCodec, args), "image": fixed_size_image_options(args)}


def train(args: argparse.Namespace) -> None:
    """Read every modality, build the configs and the trainer, and train."""
    from bytecodecs import ImageCodec, WavCodec
    from bytemodels.config import MegabyteConfig

    run = start_run(args, RECIPE, DEVICE_DEFAULTS, codec_classes=[WavCodec, ImageCodec], data_flags=DATA_FLAGS)
    recorded, defaults, out, cache_dir = run.recorded, run.defaults, run.out, run.cache_dir
    codec_options = ({name: {k: v for k, v in config.items() if k != "name"}
                      for name, config in recorded.metadata["codecs"].items()} if recorded is not None
                     else codec_options_from_args(args))
    codecs, keys, readers = sources_from_args(args, codec_options)
    if recorded is not None:
        model_config = MegabyteConfig.from_dict(recorded.model_config)
    else:
        model_config = mixed_model_config(args, codecs, defaults)
    for name, codec in codecs.items():
        print(f"{name}: {getattr(args, 'images' if name == 'image' else name)} "
              f"(tag {codec.tag}, codec {json.dumps(codec.config())})")
    print(f"byte cache: {cache_dir}")
    dataset = byte_dataset(keys, readers, codecs, cache_dir, args.val_fraction)
    check_held_out(dataset, args.val_fraction, "documents")
    train_data, val_data = dataset.train, dataset.val
    tags = np.array([train_data.document(i)[1] for i in range(len(train_data))])
    counts = ", ".join(f"{int((tags == codec.tag).sum()):,} {name}" for name, codec in codecs.items())
    patch, seq_len = model_config.patch_size, model_config.max_seq_len
    print(f"train: {counts} documents ({train_data.num_bytes:,} bytes); held out: {len(val_data):,}; "
          f"patch {patch} bytes, window {seq_len} ids")

    sample_fn = sample_writer(codecs, patch, count=args.num_samples, text_bytes=args.text_bytes,
                              audio_seconds=args.sample_seconds or defaults["sample_seconds"],
                              temperature=args.temperature, seed=run.seed)
    metadata = {"recipe": RECIPE, "preset": args.preset or defaults["preset"], "layout": "records",
                "data": DATA_FLAGS.record(args),
                "codecs": {name: codec.config() for name, codec in codecs.items()}}
    trainer = make_trainer(model_config, train_data, val_data, out=out, resume_from=run.resume_from, flags=run.flags,
                           defaults=defaults, sample_fn=sample_fn, metadata=metadata,
                           eval_windows=whole_document_windows(val_data.lengths, patch, seq_len, EVAL_WINDOW_CAP))

    print(f"run folder: {out} (checkpoints/, metrics.jsonl, curve.png, samples/)")
    summary = trainer.fit()
    stop_if_interrupted(summary, out)
    if not trainer.is_main:
        return
    print_done(summary)
    if no_result_line(summary):
        print(no_result_line(summary))
    elif summary.val_bpb is not None:
        print(f"validation {summary.val_bpb:.4f} bits/byte over all modalities")
    print(f"checkpoint: {summary.checkpoint}; curve: {out / 'curve.png'}; samples: {out / 'samples'} "
          f"({', '.join(f'{name}_*{codec.extension}' for name, codec in codecs.items())})")


# -- 4. command line ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Recipe flags, then one flag per field of the wav and image codecs, the model config and the training config."""
    from bytecodecs import ImageCodec, WavCodec
    from bytemodels.app.flags import add_config_arguments

    epilog = defaults_epilog(DEVICE_DEFAULTS, [
        "  patch_sizes: one image row with --images (e.g. 28 for 28x28 L; a --patch-sizes value must be whole "
        "rows or divide a row, and hold whole audio frames), else the preset's.",
        "  max_seq_len: at least one whole image per window (840 for 28x28 L with patch 28).",
        "  width, height and mode: those of a .npz/.npy array's images; 32x32 RGB for a folder.",
        "  sample_every follows eval_every; eval_windows covers whole held-out documents (about "
        f"{EVAL_WINDOW_CAP} windows)."])
    parser, recipe = recipe_parser(
        RECIPE, "Train one byte-level MEGABYTE model on text, audio and images, each document led by its modality "
                "tag; samples of each modality are written as .txt, .wav and .png.", epilog)
    recipe.add_argument("--text", metavar="PATH", help="a .txt file or a folder of text files; a file is split into "
                        f"documents at {SEPARATOR} (TinyStories style) when it holds that marker")
    recipe.add_argument("--audio", metavar="DIR", help="a folder of audio files, searched recursively")
    recipe.add_argument("--images", metavar="PATH", help="a folder of image files or images as a .npz or .npy array")
    recipe.add_argument("--array-key", metavar="NAME",
                        help="array of an --images .npz file (default: images, else the first image-shaped one)")
    add_media_run_arguments(recipe, RECIPE, DEVICE_DEFAULTS, unit="documents", recorded="codecs and data",
                            per=" of each modality")
    recipe.add_argument("--num-samples", type=COUNT, default=3, metavar="N",
                        help="samples of each modality written at each sampling (default: 3)")
    recipe.add_argument("--text-bytes", type=COUNT, default=400, metavar="N",
                        help="longest text sample in bytes (default: 400)")
    recipe.add_argument("--sample-seconds", type=POSITIVE, metavar="S",
                        help="longest audio sample in seconds (default: 0.5 on CPU, 2.0 on GPU)")
    recipe.add_argument("--temperature", type=NON_NEGATIVE, default=1.0, help="sampling temperature (default: 1.0)")
    add_config_arguments(parser, WavCodec, title="wav codec (how --audio clips become bytes)")
    add_config_arguments(parser, ImageCodec, title="image codec (how --images become bytes)", exclude=("header",))
    add_model_and_training_arguments(parser, DEVICE_DEFAULTS)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m recipes.mixed ...``; errors a user can fix are one line, no traceback."""
    run_media_command(build_parser(), train, argv)


if __name__ == "__main__":
    main()
