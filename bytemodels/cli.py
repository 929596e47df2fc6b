"""The ``bytemodels`` command: sample, evaluate, inspect checkpoints; encode and decode with codecs.

This is the one core module that imports ``bytecodecs``: a checkpoint records its codec's
configuration as opaque JSON, and only here does it become a codec again.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import itertools
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bytecodecs
from bytemodels.options import COUNT, NON_NEGATIVE, number, one_line_errors, seed as seed_flag

LAYOUT_BY_MODALITY = {"audio": "records", "image": "records"}


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


# -- checkpoints -----------------------------------------------------------------------------------
#: The files of a checkpoint that sampling, evaluating and inspecting read: verified against their checksums.
MODEL_FILES = ("config.json", "model.safetensors", "metadata.json")


def open_checkpoint(path: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(checkpoint folder, metadata, trainer state) for a checkpoint or run folder, or a model folder.

    A checkpoint's model files are checked against the sizes and SHA-256 its trainer state recorded."""
    from bytemodels.checkpoint import METADATA_FILE, STATE_FILE, resolve_checkpoint

    folder = Path(path)
    if not folder.exists():
        raise CommandError(f"{path}: no such checkpoint folder")
    if (folder / STATE_FILE).is_file() or not (folder / "model.safetensors").is_file():
        folder = resolve_checkpoint(folder, only=MODEL_FILES)
    metadata = _read_json(folder / METADATA_FILE, allow_null=True)
    _check_metadata(metadata, folder / METADATA_FILE)
    state = _read_json(folder / STATE_FILE)
    return folder, metadata, state


def _read_json(path: Path, allow_null: bool = False) -> dict[str, Any]:
    """A JSON object file, {} where the file is absent (or holds null, where allowed)."""
    from bytemodels.jsonfile import read_json

    if not path.is_file():
        return {}
    value = read_json(path, CommandError)
    if value is None and allow_null:  # a checkpoint saved without metadata records null
        return {}
    if not isinstance(value, dict):
        raise CommandError(f"{path}: not a JSON object (found a {type(value).__name__})")
    return value


def _check_metadata(metadata: dict[str, Any], path: Path) -> None:
    """Refuse a metadata.json whose codec entries or layout have the wrong type, naming the file."""
    codec, several, layout = metadata.get("codec"), metadata.get("codecs"), metadata.get("layout", "packed")
    configs = [codec] if codec is not None else []
    if several is not None:
        if not isinstance(several, dict):
            raise CommandError(f"{path}: 'codecs' must map modality names to codec configs, not {several!r}")
        configs += list(several.values())
    for config in configs:
        if not isinstance(config, dict) or not isinstance(config.get("name"), str):
            raise CommandError(f"{path}: a codec config must be an object with a 'name' string, not {config!r}")
    if layout not in ("packed", "records"):
        raise CommandError(f"{path}: layout must be 'packed' or 'records', not {layout!r}")


def checkpoint_codec(metadata: dict[str, Any], modality: str | None = None) -> bytecodecs.ByteCodec | None:
    """The codec a checkpoint was trained with, or None when it recorded none (raw bytes).

    A checkpoint trained on several modalities records one codec per modality (``"codecs"``);
    ``modality`` picks one, and its tag makes the model produce that modality."""
    several = metadata.get("codecs")
    if several:
        if modality not in several:
            raise CommandError(f"this checkpoint was trained on several modalities: pass --modality "
                               f"{' or '.join(sorted(several))}")
        return _codec_from_config(several[modality])
    if modality is not None:
        raise CommandError("--modality is for checkpoints trained on several modalities; this one has one codec")
    config = metadata.get("codec")
    return _codec_from_config(config) if config else None


def _codec_from_config(config: dict[str, Any]) -> bytecodecs.ByteCodec:
    try:
        return bytecodecs.codec_from_config(config)
    except (bytecodecs.CodecError, TypeError, AttributeError, KeyError) as error:  # e.g. an option of a wrong type
        raise CommandError(f"metadata.json: codec config {config!r} cannot be rebuilt ({error})") from None


def checkpoint_layout(metadata: dict[str, Any], codec: bytecodecs.ByteCodec | None) -> str:
    if "layout" in metadata:
        return metadata["layout"]
    return LAYOUT_BY_MODALITY.get(codec.modality if codec else "", "packed")


