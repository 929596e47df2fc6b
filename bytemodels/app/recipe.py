"""What every recipe does around the one ``Trainer``: shared flags, the run folder and ``--resume``, configs
from flags and device defaults (or a checkpoint's, to fine-tune), the byte cache of one codec's documents,
and one-line errors.

A recipe (``recipes/*.py``) picks data, codecs and a preset and reads as a story; the plumbing it would
otherwise repeat lives here. Nothing here knows a modality: codecs are passed in, and only their ``tag``,
``config()`` and configuration classes (for their flags) are used.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bytemodels import checkpoint as ckpt
from bytemodels.app.flags import add_config_arguments, one_line_errors, overrides_from_args
from bytemodels.config import PRESETS, MegabyteConfig
from bytemodels.data import ByteDataset, DataCacheError, EmptyDataError, covered_documents
from bytemodels.distributed import choose_device, environment_rank
from bytemodels.pretrained import ModelFileError
from bytemodels.runfolder import FolderLock, RunFolderError, atomic_write, lock_folder, writing
from bytemodels.tracking import TRACKERS, TrackingError, check_trackers, open_loggers
from bytemodels.train import SampleFn, Trainer, TrainConfig, TrainingDiverged, TrainSummary

DEVICE_KINDS = ("cpu", "gpu")
"""The columns of a recipe's ``DEVICE_DEFAULTS``: what it sets on a CPU and on a CUDA GPU."""
BUDGET_FIELDS = ("max_steps", "max_bytes")
"""Training budgets that, given without ``--time``, replace the recipe's default time budget."""
COMPARISON_FILE = "compression.json"
"""Where a recipe saves its comparison with a classic codec (FLAC, PNG) in the run folder."""
MODULE_PROG_FORMAT = "python -m recipes.{name}"
"""How a recipe is run from a checkout; ``bytemodels train NAME`` sets ``PROG_FORMAT`` to its own spelling."""
PROG_FORMAT = MODULE_PROG_FORMAT
"""The command a recipe's messages name (``--help``, errors, how to continue): see ``recipe_prog``."""


def recipe_prog(name: str, subcommand: str = "") -> str:
    """The command that runs recipe ``name`` as the user typed it: ``python -m recipes.NAME`` or
    ``bytemodels train NAME``, then ``subcommand``."""
    return PROG_FORMAT.format(name=name) + (f" {subcommand}" if subcommand else "")


class RecipeError(Exception):
    """A problem the user can fix (a flag, a file, the network); printed as one line, no traceback."""


class RunInterrupted(Exception):
    """Training stopped on Ctrl-C or SIGTERM after saving a checkpoint: ``run_command`` says how to continue and
    exits with 128 + the signal's number (130 for Ctrl-C), so a script or a scheduler can tell it from a finish."""

    def __init__(self, summary: TrainSummary, out: Path) -> None:
        super().__init__(f"interrupted at step {summary.step:,}")
        self.summary, self.out = summary, out


def stop_if_interrupted(summary: TrainSummary, out: Path) -> None:
    """Raise ``RunInterrupted`` when ``summary`` is of an interrupted run; a recipe calls it before its report of a
    finished run (whose final validation and samples an interrupted run does not have)."""
    if summary.stop_reason == "interrupted":
        raise RunInterrupted(summary, out)


