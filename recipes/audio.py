"""Train a byte-level MEGABYTE model on audio clips: raw μ-law (or 16-bit) samples, one clip per record.

The recipe picks the clips, the wav codec and a preset, writes samples as ``.wav`` and compares the model with
FLAC of exactly the codec's bytes on the held-out clips (``compression.json``). Commands and flags: docs/recipes.md.
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

import numpy as np

from bytemodels.app.flags import COUNT, NON_NEGATIVE, POSITIVE
from bytemodels.app.hub import DEFAULT_SPLIT, HUB_DATA_FLAGS, add_hub_arguments
from recipes.media import (Reader, add_media_run_arguments, check_held_out, check_one_source, check_patch_fits,
                           comparison, folder_source, generate_records, hub_source, print_comparison,
                           run_media_command, shared_data_hint, spectrograms, write_records)
from bytemodels.app.recipe import (DataFlags, add_model_and_training_arguments, defaults_epilog,
                                    finish_with_comparison, make_trainer, model_config_from_args, recipe_parser,
                                    records_dataset, start_run)
from bytemodels.data import whole_document_windows

RECIPE = "audio"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "audio" / "fsdd" / "recordings"
"""The Free Spoken Digit Dataset beside the checkout (when there is one)."""
EVAL_WINDOW_CAP = 256
"""Validation windows when --eval-windows is not given: whole held-out clips, up to about this many windows."""

#: What the recipe sets where it differs from the preset and TrainConfig defaults, by device kind.
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": dict(preset="tiny", time="10m", batch_size=8, lr=2e-3, min_lr=2e-4, warmup_steps=50, eval_every=200,
                checkpoint_every=500, max_seq_len=1024, sample_seconds=0.5),
    "gpu": dict(preset="small", time="1h", batch_size=32, lr=6e-4, min_lr=6e-5, warmup_steps=500, eval_every=1000,
                checkpoint_every=2000, max_seq_len=8192, sample_seconds=2.0),
}
#: The clip flags a checkpoint records (by the names it records them under), so --resume needs none of them.
DATA_FLAGS = DataFlags(names={"path": "data", **HUB_DATA_FLAGS, "limit": "limit"}, sources=("data", "hub_dataset"),
                       paths=("data",), defaults={"hub_split": DEFAULT_SPLIT})


# -- 1. clips: a folder of audio files or a Hugging Face data set ---------------------------------------------
def offline_hint() -> str:
    """What to pass instead of the hub: the offline copy beside the checkout when there is one."""
    return shared_data_hint(SHARED_DATA, "(spoken digits beside this checkout)",
                            "pass --data DIR (a folder of .wav, .flac or other audio files)")


def read_audio(data: bytes) -> Any:
    """The ``bytecodecs.Audio`` of an audio file's bytes, read with soundfile (first channel squeezed when mono)."""
    import soundfile
    from bytecodecs import Audio

    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return Audio(samples[:, 0] if samples.shape[1] == 1 else samples, int(rate))


def hub_clips(name: str, split: str, config: str | None, column: str | None, codec: Any,
              limit: int | None) -> tuple[dict[str, Any], Reader]:
    """(cache key, reader) for a hub data set's audio; the hub is only contacted when the cache is built."""
    return hub_source(name, split, config, column, codec, limit, feature="Audio", read=read_audio,
                      readable="audio file", unit="clip", offline_hint=offline_hint())


def clip_source(args: argparse.Namespace, codec: Any) -> tuple[dict[str, Any], Reader]:
    """(cache key, reader) for --data or --hub-dataset."""
    check_one_source(args, metavar="DIR", what="clips", hint=offline_hint())
    if args.hub_dataset:
        return hub_clips(args.hub_dataset, args.hub_split, args.hub_config, args.hub_column, codec, args.limit)
    return folder_source(Path(args.data).expanduser(), codec, args.limit, what="audio")


# -- 2. the comparison: FLAC of exactly the codec's bytes ------------------------------------------------------
def flac_samples(data: bytes, codec: Any) -> tuple[np.ndarray, str]:
    """The codec's bytes as int16 samples that FLAC stores losslessly, and the FLAC subtype to store them in.

    μ-law and linear 8-bit codes are monotonic in the amplitude with silence at 128, so ``code - 128`` as
    signed 8-bit samples is exactly the codec's signal; libsndfile takes 8-bit samples from the high byte
    of int16, hence the factor 256. 16-bit samples are stored as they are."""
    frames = len(data) // codec.bytes_per_frame * codec.bytes_per_frame
    if codec.sample_format == "pcm16":
        samples, subtype = np.frombuffer(data[:frames], dtype="<i2").astype(np.int16), "PCM_16"
    else:
        codes = np.frombuffer(data[:frames], dtype=np.uint8).astype(np.int16)
        samples, subtype = (codes - 128) * 256, "PCM_S8"
    return samples.reshape(-1, codec.channels), subtype