def load_model(folder: Path, device: str):
    """The model of a folder from ``open_checkpoint`` (which verified its checksums), in eval mode."""
    from bytemodels.model import Megabyte
    from bytemodels.pretrained import load_pretrained

    # As from_pretrained: checks the device (auto included) and the config against the weights first.
    return load_pretrained(Megabyte, folder, map_location=device, verify=False)


# -- sample ----------------------------------------------------------------------------------------
def prompt_ids(codec, layout: str, patch_size: int, data: bytes, num_tags: int) -> list[int]:
    """The ids a generation starts from: the framing a training document begins with, then ``data``."""
    from bytemodels import tokens
    from bytemodels.data import record_prompt

    tag = codec.tag if codec is not None else None
    if layout == "records":
        return record_prompt(patch_size, tag, num_tags) + list(data)
    header = [tokens.BOS_ID] + ([tokens.tag_id(tag, num_tags)] if tag is not None else [])
    return header + list(data)


def command_sample(args: argparse.Namespace) -> int:
    import torch

    folder, metadata, _ = open_checkpoint(args.checkpoint)
    codec = checkpoint_codec(metadata, args.modality)
    layout = checkpoint_layout(metadata, codec)
    if args.prompt is not None and args.prompt_file is not None:
        raise CommandError("give --prompt or --prompt-file, not both")
    if args.prompt_file is not None:
        data = codec.encode_file(args.prompt_file) if codec else _read_bytes(args.prompt_file)
    elif args.prompt is not None:
        if codec is not None and codec.modality != "text":
            raise CommandError(f"--prompt is text, and this checkpoint's codec is {codec.name!r} ({codec.modality}): "
                               f"continue a file with --prompt-file")
        data = codec.encode(args.prompt) if codec is not None else args.prompt.encode()
    else:
        data = b""
    record_size = codec.framing.record_size if codec is not None else None
    if args.max_bytes is not None:
        max_bytes = args.max_bytes
    elif record_size:
        if len(data) > record_size:
            raise CommandError(f"the prompt has {len(data):,} bytes, more than one whole {codec.name!r} record "
                               f"({record_size:,}): nothing is left to generate (--max-bytes sets a count)")
        max_bytes = record_size - len(data)
    else:
        max_bytes = 1000
    is_text = codec is None or codec.modality == "text"
    if not is_text and max_bytes > MEDIA_MAX_BYTES:
        raise CommandError(f"--max-bytes {max_bytes:,} is more than {MEDIA_MAX_BYTES:,}: a {codec.name!r} file is "
                           f"written whole at the end, so its bytes are held in memory until then")
    model = load_model(folder, args.device)
    config = model.config
    ids = torch.tensor([prompt_ids(codec, layout, config.patch_size, data, config.num_tags)],
                       device=next(model.parameters()).device)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                   compile=args.compile)
    output = Path(args.output) if args.output else Path("sample" + (codec.extension if codec else ".bin"))
    pieces = model.generate_stream(ids, max_bytes, **options)
    if is_text:
        count, output = _stream_sample(data, pieces, output, codec, show=not args.quiet, total=max_bytes)
    else:
        generated = bytearray()
        with _byte_progress(max_bytes) as bar:
            for piece in pieces:
                generated += piece
                bar.update(len(piece))
        count, output = len(generated), codec.write_bytes(data + bytes(generated), output)
    print(f"wrote {count} generated bytes to {output}", file=sys.stderr)
    return 0


#: The most bytes ``sample`` generates for a codec that writes its file whole (audio, images): they are held in
#: memory until the end. 64 MiB is over half an hour of 16 kHz 16-bit audio.
MEDIA_MAX_BYTES = 1 << 26


def _byte_progress(total: int):
    """A progress bar over generated bytes on stderr, shown once generating takes more than two seconds."""
    from tqdm import tqdm

    return tqdm(total=total, desc="generating", unit="B", unit_scale=True, unit_divisor=1024, delay=2, leave=False)