# -- 1. the command line ------------------------------------------------------------------------------------
def add_run_arguments(group: argparse._ArgumentGroup, recipe: str, device_defaults: Mapping[str, Mapping[str, Any]],
                      *, documents: str, recorded: str, notes: Mapping[str, str] | None = None) -> None:
    """``--preset``, ``--time``, ``--out``, ``--resume`` and ``--cache-dir``, the flags of every training recipe.

    ``documents`` names what the recipe reads (``"clips"``) and ``recorded`` what a resumed run keeps
    (``"codec and clips"``); the defaults shown are the recipe's ``DEVICE_DEFAULTS``. ``notes`` add to the
    defaults a flag's help shows, by flag (``{"--out": "runs/tinystories-instruct with --instruct"}``)."""
    notes = notes or {}

    def default(flag: str, text: str) -> str:
        return f"(default: {text}{'; ' + notes[flag] if flag in notes else ''})"

    cpu, gpu = (device_defaults[kind] for kind in DEVICE_KINDS)
    group.add_argument("--preset", choices=list(PRESETS),
                       help="model size " + default("--preset", f"{cpu['preset']} on CPU, {gpu['preset']} on GPU"))
    # TrainConfig.time when given; left out, like the config flags, the recipe's default (or the resumed run's) holds
    group.add_argument("--time", metavar="DURATION", default=argparse.SUPPRESS,
                       help="training time budget, e.g. 90s, 10m, 1.5h "
                       + default("--time", f"{cpu['time']} on CPU, {gpu['time']} on GPU"))
    group.add_argument("--out", metavar="DIR", help="run folder " + default("--out", f"runs/{recipe}"))
    group.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                       help="continue a run: its latest checkpoint in --out, or the given checkpoint or run folder, "
                            f"with the {recorded} it recorded (raise --time or --max-steps)")
    group.add_argument("--cache-dir", metavar="DIR",
                       help=f"where the {documents} are cached as bytes (default: the cache folder beside --out)")
    group.add_argument("--log", action="append", choices=list(TRACKERS), metavar="TRACKER",
                       help="also send the metrics to tensorboard (event files in <out>/tensorboard) or wandb, when "
                            "that package is installed; repeatable (metrics.jsonl is written either way)")