def flac_bytes(data: bytes, codec: Any) -> bytes:
    """A FLAC file at FLAC's highest compression level (-8) of one clip's codec bytes."""
    import soundfile

    samples, subtype = flac_samples(data, codec)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, codec.sample_rate, subtype=subtype, format="FLAC", compression_level=1.0)
    return buffer.getvalue()


def flac_header_size(flac: bytes) -> int:
    """Bytes of the ``fLaC`` marker and metadata blocks in front of the audio frames."""
    position = 4
    while position + 4 <= len(flac):
        header = flac[position]
        length = struct.unpack(">I", b"\0" + flac[position + 1:position + 4])[0]
        position += 4 + length
        if header & 0x80:  # last metadata block
            break
    return position


def flac_size(clips: Iterable[bytes], codec: Any) -> dict[str, int]:
    """FLAC sizes of ``clips``: whole files and audio frames only (headers left out), and the codec bytes."""
    files = frames = raw = 0
    for data in clips:
        flac = flac_bytes(data, codec)
        files += len(flac)
        frames += len(flac) - flac_header_size(flac)
        raw += len(data)
    return {"codec_bytes": raw, "flac_file_bytes": files, "flac_frame_bytes": frames}


def compression_report(val_bpb: float | None, clips: list[bytes], codec: Any) -> dict[str, Any]:
    """Model bits/byte beside FLAC's bits per codec byte on the same held-out clips."""
    sizes = flac_size(clips, codec)
    seconds = round(max(sizes["codec_bytes"], 1) / codec.bytes_per_frame / codec.sample_rate, 2)
    return comparison(val_bpb, sizes, "codec_bytes", clips=len(clips), seconds=seconds, codec=codec.config())


def print_report(report: dict[str, Any]) -> None:
    """The comparison as a small table."""
    codec = report["codec"]
    print_comparison(f"held-out clips: {report['clips']} ({report['seconds']} s, {report['codec_bytes']:,} bytes of "
                     f"{codec['sample_format']} at {codec['sample_rate']} Hz)", report["model_bits_per_byte"],
                     [("FLAC -8, whole files", report["flac_file_bits_per_byte"]),
                      ("FLAC -8, audio frames only", report["flac_frame_bits_per_byte"])], "raw samples")