def _stream_sample(data: bytes, pieces, output: Path, codec, show: bool, total: int) -> tuple[int, Path]:
    """Write the prompt and each generated piece to ``output`` as it comes (raw bytes, or text as the text
    codec writes it: UTF-8 with U+FFFD for what is not), and to the terminal when ``show``; (bytes, path)."""
    if codec is not None and not output.suffix:
        output = output.with_name(output.name + codec.extension)
    # Text is re-encoded as codec.write_bytes does; a cut mid-character waits for the rest of it.
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    terminal = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        file = open(output, "wb", buffering=0)  # unbuffered: what is generated is on disk, however long the run
    except OSError as error:
        raise CommandError(f"{output}: cannot write ({error.strerror or error})") from None
    count = 0
    with file, (contextlib.nullcontext() if show else _byte_progress(total)) as bar:
        for index, piece in enumerate(itertools.chain([data], pieces)):
            file.write(text.decode(piece).encode() if codec is not None else piece)
            if show:
                sys.stdout.write(terminal.decode(piece))
                sys.stdout.flush()
            if index:
                count += len(piece)
                if bar is not None:
                    bar.update(len(piece))
        if codec is not None:
            file.write(text.decode(b"", final=True).encode())
    if show:
        sys.stdout.write(terminal.decode(b"", final=True) + "\n")
    return count, output


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CommandError(f"{path}: cannot read ({error.strerror or error})") from None


# -- eval ------------------------------------------------------------------------------------------
def collect_files(paths: Sequence[str], codec) -> list[Path]:
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += bytecodecs.list_files(path, codec.extensions if codec else ())
        elif path.is_file():
            files.append(path)
        else:
            raise CommandError(f"{name}: no such file or folder")
    if not files:
        raise CommandError(f"no files to evaluate under {', '.join(paths)}")
    return files


def bits_per_byte(model, document, tag: int | None, layout: str, batch_size: int,
                  progress: str | None = None) -> tuple[float, int]:
    """(total bits, data bytes) for one document framed as in training; only byte targets count.

    ``document`` is bytes or a uint8 array (a ``np.memmap`` of a raw file is never read into memory whole): it
    goes to an on-disk cache, and its windows are scored ``batch_size`` at a time, so memory is bounded by the
    batch. ``progress``: a label for a progress bar over the windows' bytes (shown after two seconds)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from bytemodels import tokens
    from bytemodels.data import ByteDataset

    config = model.config
    device = next(model.parameters()).device
    total_nats = 0.0
    with tempfile.TemporaryDirectory() as folder:
        dataset = ByteDataset.build([(document, tag)], folder, key={"eval": len(document)}, layout=layout,
                                    progress=False)
        windows = dataset.windows(config.max_seq_len, config.patch_size, config.num_tags)
        with tqdm(total=len(windows) * config.max_seq_len, desc=progress, unit="B", unit_scale=True,
                  unit_divisor=1024, delay=2, leave=False, disable=progress is None) as bar:
            for first in range(0, len(windows), batch_size):
                indices = range(first, min(first + batch_size, len(windows)))
                batch = torch.from_numpy(np.stack([windows.window(i) for i in indices])).to(device)
                with torch.no_grad():
                    logits = model(batch).logits.float()
                targets = batch.masked_fill(batch >= tokens.NUM_BYTES, tokens.PAD_ID)
                total_nats += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                              ignore_index=tokens.PAD_ID, reduction="sum").item()
                bar.update(batch.numel())
        del windows, dataset  # close the cache's memory maps before its folder goes
    return total_nats / math.log(2), len(document)


def _raw_document(path: Path):
    """A raw file's bytes as a read-only memory map (empty bytes for an empty file, which cannot be mapped)."""
    import numpy as np

    return np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else b""


def _encoded_document(codec, path: Path, folder: Path):
    """The bytes ``codec`` makes of the file at ``path``, written a piece at a time to a file in ``folder`` and
    mapped from there: a large text file is never held in memory whole."""
    encoded = folder / "encoded.bin"
    with open(encoded, "wb") as out:
        for piece in codec.encode_file_chunks(path):
            out.write(piece)
    return _raw_document(encoded)


