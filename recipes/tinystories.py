"""Train a byte-level MEGABYTE model on TinyStories (Eldan & Li 2023) and sample stories from it.

The recipe reads the stories (``recipes.tinystories_data``), picks the text codec and a preset and hands them to
``bytemodels.Trainer``; ``--instruct`` fine-tunes on TinyStories-Instruct entries (``recipes.tinystories_instruct``).
Commands and flags: docs/recipes.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bytemodels.app.flags import COUNT, FRACTION, NON_NEGATIVE, apply_overrides, number, seed as seed_flag
from bytemodels.app.recipe import (RecipeError, add_model_and_training_arguments, add_run_arguments,
                                    checkpoint_model_config, defaults_epilog, device_kind, init_from_checkpoint,
                                    make_trainer, model_config_from_args, no_result_line, print_done, recipe_parser,
                                    recipe_prog, resolve_device, run_command, start_run, stop_if_interrupted)
from bytemodels.config import MegabyteConfig
from bytemodels.data import prompt_ids
from recipes.tinystories_data import (HUB_INSTRUCT, RECIPE, SEPARATOR, byte_datasets, check_held_out, data_record,
                                      source_from_args)
from recipes.tinystories_instruct import STORY_FIELD, is_instruct_entry, story_prompt

DEFAULT_VAL_FRACTION = 0.05
"""Stories held out for validation when the data has no validation split and --val-fraction is not given."""

PLAIN_PROMPTS = ("Once upon a time", "One day, a little")
INSTRUCT_PROMPT = "Features: Dialogue\nWords: cat, ball, happy\nStory: "

#: What the recipe sets where it differs from the preset and TrainConfig defaults, by device kind. On a CPU every
#: setting was chosen by bits per byte over the validation text after 10 or 30 minutes, measured against
#: the setting it replaced: windows of 1,024 bytes (a whole story), 8 per step (Muon's update costs the same
#: whatever the batch), the local stage 128 wide, hashed n-gram tables with n-gram dropout per table (the small text
#: is read about ten times in 30 minutes, and the longer n-grams learn it by heart first), a word block 192 wide,
#: NorMuon without gradient clipping, and the peak learning rate held until the last 30% of the run. The
#: measurements: docs/experiments.md ("Findings at a glance", "The TinyStories recipe's CPU settings").
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": dict(preset="tiny", model=dict(max_seq_len=1024, dims=(128, 128), hash_ngrams=(2, 3, 4), hash_word_bytes=12,
                                          hash_buckets=12288, ngram_dropout=(0.15, 0.3, 0.45, 0.45),
                                          word_layers=1, word_dim=192), time="10m",
                batch_size=8, lr=6e-3, min_lr=0.0, schedule="wsd", decay_fraction=0.3, warmup_steps=100,
                optimizer="normuon", grad_clip=0.0, eval_every=1000, eval_windows=64, checkpoint_every=1000,
                sample_bytes=600, compile=True),
    "gpu": dict(preset="base", model={}, time="1h", batch_size=32, lr=6e-4, min_lr=6e-5, warmup_steps=500,
                eval_every=1000, eval_windows=256, checkpoint_every=2000, sample_bytes=1500),
}
#: Fine-tuning on instruct entries starts from trained weights: a lower peak rate and a shorter budget (on a CPU
#: with the 4 windows per step and the gradient clipping it was tried with: three minutes are few updates).
INSTRUCT_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": dict(time="3m", batch_size=4, lr=1e-3, min_lr=1e-4, warmup_steps=50, grad_clip=1.0, eval_every=500),
    "gpu": dict(time="20m", lr=2e-4, min_lr=2e-5, warmup_steps=100, eval_every=500),
}


# -- 1. stories during training: printed, and written through the text codec ---------------------------------
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


# -- 2. training ------------------------------------------------------------------------------------------
def recipe_defaults(kind: str, instruct: bool) -> dict[str, Any]:
    """The recipe's defaults for this device kind (and for fine-tuning on instruct entries)."""
    return {**DEVICE_DEFAULTS[kind], **(INSTRUCT_DEFAULTS[kind] if instruct else {})}



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
    run = start_run(args, RECIPE, DEVICE_DEFAULTS,
                    default_out=Path("runs") / f"{RECIPE}-instruct" if args.instruct else None)
    codec, out, checkpoint, cache_dir = bytecodecs.get_codec("text"), run.out, run.recorded, run.cache_dir
    recorded = checkpoint.metadata if checkpoint else None
    recorded_data = (recorded or {}).get("data") or {}
    instruct = bool(recorded.get("instruct")) if recorded else args.instruct
    init = (args.init or default_init()) if instruct and run.resume_from is None else None
    defaults = recipe_defaults(device_kind(getattr(args, "device", "auto")), instruct)
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
                "layout": "packed", "separator": SEPARATOR, "instruct": instruct,
                "init": init, "data": data_record(source, instruct_seed, val_fraction, split_seed)}
    trainer = make_trainer(model_config, train_data, val_data, out=out, resume_from=run.resume_from,
                           flags=run.flags, defaults=defaults, sample_fn=sample_fn, metadata=metadata)
    if init:
        print(f"fine-tuning from {init}")
        init_from_checkpoint(trainer, init)

    print(f"run folder: {out} (checkpoints/, metrics.jsonl, curve.png, samples/)")
    print(f"data and model ready in {time.monotonic() - started:.0f} s; the time budget starts now")
    summary = trainer.fit()
    stop_if_interrupted(summary, out)
    print_summary(summary, out)


# -- 3. sampling from a checkpoint ---------------------------------------------------------------------------
def sample(args: argparse.Namespace) -> None:
    """Stream one story from a checkpoint to stdout (and save it with ``--output``)."""
    import bytecodecs
    import torch
    from bytemodels.checkpoint import load_model, open_checkpoint
    from bytemodels.streaming import stream_sample

    device = resolve_device(args.device)  # before loading: a device this machine lacks is one line
    folder, metadata, _ = open_checkpoint(args.checkpoint)
    recorded = metadata.get("codec")  # open_checkpoint checked its type; the codec says what is wrong with it
    codec = bytecodecs.codec_from_config(recorded) if recorded else bytecodecs.get_codec("text")
    model = load_model(folder, device)  # open_checkpoint has checked the model files
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


# -- 4. command line ---------------------------------------------------------------------------------------
def epilog() -> str:
    """The recipe defaults by device, plain and fine-tuning, for the end of ``--help``."""
    columns = {label: values for kind in ("cpu", "gpu") for label, values in (
        (kind, DEVICE_DEFAULTS[kind]), (f"{kind} with --instruct", INSTRUCT_DEFAULTS[kind]))}
    return defaults_epilog(columns, [
        "  sample_every follows eval_every: stories are printed at each evaluation and at the end.",
        f"sample from a checkpoint: {recipe_prog(RECIPE, 'sample')} --help"])


def build_train_parser() -> argparse.ArgumentParser:
    parser, recipe = recipe_parser(RECIPE, "Train a byte-level MEGABYTE model on TinyStories and print stories as it "
                                           "learns. Subcommand: `sample` writes a story from a checkpoint.", epilog())
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