# -- 3. samples: new clips and continuations of held-out clips, as .wav (and a picture of them) ----------------
def sample_writer(codec: Any, patch_size: int, held_out: list[bytes], *, count: int, seconds: float,
                  prompt_seconds: float, temperature: float, seed: int) -> Callable[[Any, int, Path], None]:
    """The ``sample_fn`` the trainer calls: ``count`` new clips, ``count`` continuations and their spectrograms."""
    frame = codec.bytes_per_frame
    new_bytes = max(1, round(seconds * codec.sample_rate)) * frame
    prompt_bytes = round(prompt_seconds * codec.sample_rate) * frame
    # A prompt never takes more than half of its clip, so there is something left to continue.
    prompts = [clip[:min(prompt_bytes, len(clip) // 2 // frame * frame)] for clip in held_out[:count]]
    options = dict(temperature=temperature, seed=seed)

    def mono(data: bytes) -> np.ndarray:
        samples = codec.decode(data).samples
        return samples if samples.ndim == 1 else samples.mean(axis=1)

    def write_samples(model: Any, step: int, samples_dir: Path) -> None:
        folder = samples_dir / f"step_{step:06d}"
        for index, clip in enumerate(held_out[:count]):
            original = samples_dir / f"held_out_{index:02d}.wav"
            if not original.exists():
                codec.write_bytes(clip, original)
        new = generate_records(model, codec, patch_size, [b""] * count, new_bytes, **options)
        write_records(codec, new, folder, "sample")
        continued = generate_records(model, codec, patch_size, prompts, new_bytes, **options)
        write_records(codec, continued, folder, "continuation")
        rows = ([("held out", [mono(clip) for clip in held_out[:count]]),
                 ("continued", [mono(data) for data in continued])] if continued else [])
        rows.append(("new", [mono(data) for data in new]))
        marks = [len(prompt) / frame / codec.sample_rate for prompt in prompts]
        spectrograms(rows, codec.sample_rate, folder / "spectrograms.png", marks)

    return write_samples


# -- 4. training ---------------------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> None:
    """Read the clips, build the configs and the trainer, train, and print the comparison with FLAC."""
    import bytecodecs
    from bytecodecs import WavCodec
    from bytemodels.app.flags import overrides_from_args
    from bytemodels.config import MegabyteConfig

    run = start_run(args, RECIPE, DEVICE_DEFAULTS, codec_classes=[WavCodec], data_flags=DATA_FLAGS)
    recorded, defaults = run.recorded, run.defaults
    if recorded is not None:
        codec = bytecodecs.codec_from_config(recorded.metadata["codec"])
        model_config = MegabyteConfig.from_dict(recorded.model_config)
    else:
        codec = bytecodecs.get_codec("wav", **overrides_from_args(WavCodec, args))
        model_config = model_config_from_args(args, defaults, fields={"max_seq_len": defaults["max_seq_len"]},
                                              check_patch=partial(check_patch_fits, frame=codec.framing.align))
    key, read = clip_source(args, codec)
    print(f"clips: {args.hub_dataset or args.data}; codec {json.dumps(codec.config())}; byte cache: {run.cache_dir}")
    dataset = records_dataset(read, codec, run.cache_dir, recipe=RECIPE, source=key, val_fraction=args.val_fraction)
    check_held_out(dataset, args.val_fraction, "clips")
    train_data, val_data = dataset.train, dataset.val
    seconds = 1.0 / (codec.bytes_per_frame * codec.sample_rate)
    print(f"train: {len(train_data):,} clips, {train_data.num_bytes * seconds / 60:.1f} min; "
          f"held out: {len(val_data):,} clips, {val_data.num_bytes * seconds / 60:.1f} min")

    patch, seq_len = model_config.patch_size, model_config.max_seq_len
    prompts = [val_data.document(i)[0] for i in range(min(len(val_data), args.num_samples))]
    sample_fn = sample_writer(codec, patch, prompts, count=args.num_samples,
                              seconds=args.sample_seconds or defaults["sample_seconds"],
                              prompt_seconds=args.prompt_seconds, temperature=args.temperature, seed=run.seed)
    metadata = {"recipe": RECIPE, "preset": args.preset or defaults["preset"], "codec": codec.config(),
                "layout": "records", "data": DATA_FLAGS.record(args)}
    # Validate on whole held-out clips, so the comparison with FLAC covers exactly the same audio.
    trainer = make_trainer(model_config, train_data, val_data, out=run.out, resume_from=run.resume_from,
                           flags=run.flags, defaults=defaults, sample_fn=sample_fn, metadata=metadata,
                           eval_windows=whole_document_windows(val_data.lengths, patch, seq_len, EVAL_WINDOW_CAP))

    print(f"run folder: {run.out} (checkpoints/, metrics.jsonl, curve.png, samples/, compression.json)")
    summary = trainer.fit()
    table = finish_with_comparison(trainer, summary, run.out, val_data, partial(compression_report, codec=codec),
                                   print_report)
    if table is not None:
        print(f"\ncheckpoint: {summary.checkpoint}; curve: {run.out / 'curve.png'}; samples: {run.out / 'samples'}; "
              f"table: {table}")


# -- 5. command line ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Recipe flags, then one flag per field of the wav codec, the model config and the training config."""
    from bytecodecs import WavCodec
    from bytemodels.app.flags import add_config_arguments

    epilog = defaults_epilog(DEVICE_DEFAULTS, [
        "  sample_every follows eval_every; eval_windows covers whole held-out clips (about "
        f"{EVAL_WINDOW_CAP} windows), the clips the FLAC comparison uses.",
        "  --patch-sizes must keep sample frames whole: a multiple of 1 byte for mulaw and linear8, "
        "2 for pcm16, twice that in stereo."])
    parser, recipe = recipe_parser(
        RECIPE, "Train a byte-level MEGABYTE model on audio clips (one clip per record), write new clips and "
                "continuations of held-out clips as .wav, and compare validation bits/byte with FLAC.", epilog)
    example = f" (e.g. {os.path.relpath(SHARED_DATA)})" if SHARED_DATA.is_dir() else ""
    recipe.add_argument("--data", metavar="DIR", help=f"folder of audio files, searched recursively{example}")
    add_hub_arguments(recipe, "Audio",
                      "a Hugging Face audio data set instead of --data (the file bytes are decoded here)")
    add_media_run_arguments(recipe, RECIPE, DEVICE_DEFAULTS, unit="clips", recorded="codec and clips",
                            held_out_for="validation and continuations")
    recipe.add_argument("--num-samples", type=COUNT, default=4, metavar="N",
                        help="new clips and continuations written at each sampling (default: 4)")
    recipe.add_argument("--sample-seconds", type=POSITIVE, metavar="S",
                        help="longest generated audio per clip (default: 0.5 on CPU, 2.0 on GPU)")
    recipe.add_argument("--prompt-seconds", type=NON_NEGATIVE, default=0.25, metavar="S",
                        help="held-out audio a continuation starts from, at most half the clip (default: 0.25)")
    recipe.add_argument("--temperature", type=NON_NEGATIVE, default=1.0, help="sampling temperature (default: 1.0)")
    add_config_arguments(parser, WavCodec, title="wav codec (how clips become bytes)")
    add_model_and_training_arguments(parser, DEVICE_DEFAULTS)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m recipes.audio ...``; errors a user can fix are one line, no traceback."""
    run_media_command(build_parser(), train, argv)


if __name__ == "__main__":
    main()