def add_model_and_training_arguments(parser: argparse.ArgumentParser,
                                     device_defaults: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """One flag per field of the model config and of the training config (``--out`` and ``--time`` are the
    recipe's own). With the recipe's ``device_defaults``, each flag's help shows the value the run takes on this
    machine when the flag is not given (its preset's field, or the recipe's default for this kind of device)."""
    model_defaults = train_defaults = None
    kind = ""
    if device_defaults is not None:
        kind = "gpu" if choose_device("auto").type == "cuda" else "cpu"
        chosen = device_defaults[kind]
        model_fields = {**{k: v for k, v in chosen.items() if k in MegabyteConfig.__dataclass_fields__},
                        **chosen.get("model", {})}
        model_defaults = MegabyteConfig.preset(chosen["preset"], **model_fields).to_dict()
        train_defaults = {**TrainConfig().to_dict(), **{k: v for k, v in chosen.items()
                                                        if k in TrainConfig.__dataclass_fields__}}
    here = f"; defaults shown are this machine's ({kind})" if kind else ""
    add_config_arguments(parser, MegabyteConfig, title=f"model (override the preset's fields{here})",
                         defaults=model_defaults)
    add_config_arguments(parser, TrainConfig, title=f"training (override the recipe defaults below{here})",
                         exclude=("out_dir", "time"), defaults=train_defaults)


def defaults_epilog(device_defaults: Mapping[str, Mapping[str, Any]], notes: Sequence[str]) -> str:
    """The end of ``--help``: the recipe's defaults by device kind (or any label: ``"cpu with --instruct"``; a
    nested mapping, such as model fields, is shown inline), then ``notes``, wrapped to 110 columns."""
    lines = ["recipe defaults (a flag given on the command line wins):"]
    for label, values in device_defaults.items():
        shown = {}
        for name, value in values.items():
            shown.update(value if isinstance(value, Mapping) else {name: value})
        lines.append(f"  {label}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    lines += notes
    return "\n".join(textwrap.fill(line, width=110, subsequent_indent="      ") for line in lines)


def recipe_parser(name: str, description: str, epilog: str | None = None,
                  subcommand: str = "") -> tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    """A recipe's parser (``prog`` ``python -m recipes.<name>``, ``epilog`` shown as written) and its ``recipe``
    flag group."""
    parser = argparse.ArgumentParser(prog=recipe_prog(name, subcommand), description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser, parser.add_argument_group("recipe")


def run_command(parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace], None],
                argv: Sequence[str] | None, errors: tuple[type[BaseException], ...] = ()) -> None:
    """Parse ``argv`` and run ``command``; an error the user can fix ends the process with one line, no traceback.

    A flag argparse refuses (an unknown flag or choice, a value that is not a number or out of its ``number``
    bounds) is one line too, exit status 2, without the usage block (dozens of lines for a recipe; ``--help``
    shows it). The errors of ``command`` are ``RecipeError`` (``HubError`` too), the core's checkpoint,
    data-cache, empty-data, model-file and divergence errors, and ``errors`` (a recipe adds its codecs'
    ``CodecError``), and ``RunFolderError`` (the run folder is busy, full or read-only). The run folder that
    ``open_run`` locked is released when ``command`` returns."""
    args = one_line_errors(parser).parse_args(argv)
    is_main = environment_rank()[0] == 0
    if not is_main:  # under torchrun rank 0 alone reports; errors and warnings still show
        sys.stdout = open(os.devnull, "w")
    try:
        command(args)
    except (RecipeError, ckpt.CheckpointError, DataCacheError, EmptyDataError, ModelFileError, TrainingDiverged,
            RunFolderError, *errors) as error:
        sys.exit(f"{parser.prog}: error: {error}")
    except RunInterrupted as stopped:
        summary = stopped.summary
        if is_main:  # the trainer has said where the checkpoint is
            print(f"{parser.prog}: interrupted; continue with: {parser.prog} --out {stopped.out} --resume",
                  file=sys.stderr)
        sys.exit(128 + (summary.stop_signal or signal.SIGINT))
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    finally:
        release_run_folders()
        _trackers.clear()


# -- 2. the run folder, --resume, and the data a run records ------------------------------------------------
_run_folder_locks: list[FolderLock] = []  # taken by open_run, released by run_command when the recipe ends
_trackers: list[str] = []  # --log, checked by open_run, opened by make_trainer, forgotten by run_command at the end


def hold_run_folder(out: Path) -> None:
    """Lock the run folder ``out`` for this process until ``release_run_folders`` (under torchrun rank 0 alone
    takes it); another process training there is a ``RunFolderError`` naming its PID."""
    if environment_rank()[0] == 0:
        _run_folder_locks.append(lock_folder(out))


def release_run_folders() -> None:
    """Release the run folders ``hold_run_folder`` locked (``run_command`` calls it when the recipe ends)."""
    while _run_folder_locks:
        _run_folder_locks.pop().release()


def resolve_device(device: str) -> Any:
    """The ``torch.device`` that ``--device`` names (``auto``: the best one here); a name that is not a device,
    or a device this machine lacks, is a ``RecipeError`` before any data is read or model loaded."""
    try:
        return choose_device(device)
    except ValueError as error:  # it names the device and says why
        raise RecipeError(str(error)) from None


def device_kind(device: str) -> str:
    """``gpu`` when ``--device`` resolves to CUDA, else ``cpu``: which column of the recipe defaults applies.
    The device is checked here (``resolve_device``), early in every training recipe."""
    return "gpu" if resolve_device(device).type == "cuda" else "cpu"


def open_run(args: argparse.Namespace, recipe: str,
             default_out: Path | None = None) -> tuple[Path, Path | None, ckpt.Checkpoint | None]:
    """(run folder, checkpoint to resume or None, that checkpoint read or None) from ``--out`` and ``--resume``.

    The run folder is ``--out``, else ``default_out``, else ``runs/<recipe>``. A new run refuses a folder that
    already holds one. ``--resume`` takes the folder's latest checkpoint (or the checkpoint or run folder it
    names), which must be one of ``recipe``, and goes on in the run folder that checkpoint belongs to.
    Either way the run folder is locked before any data is read (``hold_run_folder``): a second run into it
    fails at once."""
    out = Path(args.out or default_out or Path("runs") / recipe)
    try:  # a tracker whose package is missing stops the run before any data is read
        _trackers[:] = check_trackers(getattr(args, "log", None) or ())
    except TrackingError as error:
        raise RecipeError(str(error)) from None
    if not args.resume:
        hold_run_folder(out)
        if ckpt.latest_checkpoint(out / ckpt.CHECKPOINTS_DIR) is not None:
            raise RecipeError(f"--out {out} already holds a run; pass --resume to continue it or --out NEW_FOLDER")
        return out, None, None
    recorded = ckpt.load_checkpoint(out if args.resume == "auto" else args.resume)
    checkpoint = recorded.path
    if not isinstance(recorded.metadata, dict) or recorded.metadata.get("recipe") != recipe:
        raise RecipeError(f"--resume {checkpoint}: not a checkpoint of recipes.{recipe}")
    if args.out is None and checkpoint.parent.name == ckpt.CHECKPOINTS_DIR:
        out = checkpoint.parent.parent  # continue in the run folder the checkpoint belongs to
    hold_run_folder(out)
    return out, checkpoint, recorded


def check_resume_flags(args: argparse.Namespace, recorded: ckpt.Checkpoint, codec_classes: Sequence[type] = ()) -> None:
    """On ``--resume`` the checkpoint fixes the model and the codecs. The command line the run was started with is
    fine: ``--preset``, model flags and the flags of ``codec_classes`` that equal what the checkpoint recorded are
    accepted; those that differ are refused, each named with the checkpoint's value."""
    metadata = recorded.metadata if isinstance(recorded.metadata, dict) else {}
    differ = []
    if args.preset and args.preset != metadata.get("preset"):
        differ.append(f"--preset {args.preset} (the checkpoint's: {metadata.get('preset') or 'not recorded'})")
    given = [(name, value, recorded.model_config.get(name)) for name, value in
             overrides_from_args(MegabyteConfig, args).items()]
    codecs = metadata.get("codecs") if isinstance(metadata.get("codecs"), dict) else {"": metadata.get("codec")}
    for cls in codec_classes:
        saved = next((config for config in codecs.values()
                      if isinstance(config, dict) and config.get("name") == cls.name), {})
        given += [(name, value, saved.get(name)) for name, value in overrides_from_args(cls, args).items()]
    differ += [f"--{name.replace('_', '-')} {_flag_value(value)} (the checkpoint's: {_flag_value(saved)})"
               for name, value, saved in given if _as_json(value) != _as_json(saved)]
    if differ:
        what = "model and codecs" if len(codec_classes) > 1 else "model and codec" if codec_classes else "model"
        raise RecipeError(f"--resume keeps the {what} of the checkpoint; these flags differ from it: "
                          + "; ".join(differ))


def _as_json(value: Any) -> Any:
    """``value`` as a checkpoint's JSON holds it (tuples are lists), for comparing a flag with a recorded value."""
    return json.loads(json.dumps(value))


def _flag_value(value: Any) -> str:
    """A value as its flag is written (``128,64`` for a tuple)."""
    return ",".join(str(item) for item in value) if isinstance(value, (list, tuple)) else str(value)


@dataclass(frozen=True)
class DataFlags:
    """The flags that name a recipe's data, recorded in its checkpoints so that ``--resume`` reads the same
    data without them. ``--val-fraction`` is always recorded and always restored."""

    names: Mapping[str, str]
    """Recorded name -> the flag's destination in the namespace, e.g. ``{"path": "data", "hub": "hub_dataset"}``."""
    sources: tuple[str, ...]
    """Destinations of the flags that name a source: when one is given on ``--resume``, nothing is restored."""
    paths: tuple[str, ...] = ()
    """Destinations holding a file or folder: recorded as absolute paths."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Recorded name -> the value restored when a checkpoint lacks it."""

    def record(self, args: argparse.Namespace) -> dict[str, Any]:
        """What a checkpoint records about the data of ``args``."""
        recorded = {}
        for name, dest in self.names.items():
            value = getattr(args, dest)
            recorded[name] = str(Path(value).expanduser().resolve()) if dest in self.paths and value else value
        return {**recorded, "val_fraction": args.val_fraction}

    def restore(self, args: argparse.Namespace, recorded: Mapping[str, Any]) -> None:
        """On ``--resume``, set the data flags to what the run recorded unless a source flag names other data."""
        if not any(getattr(args, dest) for dest in self.sources):
            for name, dest in self.names.items():
                setattr(args, dest, recorded.get(name, self.defaults.get(name)))
        args.val_fraction = recorded.get("val_fraction", args.val_fraction)


@dataclass(frozen=True)
class RunStart:
    """What every training recipe knows once the run folder is open: see ``start_run``."""

    flags: dict[str, Any]
    """The training fields given on the command line (``training_flags``)."""
    out: Path
    """The run folder."""
    resume_from: Path | None
    """The checkpoint ``--resume`` continues, or None."""
    recorded: ckpt.Checkpoint | None
    """That checkpoint read (its configs and metadata), or None."""
    defaults: Mapping[str, Any]
    """The recipe's defaults for this device kind."""
    cache_dir: Path
    """``--cache-dir``, else the ``cache`` folder beside the run folder."""

    @property
    def seed(self) -> int:
        """The run's seed: the resumed run's, else ``--seed``, else 0."""
        return self.recorded.train_config["seed"] if self.recorded is not None else self.flags.get("seed", 0)


def start_run(args: argparse.Namespace, recipe: str, device_defaults: Mapping[str, Mapping[str, Any]], *,
              codec_classes: Sequence[type] = (), data_flags: DataFlags | None = None,
              default_out: Path | None = None) -> RunStart:
    """The first steps of a training recipe, in order: check the training flags, open (and lock) the run folder
    (``--out``, else ``default_out``, else ``runs/<recipe>``), and on ``--resume`` refuse the model and codec flags
    and restore the recorded data flags; then the device's defaults and the cache folder."""
    flags = training_flags(args)  # checked before anything is read
    out, resume_from, recorded = open_run(args, recipe, default_out)
    if recorded is not None:
        check_resume_flags(args, recorded, codec_classes)
        if data_flags is not None:
            data_flags.restore(args, recorded.metadata.get("data", {}))
    defaults = device_defaults[device_kind(getattr(args, "device", "auto"))]
    cache_dir = Path(args.cache_dir) if args.cache_dir else out.parent / "cache"
    return RunStart(flags, out, resume_from, recorded, defaults, cache_dir)


# -- 3. data, model and training ------------------------------------------------------------------------------
def records_dataset(read: Callable[[], Iterable[bytes]], codec: Any, cache_dir: Path, *, recipe: str,
                    source: Mapping[str, Any], val_fraction: float) -> ByteDataset:
    """One codec's documents as a records-layout ``ByteDataset`` (``.train`` / ``.val``), built once under
    ``cache_dir``.

    ``read`` is only called when the cache does not exist yet (it shows its own progress bar); empty
    documents are left out. The cache key is the recipe, ``source`` (what identifies the data) and the
    codec's configuration."""

    def documents() -> Iterator[tuple[bytes, int]]:
        for data in read():
            if data:
                yield data, codec.tag

    return ByteDataset.build(documents(), cache_dir, key={"recipe": recipe, "source": source, "codec": codec.config()},
                             layout="records", name=recipe, val_fraction=val_fraction, split_seed=0, progress=False)


def preset_config(preset: str, **overrides: Any) -> MegabyteConfig:
    """``MegabyteConfig.preset(preset, **overrides)``; a validation error (it names the field, and the flag has
    the same name) becomes a ``RecipeError``."""
    try:
        return MegabyteConfig.preset(preset, **overrides)
    except ValueError as error:
        raise RecipeError(str(error)) from None


def model_config_from_args(args: argparse.Namespace, defaults: Mapping[str, Any], *,
                           fields: Mapping[str, Any] | None = None, patch_size: int | None = None,
                           check_patch: Callable[[int], None] | None = None,
                           max_seq_len: Callable[[int], int] | None = None) -> MegabyteConfig:
    """The model of a new run: ``--preset`` (else the device's ``defaults["preset"]``) with ``fields`` (what the
    recipe sets over the preset), then the model flags given.

    Where ``--patch-sizes`` is not given, ``patch_size`` (the data's own, such as one image row) replaces the
    preset's; ``check_patch`` refuses a patch size that would split the data's frames or rows, and
    ``max_seq_len(patch)`` is the window where ``--max-seq-len`` is not given. Rates of n-gram dropout per table
    that ``fields`` set for other tables than the flags give become their mean for every table. A validation error
    names the field (the flag has the same name) as a ``RecipeError``."""
    name = args.preset or defaults["preset"]
    overrides = {**(fields or {}), **overrides_from_args(MegabyteConfig, args)}
    preset = MegabyteConfig.preset(name)
    patch = overrides["patch_sizes"][0] if overrides.get("patch_sizes") else patch_size or preset.patch_size
    if check_patch is not None:
        check_patch(patch)
    if patch != preset.patch_size:
        overrides.setdefault("patch_sizes", (patch,) + preset.patch_sizes[1:])
    if max_seq_len is not None and "max_seq_len" not in overrides:
        overrides["max_seq_len"] = max_seq_len(patch)
    rates = overrides.get("ngram_dropout")
    if isinstance(rates, (tuple, list)) and len(rates) > 1 and "ngram_dropout" not in vars(args):
        # The recipe's rates per table fit its own tables: with other tables from the flags, their mean for each.
        if preset_config(name, **{**overrides, "ngram_dropout": 0.0}).hash_tables != len(rates):
            overrides["ngram_dropout"] = round(sum(rates) / len(rates), 4)
    return preset_config(name, **overrides)


def checkpoint_model_config(checkpoint: str) -> Any:
    """The model config of a checkpoint or run folder (a fine-tuning run keeps the shape it starts from)."""
    folder, _, _ = ckpt.open_checkpoint(checkpoint)
    return MegabyteConfig.load(folder / "config.json")


def init_from_checkpoint(trainer: Any, checkpoint: str) -> None:
    """Start ``trainer``'s model from the weights of a checkpoint (fine-tuning; the recipe's ``--init``), not from
    random ones."""
    from bytemodels.model import Megabyte

    folder, _, _ = ckpt.open_checkpoint(checkpoint)
    trained = Megabyte.from_pretrained(folder)
    try:
        trainer.model.load_state_dict(trained.state_dict())
    except RuntimeError:  # the model flags changed a shape: the weights cannot be reused
        raise RecipeError(f"--init {checkpoint}: the model flags change the shape of its model; drop them "
                          "(dropout is the one that may change)") from None


def training_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The training fields given on the command line, ``--time`` (a recipe flag) among them, checked.

    ``--time`` left out (None) is not a field given: the recipe's default time, or the resumed run's, applies.
    A value ``TrainConfig`` refuses (``--batch-size 0``, ``--lr -1``, ``--time soon``) is a ``RecipeError``
    naming the field: a recipe calls this first, before any data is read."""
    flags = overrides_from_args(TrainConfig, args)
    if flags.get("time") is None:
        flags.pop("time", None)
    try:
        TrainConfig(**flags)
    except ValueError as error:  # config validation names the field; the flag has the same name
        raise RecipeError(str(error)) from None
    return flags


def new_train_config(defaults: Mapping[str, Any], flags: Mapping[str, Any], out: Path, **settings: Any) -> TrainConfig:
    """The recipe's device ``defaults``, then ``settings``, then the ``flags`` given, writing to ``out``.

    Samples are written at every evaluation, and a step or byte budget given without ``--time`` replaces the
    default time budget."""
    chosen = {name: value for name, value in defaults.items() if name in TrainConfig.__dataclass_fields__}
    if any(flags.get(name) for name in BUDGET_FIELDS) and "time" not in flags:
        chosen.pop("time", None)
    chosen["sample_every"] = flags.get("eval_every", chosen["eval_every"])
    return TrainConfig(**{**chosen, **settings, **flags, "out_dir": str(out)})


def make_trainer(model_config: MegabyteConfig, train_data: Any, val_data: Any, *, out: Path,
                 resume_from: Path | None, flags: Mapping[str, Any], defaults: Mapping[str, Any], sample_fn: SampleFn,
                 metadata: Mapping[str, Any], **settings: Any) -> Trainer:
    """The trainer of a run: one that continues ``resume_from`` (its configs, with the training ``flags`` given),
    or a new one (``new_train_config``) recording ``metadata``. A config validation error (it names the field,
    and the flag has the same name) becomes a ``RecipeError``."""
    try:
        if resume_from is not None:
            trainer = Trainer.resume(resume_from, train_data, val_data, sample_fn=sample_fn,
                                     **{**flags, "out_dir": str(out)})
        else:
            train_config = new_train_config(defaults, flags, out, **settings)
            trainer = Trainer(model_config, train_config, train_data, val_data, sample_fn=sample_fn,
                              metadata=dict(metadata))
    except ValueError as error:
        raise RecipeError(str(error)) from None
    if _trackers and trainer.is_main:  # --log: each metrics record goes to these trackers too
        trainer.metric_loggers = open_loggers(_trackers, out, {"model": trainer.model_config.to_dict(),
                                                               "train": trainer.config.to_dict()})
    return trainer


# -- 4. after training: the comparison with a classic codec ----------------------------------------------------
def compared_documents(val_data: ByteDataset, patch_size: int, seq_len: int, eval_windows: int) -> list[bytes]:
    """The held-out documents that the validation windows cover whole (at least the first): a classic codec
    measured on them compresses exactly the data the model's validation bits/byte scores."""
    count = max(covered_documents(val_data.lengths, patch_size, seq_len, eval_windows), 1)
    return [val_data.document(index)[0] for index in range(count)]


def save_comparison(out: Path, report: Mapping[str, Any], summary: TrainSummary, elapsed_s: float) -> Path:
    """Write ``report`` with the run's step, training time and stop reason to ``out/compression.json``."""
    record = {**report, "step": summary.step, "elapsed_s": round(elapsed_s, 1), "stop_reason": summary.stop_reason,
              "no_result": summary.no_result}
    path = out / COMPARISON_FILE
    with writing(path, "saving the comparison"):
        atomic_write(path, json.dumps(record, indent=2) + "\n")
    return path


def print_done(summary: TrainSummary) -> None:
    """The line every recipe ends a run with: steps, bytes seen and why it stopped."""
    print(f"done: {summary.step:,} steps, {summary.bytes_seen:,} bytes seen, stopped by {summary.stop_reason}")


def no_result_line(summary: TrainSummary) -> str | None:
    """For a run that learnt nothing to report (``TrainSummary.no_result``), the line that says its validation
    number is no result and which budget to raise; None for a run whose number is a result."""
    if not summary.no_result:
        return None
    number = "" if summary.val_bpb is None else f": its validation bits/byte ({summary.val_bpb:.2f}) is no result"
    flag = {"max_steps": "--max-steps", "max_bytes": "--max-bytes"}.get(summary.stop_reason, "--time")
    return f"{summary.no_result}{number}; give it more {flag}"


def finish_with_comparison(trainer: Trainer, summary: TrainSummary, out: Path, val_data: ByteDataset,
                           compare: Callable[[float | None, list[bytes]], dict[str, Any]],
                           show: Callable[[dict[str, Any]], None]) -> Path | None:
    """The end of a media recipe's ``train()``: an interrupted run stops here (``stop_if_interrupted``); on the
    main process, print the summary line, ``compare`` the held-out documents validation covered with a classic
    codec, save the report (``save_comparison``) and ``show`` it. Returns the report's path (None off rank 0)."""
    stop_if_interrupted(summary, out)
    if not trainer.is_main:
        return None
    print_done(summary)
    config = trainer.model_config
    compared = compared_documents(val_data, config.patch_size, config.max_seq_len, trainer.config.eval_windows)
    report = compare(summary.val_bpb, compared)
    table = save_comparison(out, report, summary, trainer.elapsed_s)
    show(report)
    if no_result_line(summary):  # the codecs' numbers stand; the model's is no result
        print(no_result_line(summary))
    return table