def command_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    folder, metadata, _ = open_checkpoint(args.checkpoint)
    codec = checkpoint_codec(metadata, args.modality)
    layout = checkpoint_layout(metadata, codec)
    model = load_model(folder, args.device)
    rows, skipped = [], []
    for path in tqdm(collect_files(args.files, codec), desc="evaluating", unit="file", delay=2,
                     disable=args.json):
        with tempfile.TemporaryDirectory() as scratch:
            try:
                document = _encoded_document(codec, path, Path(scratch)) if codec else _raw_document(path)
            except (bytecodecs.CodecError, OSError) as error:
                skipped.append(str(error))
                continue
            if not len(document):
                skipped.append(f"{path}: no bytes after encoding")
                continue
            bits, size = bits_per_byte(model, document, codec.tag if codec else None, layout, args.batch_size,
                                       progress=path.name)
            del document  # unmap before the scratch folder goes
        if not math.isfinite(bits):  # damaged or diverged weights: a number here would be a wrong result
            raise CommandError(f"{path}: the model's loss is {bits} (not finite): the weights in {folder} "
                               f"are damaged or diverged; no result")
        rows.append({"file": str(path), "bytes": size, "bits_per_byte": bits / size})
    if not rows:
        raise CommandError(f"no file could be evaluated ({len(skipped)} skipped: {skipped[0] if skipped else ''})")
    total_bytes = sum(row["bytes"] for row in rows)
    total_bpb = sum(row["bits_per_byte"] * row["bytes"] for row in rows) / total_bytes
    result = {"checkpoint": str(folder), "codec": codec.config() if codec else None, "files": rows,
              "total": {"files": len(rows), "bytes": total_bytes, "bits_per_byte": total_bpb},
              "skipped": skipped}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    width = max(len("file"), *(len(row["file"]) for row in rows))
    print(f"{'file':<{width}}  {'bytes':>10}  {'bits/byte':>9}")
    for row in rows:
        print(f"{row['file']:<{width}}  {row['bytes']:>10,}  {row['bits_per_byte']:>9.4f}")
    print(f"{'total (' + str(len(rows)) + ' files)':<{width}}  {total_bytes:>10,}  {total_bpb:>9.4f}")
    if skipped:
        print(f"skipped {len(skipped)} unusable files (first: {skipped[0]})", file=sys.stderr)
    return 0


# -- encode / decode -------------------------------------------------------------------------------
#: Command-line spellings of JSON's true, false and null (any case), as Python and shells write them.
WORD_VALUES = {"true": True, "false": False, "none": None, "null": None}


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse as JSON (numbers, lists), true/false/none in any
    case are booleans and None, anything else a string (the codec checks the type)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"codec option {pair!r} must look like key=value")
        key, word = key.replace("-", "_"), value.strip().lower()
        if word in WORD_VALUES:
            options[key] = WORD_VALUES[word]
            continue
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def command_encode(args: argparse.Namespace) -> int:
    codec = bytecodecs.get_codec(args.codec, **parse_options(args.option))
    data = codec.encode_file(args.input)
    Path(args.output).write_bytes(data)
    print(f"{args.input} -> {args.output}: {len(data):,} bytes ({json.dumps(codec.config())})")
    return 0


def command_decode(args: argparse.Namespace) -> int:
    codec = bytecodecs.get_codec(args.codec, **parse_options(args.option))
    written = codec.write_bytes(_read_bytes(args.input), args.output)
    print(f"{args.input} -> {written}")
    return 0


# -- info / codecs ---------------------------------------------------------------------------------
def command_info(args: argparse.Namespace) -> int:
    from bytemodels.model import Megabyte
    from bytemodels.pretrained import CONFIG_FILE, WEIGHTS_FILE, check_weights, read_config

    folder, metadata, state = open_checkpoint(args.checkpoint)
    # The parameters are counted from the weights' header, once it matches the config: nothing is allocated.
    config = read_config(folder / CONFIG_FILE)
    shapes = check_weights(Megabyte, config, folder / CONFIG_FILE, folder / WEIGHTS_FILE)
    params = sum(math.prod(shape) for shape in shapes.values())
    info = {"checkpoint": str(folder), "parameters": params, "config": config.to_dict(),
            "codec": metadata.get("codec") or metadata.get("codecs"), "step": state.get("step"), "bytes_seen": state.get("bytes_seen"),
            "best_val_bpb": state.get("best_val_bpb"), "last_val_bpb": state.get("last_val_bpb")}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"checkpoint     {folder}")
    print(f"parameters     {params:,}")
    stages = " → ".join(f"{d}×{n} ({h} heads)" for d, n, h in zip(config.dims, config.layers, config.heads))
    print(f"model          patch sizes {config.patch_sizes}, stages {stages}, max_seq_len {config.max_seq_len}")
    print(f"codec          {json.dumps(info['codec']) if info['codec'] else 'none recorded (raw bytes)'}")
    for label, key in (("step", "step"), ("bytes seen", "bytes_seen"), ("best val bpb", "best_val_bpb"),
                       ("last val bpb", "last_val_bpb")):
        value = info[key]
        shown = ("—" if value is None else f"{value:,}" if isinstance(value, int) and not isinstance(value, bool)
                 else f"{value:.4f}" if isinstance(value, float) else str(value))
        print(f"{label:<15}{shown}")
    return 0


