"""The ``bytemodels`` command: train, sample, chat, evaluate, inspect and share checkpoints; encode and decode with
codecs; compress.

A face over the core, not a library: what recipes and benchmarks also need lives in the core (``open_checkpoint``
and ``load_model`` in ``bytemodels.checkpoint``, ``prompt_ids`` in ``bytemodels.data``). This is the one module of
``bytemodels/`` that imports the codecs and the recipes: a checkpoint records its codec's configuration as opaque
JSON, and only here does it become a codec again (``checkpoint_codec``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import bytecodecs
from bytemodels.app import CommandError
from bytemodels.app.flags import COUNT, NON_NEGATIVE, number, one_line_errors, seed as seed_flag
from bytemodels.checkpoint import load_model, open_checkpoint
from bytemodels.data import prompt_ids
from bytemodels.documents import bits_per_byte, checkpoint_layout, raw_document, raw_records, separated_documents
from bytemodels.file_compression import codec_restore, compress_with_checkpoint
from bytemodels.streaming import byte_progress, stream_sample, with_extension


# -- the codec a checkpoint recorded ---------------------------------------------------------------
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


# -- sample ----------------------------------------------------------------------------------------
def command_sample(args: argparse.Namespace) -> int:
    import torch

    folder, metadata, _ = open_checkpoint(args.checkpoint, args.revision)
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
    output = output_path(Path(args.output) if args.output else Path("sample" + (codec.extension if codec else ".bin")),
                         codec, force=args.force)
    stop = stop_strings(args.stop)
    if not is_text and max_bytes > MEDIA_MAX_BYTES:
        raise CommandError(f"--max-bytes {max_bytes:,} is more than {MEDIA_MAX_BYTES:,}: a {codec.name!r} file is "
                           f"written whole at the end, so its bytes are held in memory until then")
    model = load_model(folder, args.device)
    config = model.config
    tag = codec.tag if codec is not None else None
    ids = torch.tensor([prompt_ids(tag, layout, config.patch_size, data, config.num_tags)],
                       device=next(model.parameters()).device)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                   compile=args.compile)
    pieces = model.generate_stream(ids, max_bytes, stop=stop, **options)
    if is_text:
        count, output = stream_sample(data, pieces, output, codec, show=not args.quiet, total=max_bytes)
    else:
        generated = bytearray()
        with byte_progress(max_bytes) as bar:
            for piece in pieces:
                generated += piece
                bar.update(len(piece))
        count, output = len(generated), codec.write_bytes(data + bytes(generated), output)
    print(f"wrote {count} generated bytes to {output}", file=sys.stderr)
    return 0


#: The most bytes ``sample`` generates for a codec that writes its file whole (audio, images): they are held in
#: memory until the end. 64 MiB is over half an hour of 16 kHz 16-bit audio.
MEDIA_MAX_BYTES = 1 << 26


def output_path(output: Path, codec: Any, force: bool) -> Path:
    """The file ``sample`` writes (the codec's extension added when ``output`` has none); an existing one is a
    ``CommandError`` unless ``force``: a sample never silently replaces a file."""
    output = with_extension(output, codec)
    if output.is_dir():
        raise CommandError(f"{output} is a folder: pass -o a file name")
    if output.exists() and not force:
        raise CommandError(f"{output} exists: pass --force to overwrite it, or -o another file")
    return output


def stop_strings(stops: Sequence[str] | None) -> list[bytes] | None:
    """``--stop`` values as UTF-8 bytes; ``\\n`` and ``\\t`` typed in a shell are a newline and a tab."""
    if not stops:
        return None
    if any(not stop for stop in stops):
        raise CommandError("--stop needs a non-empty string")
    return [stop.replace("\\n", "\n").replace("\\t", "\t").encode() for stop in stops]


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CommandError(f"{path}: cannot read ({error.strerror or error})") from None


# -- chat ------------------------------------------------------------------------------------------
def chat_prompt_format(metadata: dict[str, Any]):
    """The function that turns a typed line into the text a generation starts from: the recipe's own
    ``chat_prompt(line, metadata)`` when the checkpoint names a recipe that has one (TinyStories-Instruct's
    ``Story:`` format), else the line as typed."""
    import importlib

    recipe = metadata.get("recipe")
    if recipe in RECIPES:
        module = importlib.import_module(f"recipes.{recipe}")
        if hasattr(module, "chat_prompt"):
            return lambda line: module.chat_prompt(line, metadata)
    return lambda line: line


def command_chat(args: argparse.Namespace) -> int:
    """Read prompts from stdin a line at a time; stream each continuation to stdout, then a newline."""
    import torch

    folder, metadata, _ = open_checkpoint(args.checkpoint, args.revision)
    several = metadata.get("codecs")
    if several and "text" not in several:
        raise CommandError(f"{args.checkpoint}: chat is for text models, and this checkpoint was trained on "
                           f"{', '.join(sorted(several))}: use `bytemodels sample --modality`")
    codec = checkpoint_codec(metadata, "text" if several else None)
    if codec is not None and codec.modality != "text":
        raise CommandError(f"{args.checkpoint}: chat is for text models, and this checkpoint's codec is "
                           f"{codec.name!r} ({codec.modality}): use `bytemodels sample`")
    layout = checkpoint_layout(metadata, codec)
    stop = stop_strings(args.stop)
    model = load_model(folder, args.device)
    config, device = model.config, next(model.parameters()).device
    tag = codec.tag if codec is not None else None
    prompt_format = chat_prompt_format(metadata)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chat with {folder} (a line is a prompt; Ctrl-D ends)", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        text = prompt_format(line)
        data = codec.encode(text) if codec is not None else text.encode()
        ids = torch.tensor([prompt_ids(tag, layout, config.patch_size, data, config.num_tags)], device=device)
        pieces = model.generate_stream(ids, args.max_bytes, temperature=args.temperature, top_k=args.top_k,
                                       top_p=args.top_p, seed=args.seed, stop=stop)
        stream_sample(b"", pieces, None, codec, show=True, total=args.max_bytes)
        sys.stdout.flush()
    return 0


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


def _encoded_document(codec, path: Path, folder: Path):
    """The bytes ``codec`` makes of the file at ``path``, written a piece at a time to a file in ``folder`` and
    mapped from there: a large text file is never held in memory whole."""
    encoded = folder / "encoded.bin"
    with open(encoded, "wb") as out:
        for piece in codec.encode_file_chunks(path):
            out.write(piece)
    return raw_document(encoded)


def command_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    folder, metadata, _ = open_checkpoint(args.checkpoint, args.revision)
    codec = checkpoint_codec(metadata, args.modality)
    layout = checkpoint_layout(metadata, codec)
    model = load_model(folder, args.device)
    separator = metadata.get("separator") if args.separator is None else args.separator
    rows, skipped = [], []
    for path in tqdm(collect_files(args.files, None if args.raw else codec), desc="evaluating", unit="file", delay=2,
                     disable=args.json):
        with tempfile.TemporaryDirectory() as scratch:
            try:
                if args.raw:
                    document = raw_records(raw_document(path), layout, codec)
                elif is_image_array(path, codec):
                    document = list(array_records(codec, _load_array(path, args.array_key)))
                elif codec is not None and layout == "packed" and separator:
                    document = separated_documents(codec, path, separator)
                else:
                    document = _encoded_document(codec, path, Path(scratch)) if codec else raw_document(path)
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


#: Written beside an encoded file as ``OUT.json``: which codec made the bytes, so ``decode`` needs no flags. A sidecar
#: rather than a header keeps ``OUT`` exactly the bytes the model sees, readable as they are by ``eval`` and other tools.
SIDECAR_FORMAT = "bytemodels-encoded"


def sidecar_path(path: str | Path) -> Path:
    """``OUT.json``, the metadata file beside the encoded file ``OUT``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def is_image_array(path: Path, codec: Any) -> bool:
    """Whether ``path`` is a ``.npz``/``.npy`` array of images (the images recipe's data) for the image ``codec``."""
    from bytecodecs.image import ARRAY_SUFFIXES

    return codec is not None and codec.modality == "image" and path.suffix.lower() in ARRAY_SUFFIXES


def array_records(codec: Any, array: Any) -> Iterable[bytes]:
    """The codec bytes of each image of ``array``, one record per image, as the images recipe trains on them."""
    return (codec.encode_array(array[index]) for index in range(len(array)))


def _load_array(path: Path, key: str | None):
    from bytecodecs.image import load_array

    return load_array(path, key)


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, with the usual permissions of a new file."""
    from bytecodecs.files import atomic_path

    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def command_encode(args: argparse.Namespace) -> int:
    options = parse_options(args.option)
    source = Path(args.input)
    codec = bytecodecs.get_codec(args.codec, **options)
    records = 1
    if is_image_array(source, codec):
        from bytecodecs.image import array_codec_options

        array = _load_array(source, args.array_key)
        # the array's own size and mode unless -O says otherwise, as the images recipe does
        codec = bytecodecs.get_codec(args.codec, **{**array_codec_options(array), **options})
        data, records = b"".join(array_records(codec, array)), len(array)
    elif args.array_key is not None:
        raise CommandError(f"--array-key is for .npz image arrays; {source} is not one (or --codec is not image)")
    else:
        data = codec.encode_file(source)
    output = Path(args.output)
    metadata = {"format": SIDECAR_FORMAT, "codec": codec.config(), "records": records, "bytes": len(data),
                "source": source.name}
    _write_file(output, data)
    _write_file(sidecar_path(output), (json.dumps(metadata, indent=2) + "\n").encode())
    count = f", {records:,} records" if records > 1 else ""
    print(f"{args.input} -> {args.output}: {len(data):,} bytes{count} ({json.dumps(codec.config())}; "
          f"{sidecar_path(output).name} records it for decode)")
    return 0


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The metadata ``encode`` wrote beside ``path``, or None when there is none."""
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        return None
    try:
        metadata = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CommandError(f"{sidecar}: not readable encode metadata ({error}); move it away to decode with "
                           "--codec") from None
    if not isinstance(metadata, dict) or metadata.get("format") != SIDECAR_FORMAT \
            or not isinstance(metadata.get("codec"), dict):
        raise CommandError(f"{sidecar}: not metadata written by `bytemodels encode`; move it away to decode with "
                           "--codec")
    return metadata


def decode_codec(args: argparse.Namespace) -> Any:
    """The codec ``decode`` uses: the one ``IN.json`` records. ``--codec``/``-O`` given beside it must agree with
    it (a difference is refused, naming both: decoding with other options gives garbage); ``--ignore-metadata``
    decodes with the flags alone."""
    options = parse_options(args.option)
    metadata = None if args.ignore_metadata else read_sidecar(Path(args.input))
    if metadata is None:
        if args.codec is None:
            raise CommandError(f"{args.input}: no {sidecar_path(args.input).name} beside it says which codec made "
                               "these bytes; pass --codec NAME and the -O options used to encode them")
        return bytecodecs.get_codec(args.codec, **options)
    recorded = metadata["codec"]
    sidecar = sidecar_path(args.input).name
    if args.codec is not None and args.codec != recorded.get("name"):
        raise CommandError(f"--codec {args.codec} differs from {recorded.get('name')!r} recorded in {sidecar}; drop "
                           "the flag, or pass --ignore-metadata to decode with the flags alone")
    codec = bytecodecs.codec_from_config(recorded)
    given = bytecodecs.get_codec(codec.name, **{**codec.options(), **options}).config()
    differing = [f"{key}={options[key]!r} (recorded: {recorded.get(key)!r})" for key in options
                 if given.get(key) != codec.config().get(key)]
    if differing:
        raise CommandError(f"-O {', '.join(differing)} differs from {sidecar}; drop the option, or pass "
                           "--ignore-metadata to decode with the flags alone")
    return codec


def command_decode(args: argparse.Namespace) -> int:
    codec = decode_codec(args)
    data = _read_bytes(args.input)
    record_size = codec.framing.record_size
    if not record_size or len(data) <= record_size:
        print(f"{args.input} -> {codec.write_bytes(data, args.output)}")
        return 0
    # several fixed-size records (the images of an array): one file each, numbered
    output = with_extension(Path(args.output), codec)
    count = -(-len(data) // record_size)
    width = len(str(count - 1))
    for index in range(count):
        path = output.with_name(f"{output.stem}-{index:0{width}d}{output.suffix}")
        codec.write_bytes(data[index * record_size:(index + 1) * record_size], path)
    print(f"{args.input} -> {count:,} files {output.stem}-{0:0{width}d}{output.suffix} .. "
          f"{output.stem}-{count - 1}{output.suffix} in {output.parent}")
    return 0


# -- info / codecs ---------------------------------------------------------------------------------
def command_info(args: argparse.Namespace) -> int:
    from bytemodels.model import Megabyte
    from bytemodels.pretrained import CONFIG_FILE, WEIGHTS_FILE, check_weights, read_config

    folder, metadata, state = open_checkpoint(args.checkpoint, args.revision)
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


def command_push(args: argparse.Namespace) -> int:
    from bytemodels.hub_models import push_run

    url = push_run(args.run_folder, args.repo_id, private=args.private, revision=args.revision, token=args.token)
    print(f"pushed {args.run_folder} to {args.repo_id}: {url}")
    return 0


#: The recipes ``bytemodels train`` runs: modules of the ``recipes`` package installed with bytemodels.
RECIPES = ("tinystories", "audio", "images", "mixed")


def command_train(args: argparse.Namespace) -> int:
    """``bytemodels train NAME [flags]``: the recipe's own command line, from any folder."""
    import importlib

    from bytemodels.app import recipe as recipe_layer

    module = importlib.import_module(f"recipes.{args.recipe}")
    recipe_layer.PROG_FORMAT = "bytemodels train {name}"
    try:
        module.main(args.recipe_args)
    finally:
        recipe_layer.PROG_FORMAT = recipe_layer.MODULE_PROG_FORMAT
    return 0


def command_codecs(args: argparse.Namespace) -> int:
    for name in bytecodecs.available_codecs():
        cls = bytecodecs.codec_class(name)
        print(f"{name:<10} modality={cls.modality or '-':<8} tag={cls.tag!s:<5} {cls.__module__}.{cls.__qualname__}")
    return 0


# -- compress / decompress ---------------------------------------------------------------------------
BMZ_SUFFIX = ".bmz"


def _compression_output(args: argparse.Namespace, default: Path) -> Path | None:
    """Where compress or decompress writes: None for -c (stdout); an existing file only with --force."""
    if args.stdout:
        if args.output is not None:
            raise CommandError("give -c (write to stdout) or -o OUT, not both")
        return None
    output = Path(args.output) if args.output is not None else default
    if output.exists() and not args.force:
        raise CommandError(f"{output}: already exists; pass --force to overwrite it")
    if output.resolve() == Path(args.input).resolve():
        raise CommandError(f"{output}: is the input too; give another -o")
    return output


def command_compress(args: argparse.Namespace) -> int:
    from bytemodels.compress import new_file

    source = Path(args.input)
    if not source.is_file():
        raise CommandError(f"{source}: no such file")
    if source.suffix == BMZ_SUFFIX and not args.force:
        raise CommandError(f"{source}: already has the {BMZ_SUFFIX} suffix; pass --force to compress it again")
    output = _compression_output(args, source.with_name(source.name + BMZ_SUFFIX))
    folder, metadata, _ = open_checkpoint(args.model)
    codec = checkpoint_codec(metadata)
    model = load_model(folder, args.device)
    options = dict(batch_size=args.batch_size, raw=args.raw, progress=not args.quiet, separator=args.separator)
    if output is None:
        compress_with_checkpoint(model, metadata, codec, source, sys.stdout.buffer, **options)
        sys.stdout.buffer.flush()
        return 0
    with new_file(output) as out:
        bits, coded, codec_name = compress_with_checkpoint(model, metadata, codec, source, out, **options)
    length, size = source.stat().st_size, output.stat().st_size
    through = f"through the {codec_name} codec" if codec_name else "as raw bytes"
    rates = (f"; {8 * size / length:.3f} bits per byte, the model's probabilities {bits / coded:.3f} bits per "
             f"coded byte" if length and coded else "")
    print(f"{source} -> {output}: {length:,} -> {size:,} bytes, {through}{rates}")
    return 0


def command_decompress(args: argparse.Namespace) -> int:
    from bytemodels.compress import decompress_file

    source = Path(args.input)
    if not source.is_file():
        raise CommandError(f"{source}: no such file")
    if args.output is None and not args.stdout and source.suffix != BMZ_SUFFIX:
        raise CommandError(f"{source}: has no {BMZ_SUFFIX} suffix to remove; give -o OUT or -c")
    output = _compression_output(args, source.with_suffix(""))
    folder, metadata, _ = open_checkpoint(args.model)
    model = load_model(folder, args.device)
    restore = codec_restore(checkpoint_codec(metadata))
    if output is None:
        decompress_file(model, source, None, progress=not args.quiet, write_to=sys.stdout.buffer, restore=restore)
        sys.stdout.buffer.flush()
        return 0
    decompress_file(model, source, output, progress=not args.quiet, restore=restore)
    print(f"{source} -> {output}: {output.stat().st_size:,} bytes")
    return 0


def add_compression_commands(commands) -> None:
    """The ``compress`` and ``decompress`` subcommands (gzip's habits: the input is kept, -c, --force)."""
    from bytemodels.binary import MAX_BATCH_SIZE
    from bytemodels.compress import DEFAULT_BATCH_SIZE

    for name, run, helptext in (("compress", command_compress, "losslessly compress a file with a model "
                                                               "(FILE.bmz)"),
                                ("decompress", command_decompress, "restore a .bmz file with the model that made "
                                                                   "it")):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("input", metavar="FILE")
        sub.add_argument("--model", required=True, metavar="CKPT",
                         help="checkpoint folder, run folder, model folder or hub model id (the same for both)")
        sub.add_argument("-o", "--output", metavar="OUT",
                         help="output file (default: FILE.bmz; for decompress FILE without .bmz)")
        sub.add_argument("-c", "--stdout", action="store_true", help="write to standard output")
        sub.add_argument("-f", "--force", action="store_true", help="overwrite the output file when it exists")
        sub.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        sub.add_argument("--device", default="cpu",
                         help="cpu (default) or cuda: decompress on the device (and torch) that compressed")
        if name == "compress":
            sub.add_argument("--batch-size", type=number(int, at_least=1, at_most=MAX_BATCH_SIZE),
                             default=DEFAULT_BATCH_SIZE, help=f"windows coded at once, one block of the file "
                             f"(default {DEFAULT_BATCH_SIZE}; more is faster, up to the cores' limit)")
            sub.add_argument("--raw", action="store_true",
                             help="code the file's bytes even when the model's codec could restore it exactly")
            sub.add_argument("--separator", metavar="TEXT",
                             help="text between the documents of a text file, each then coded as a training "
                                  "document (default: the one the checkpoint recorded, e.g. <|endoftext|>; '' for "
                                  "none)")
        sub.set_defaults(run=run)


# -- parser ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from bytemodels import __version__

    parser = argparse.ArgumentParser(
        prog="bytemodels",
        description="Train byte-level models, sample, evaluate, inspect and share checkpoints; encode and decode "
                    "files with codecs.")
    parser.add_argument("--version", action="version", version=f"bytemodels {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train with a recipe: tinystories, audio, images or mixed",
                                add_help=False, description="bytemodels train NAME --help lists a recipe's flags")
    train.add_argument("recipe", choices=RECIPES, help="the recipe")
    train.add_argument("recipe_args", nargs=argparse.REMAINDER, help="the recipe's flags (see --help)")
    train.set_defaults(run=command_train)

    sample = commands.add_parser("sample", help="generate from a checkpoint, written in the codec's format")
    sample.add_argument("checkpoint", help="checkpoint folder, run folder, model folder or hub model id (org/name)")
    sample.add_argument("--revision", help="for a hub model id: the branch, tag or commit (default: main)")
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
    sample.add_argument("--stop", action="append", metavar="TEXT",
                        help="end once the output ends with TEXT (not written; repeatable; \\n is a newline)")
    sample.add_argument("--force", action="store_true", help="overwrite the output file when it exists")
    sample.set_defaults(run=command_sample)

    chat = commands.add_parser("chat", help="type prompts, watch a text model's bytes stream (stdin, one per line)")
    chat.add_argument("checkpoint", help="checkpoint folder, run folder, model folder or hub model id (org/name)")
    chat.add_argument("--revision", help="for a hub model id: the branch, tag or commit (default: main)")
    chat.add_argument("--max-bytes", type=number(int, at_least=1), default=500,
                      help="most bytes generated per prompt (default 500)")
    chat.add_argument("--stop", action="append", metavar="TEXT",
                      help="end a reply once it ends with TEXT (not shown; repeatable; \\n is a newline)")
    chat.add_argument("--temperature", type=NON_NEGATIVE, default=0.8, help="0 is greedy (default 0.8)")
    chat.add_argument("--top-k", type=COUNT, help="sample among the k most likely bytes")
    chat.add_argument("--top-p", type=number(float, above=0, at_most=1), help="nucleus sampling mass")
    chat.add_argument("--seed", type=seed_flag, help="random seed: the same prompt gives the same reply")
    chat.add_argument("--device", default="auto", help="cuda, mps, cpu or auto")
    chat.set_defaults(run=command_chat)

    evaluate = commands.add_parser("eval", help="bits per byte of files under a checkpoint's model")
    evaluate.add_argument("checkpoint", help="checkpoint folder, run folder, model folder or hub model id")
    evaluate.add_argument("--revision", help="for a hub model id: the branch, tag or commit (default: main)")
    evaluate.add_argument("files", nargs="+", metavar="FILES_OR_DIR")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--batch-size", type=COUNT, default=8)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--modality", help="for a checkpoint trained on several modalities: the files' modality")
    evaluate.add_argument("--raw", action="store_true",
                          help="score each file's raw bytes, as `bytemodels compress` codes a file its codec "
                               "cannot restore exactly (default: the bytes the codec makes of it)")
    evaluate.add_argument("--separator", metavar="TEXT",
                          help="text between the documents of text files, scored each as a training document "
                               "(default: the one the checkpoint recorded, e.g. <|endoftext|>; '' for none)")
    evaluate.add_argument("--array-key", metavar="NAME", help="the array of .npz files holding the images (default: "
                          "images, else the first array shaped like images)")
    evaluate.set_defaults(run=command_eval)

    for name, run, helptext in (("encode", command_encode, "a file to the exact bytes the model sees (and "
                                                           "OUT.json saying how)"),
                                ("decode", command_decode, "model bytes back to a file (the codec from IN.json)")):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("--codec", required=name == "encode",
                         help="codec name (see `bytemodels codecs`)" + ("" if name == "encode" else
                              "; default: the one IN.json records"))
        sub.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                         help="codec option, e.g. -O sample_rate=8000 -O sample_format=pcm16")
        sub.add_argument("input", metavar="IN")
        sub.add_argument("output", metavar="OUT")
        if name == "encode":
            sub.add_argument("--array-key", metavar="NAME", help="the array of a .npz file holding the images "
                             "(default: images, else the first array shaped like images)")
        else:
            sub.add_argument("--ignore-metadata", action="store_true",
                             help="decode with --codec and -O alone, not with what IN.json records")
        sub.set_defaults(run=run)

    info = commands.add_parser("info", help="configuration, size, codec and progress of a checkpoint")
    info.add_argument("checkpoint", help="checkpoint folder, run folder, model folder or hub model id")
    info.add_argument("--revision", help="for a hub model id: the branch, tag or commit (default: main)")
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=command_info)

    push = commands.add_parser("push", help="upload a run's best checkpoint, codec and a model card to the hub")
    push.add_argument("run_folder", metavar="RUN", help="run folder or checkpoint folder")
    push.add_argument("repo_id", metavar="ORG/NAME", help="the model repo on the Hugging Face hub (created if needed)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", help="branch to push to (default: main)")
    push.add_argument("--token", help="a hub token (default: the one `hf auth login` saved, or HF_TOKEN)")
    push.set_defaults(run=command_push)

    codecs_command = commands.add_parser("codecs", help="the registered codecs, third-party ones included")
    codecs_command.set_defaults(run=command_codecs)

    add_compression_commands(commands)
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