def command_codecs(args: argparse.Namespace) -> int:
    for name in bytecodecs.available_codecs():
        cls = bytecodecs.codec_class(name)
        print(f"{name:<10} modality={cls.modality or '-':<8} tag={cls.tag!s:<5} {cls.__module__}.{cls.__qualname__}")
    return 0


# -- parser ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bytemodels",
        description="Sample, evaluate and inspect bytemodels checkpoints; encode and decode files with codecs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sample = commands.add_parser("sample", help="generate from a checkpoint, written in the codec's format")
    sample.add_argument("checkpoint", help="checkpoint folder, run folder or model folder")
    sample.add_argument("--prompt", help="text to continue (text codecs)")
    sample.add_argument("--prompt-file", help="a file to continue, read through the checkpoint's codec")
    sample.add_argument("--max-bytes", type=number(int, at_least=0),
                        help="bytes to generate (default: the codec's record size, or 1000)")
    sample.add_argument("--temperature", type=NON_NEGATIVE, default=0.8, help="0 is greedy (default 0.8)")
    sample.add_argument("--top-k", type=COUNT, help="sample among the k most likely bytes")
    sample.add_argument("--top-p", type=number(float, above=0, at_most=1), help="nucleus sampling mass")
    sample.add_argument("--seed", type=seed_flag, help="random seed for a reproducible sample")
    sample.add_argument("-o", "--output", help="output file (default: sample.<codec extension> here)")
    sample.add_argument("--device", default="auto", help="cuda, mps, cpu or auto")
    sample.add_argument("--quiet", action="store_true", help="do not stream text to the terminal")
    sample.add_argument("--compile", action="store_true",
                        help="compile the decoding steps first (tens of seconds; then faster per byte, "
                             "worth it for long outputs such as audio)")
    sample.add_argument("--modality", help="for a checkpoint trained on several modalities: which one to produce")
    sample.set_defaults(run=command_sample)

    evaluate = commands.add_parser("eval", help="bits per byte of files under a checkpoint's model")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("files", nargs="+", metavar="FILES_OR_DIR")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--batch-size", type=COUNT, default=8)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--modality", help="for a checkpoint trained on several modalities: the files' modality")
    evaluate.set_defaults(run=command_eval)

    for name, run, helptext in (("encode", command_encode, "a file to the exact bytes the model sees"),
                                ("decode", command_decode, "model bytes back to a file")):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("--codec", required=True, help="codec name (see `bytemodels codecs`)")
        sub.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                         help="codec option, e.g. -O sample_rate=8000 -O sample_format=pcm16")
        sub.add_argument("input", metavar="IN")
        sub.add_argument("output", metavar="OUT")
        sub.set_defaults(run=run)

    info = commands.add_parser("info", help="configuration, size, codec and progress of a checkpoint")
    info.add_argument("checkpoint")
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=command_info)

    codecs_command = commands.add_parser("codecs", help="the registered codecs, third-party ones included")
    codecs_command.set_defaults(run=command_codecs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bytemodels`` console script; user errors are one line and exit status 2."""
    args = one_line_errors(build_parser()).parse_args(argv)
    from bytemodels.checkpoint import CheckpointError
    from bytemodels.pretrained import ModelFileError

    try:
        return args.run(args)
    except (CommandError, bytecodecs.CodecError, CheckpointError, ModelFileError) as error:
        print(f"bytemodels: error: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:
        print(f"bytemodels: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bytemodels: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
