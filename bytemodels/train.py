"""The one training loop every recipe uses: ``Trainer(model_config, train_config, train, val).fit()``.

The loop reads in the order everyone knows from nanoGPT and llama2.c: evaluate and checkpoint, stop
if a budget is spent, learning rate for this step, micro-steps with backward, clip, step, zero
gradients, log. It knows token ids and documents, never modalities: samples are written by a
function the caller passes in (a recipe passes its codec's writer).

Determinism: the batch of step ``s`` is a pure function of ``(seed, s)``, the learning rate a pure
function of ``s``, and the torch RNG (dropout) is reseeded from ``(seed, s, rank)`` every step, so a
run resumed from a checkpoint ends with exactly the weights of a run that was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from bytemodels import checkpoint as ckpt
from bytemodels import rng_state, tokens
from bytemodels.allocator import keep_freed_memory
from bytemodels.budget import StepPace, TimeBudget, compile_pays, parse_duration, step_limit
from bytemodels.fields import config_from_dict, config_to_dict, seed as seed_flag
from bytemodels.config import MegabyteConfig
from bytemodels.distributed import DistributedContext, all_reduce_sum, bf16_is_fast, choose_device, \
    environment_rank, setup_distributed, teardown
from bytemodels.jsonfile import read_json_object
from bytemodels.model import Megabyte
from bytemodels.optim import OPTIMIZERS, build_optimizer
from bytemodels.plot import plot_curves, read_metrics
from bytemodels.resume import check_model_config, check_optimizer, warn_if_batch_changed, warn_if_data_changed
from bytemodels.runfolder import FolderLock, atomic_write, lock_folder, remove_leftovers, writing
from bytemodels.schedule import SCHEDULES, WSD_DECAY_FRACTION, learning_rate

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "curve.png"
SAMPLES_DIR = "samples"
_PARTIAL_RUN_FILES = rf"\.({re.escape(METRICS_FILE)}|{re.escape(CURVE_FILE)})\."  # their atomic writes' temporaries
DTYPES = ("auto", "bf16", "fp32")
#: Dense bf16 peak FLOP/s by GPU name, for the MFU estimate (no entry: no MFU shown).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12,
                   "L4": 121e12, "A10G": 70e12, "RTX 4090": 165e12}
COMPILE_RECORD = "compile_times.json"
#: Until this machine has compiled a shape: a compile time (s) on the safe side (the TinyStories recipe's took about
#: a minute on a 2-core CPU, up to 100 s when it was busy) and the speedup measured where compiling is turned on by
#: default (1.6x for that recipe on CPU, less than 1.5 would never let a 10-minute run compile, and so measure).
DEFAULT_COMPILE_S = {"cpu": 120.0, "cuda": 60.0}
DEFAULT_SPEEDUP = 1.5
PROBE_STEPS = 3
"""Eager steps timed before deciding whether compiling pays (the first one warms caches and is left out)."""
END_MARGIN_S = 1.0
"""Seconds kept for the end of a run besides its evaluation, checkpoint and samples (the curve, closing)."""
COST_KINDS = ("eval", "checkpoint", "sample")
MIN_RESULT_STEPS = 10
"""A run of fewer steps (or one that ends during warmup) has learnt nothing its validation number could show."""


def _now() -> float:
    """The trainer's clock (seconds); tests replace it with a fake one."""
    return time.monotonic()


def compile_record_path() -> Path:
    """Where measured compile times and speedups are kept: ``$XDG_CACHE_HOME/bytemodels`` or ``~/.cache/bytemodels``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bytemodels" / COMPILE_RECORD


def _read_compile_records() -> dict[str, Any]:
    try:
        return read_json_object(compile_record_path())
    except ValueError:  # none yet, unreadable or not an object: the defaults decide
        return {}


def _compile_measurement(record: Any) -> tuple[float, float, int] | None:
    """A compile record's (seconds to compile, speedup, how many runs measured it); None where it is missing or
    unreadable."""
    try:
        return float(record["compile_s"]), float(record["speedup"]), int(record.get("measurements", 1))
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


SampleFn = Callable[[Megabyte, int, Path], None]


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN or infinite; nothing was saved from the bad state."""


@dataclass
class TrainConfig:
    """How to train: optimisation, budgets, evaluation, samples, checkpoints and where the run goes."""

    out_dir: str = "runs/run"
    """Run folder: checkpoints/, metrics.jsonl, curve.png and samples/ are written here."""
    batch_size: int = 16
    """Windows of max_seq_len ids per micro-batch on each process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (global batch = batch_size x grad_accum x processes)."""
    lr: float = 6e-4
    """Peak learning rate, reached at the end of warmup."""
    min_lr: float = 6e-5
    """Learning rate at the end of the decay."""
    warmup_steps: int = 100
    """Optimizer steps of linear warmup."""
    schedule: str = "cosine"
    """Learning-rate shape after warmup: cosine, linear (to min_lr at the end), wsd (warmup-stable-decay) or
    constant."""
    decay_fraction: float = WSD_DECAY_FRACTION
    """wsd only: fraction of all steps spent in the final linear decay."""
    weight_decay: float = 0.1
    """Weight decay on Linear weights (never on norms or embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    optimizer: str = "adamw"
    """adamw, muon: the hidden matrices (every Linear layer but the output head) updated by Muon, their
    momentum orthogonalised, at AdamW's learning rate and schedule; embeddings, tables, norms and the head stay
    with AdamW. More learned per step for a little more time per step. Or normuon: Muon with each output row of the
    update divided by its running RMS (NorMuon)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables clipping)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps."""
    max_bytes: int | None = None
    """Stop after this many bytes seen (window positions of the global batch, padding included)."""
    time: str | None = None
    """Wall-clock budget of the whole run, e.g. 90s, 10m, 1.5h (summed over resumes): compiling, evaluations and
    the final evaluation, checkpoint and samples included; training stops early enough for them to fit."""
    eval_every: int = 250
    """Validation bits/byte every this many steps (0: only at the end)."""
    eval_windows: int = 64
    """Validation windows, the same every time: spread over packed text, the leading records otherwise."""
    sample_every: int = 0
    """Call the sample function every this many steps (0: only at the end; with a time budget also at the start,
    to time it)."""
    checkpoint_every: int = 500
    """Write a checkpoint every this many steps (and at the end, and when validation improves)."""
    keep_last: int = 3
    """Step checkpoints to keep (best/ is kept apart); 0 keeps them all."""
    log_every: int = 10
    """Write a metrics line and refresh the progress bar every this many steps."""
    seed: int = field(default=0, metadata={"flag_type": seed_flag})
    """Seed of the initial weights, the data order and dropout."""
    device: str = "auto"
    """auto (cuda, then mps, then cpu) or a torch device such as cuda:1 or cpu."""
    dtype: str = "auto"
    """auto (bf16 autocast on CUDA and on CPUs with bf16 matrix instructions, AMX or AVX-512 BF16; fp32
    elsewhere), bf16 (autocast) or fp32."""
    compile: bool = False
    """Compile the model with torch.compile where it pays: the first steps train uncompiled and are timed, and the
    run compiles only if the time or steps left make up for compiling (measured on this machine before, else a
    safe guess); one line says why. Where compiling fails (no C++ compiler) the run warns and trains uncompiled."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        self.validate(require_budget=False)

    def validate(self, require_budget: bool = True) -> None:
        """Raise ``ValueError`` naming the field to change (the Trainer also requires a budget)."""
        if require_budget and not (self.max_steps or self.max_bytes or self.time):
            raise ValueError("no budget: set max_steps, max_bytes or time (e.g. time='10m')")
        for name in ("batch_size", "grad_accum", "eval_windows", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("warmup_steps", "eval_every", "sample_every", "checkpoint_every", "keep_last", "grad_clip",
                     "weight_decay", "lr", "min_lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must not be negative")
        for name in ("max_steps", "max_bytes"):
            # 0 is refused rather than read as "no limit" (None is that): a budget of nothing is a mistake.
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1 (leave it unset for no limit)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}; choose one of: {', '.join(DTYPES)}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction={self.decay_fraction} must be in [0, 1]")
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"betas={self.betas} must be two numbers in [0, 1)")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)} must be a finite number")
        if self.time and parse_duration(self.time) <= 0:
            raise ValueError(f"time={self.time!r} must be longer than 0")
        if not 0 <= self.seed < 2**64:  # what torch's and numpy's seeding take
            raise ValueError(f"seed={self.seed} must be in 0 .. 2**64 - 1")

    @property
    def time_budget(self) -> float | None:
        """The ``time`` budget in seconds, or None."""
        return parse_duration(self.time) if self.time else None

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict; an unknown key is an error that names it and lists the fields."""
        return config_from_dict(cls, values)


@dataclass
class TrainSummary:
    """What ``Trainer.fit`` returns."""

    run_dir: Path
    """The run folder (``TrainConfig.out_dir``)."""
    step: int
    """Optimizer steps done."""
    bytes_seen: int
    """Window positions trained on, over all processes."""
    val_bpb: float | None
    """Validation bits/byte at the end (None without validation data)."""
    best_val_bpb: float | None
    """Best validation bits/byte seen after step 0."""
    stop_reason: str
    """max_steps, max_bytes, time or interrupted."""
    checkpoint: Path | None
    """The last checkpoint written."""
    stop_signal: int | None = None
    """The signal that interrupted the run (SIGINT for Ctrl-C, SIGTERM), when ``stop_reason`` is interrupted."""
    no_result: str | None = None
    """Why the run learnt nothing its validation number could show (e.g. "the run ended after 1 step, during
    warmup"), else None; the number stays in metrics.jsonl but is no result."""


def _format_rate(bytes_per_s: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if bytes_per_s < 1000 or unit == "GB":
            return f"{bytes_per_s:.3g}{unit}/s"
        bytes_per_s /= 1000
    return ""


class _RunLog:
    """The run's ``metrics.jsonl`` and progress bar on rank 0 (silent elsewhere), and the averages
    of the steps since the last train line.

    With a time budget the bar runs over the budget's seconds (its position the time spent, so its ETA is the time
    left); otherwise over the steps. Its total never changes."""

    def __init__(self, path: Path | None, show: bool, *, steps: int | None, step: int,
                 budget_s: float | None = None, elapsed_s: float = 0.0, loggers: Sequence[Any] = ()) -> None:
        self.path = path
        self.loggers = list(loggers)  # optional trackers (bytemodels.tracking), each record forwarded
        self.file = None
        if path is not None:
            with writing(path, "opening the metrics log"):
                self.file = open(path, "a", encoding="utf-8")
        self.seconds = budget_s is not None
        if self.seconds:
            self.bar = tqdm(total=round(budget_s), initial=min(round(elapsed_s), round(budget_s)), unit="s",
                            dynamic_ncols=True, disable=not show,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")
        else:
            self.bar = tqdm(total=steps, initial=step, unit="step", dynamic_ncols=True, disable=not show)
        self._reset()

    def tick(self, step: int, elapsed_s: float) -> None:
        """Move the bar after step ``step``, ``elapsed_s`` seconds into the budget."""
        if not self.seconds:
            self.bar.update(1)
        elif elapsed_s > self.bar.n:
            self.bar.update(min(elapsed_s, self.bar.total) - self.bar.n)

    def _reset(self) -> None:
        self.nats, self.targets, self.bytes, self.start = 0.0, 0.0, 0, _now()

    def add(self, nats: float, targets: float, bytes_done: int) -> None:
        self.nats, self.targets, self.bytes = self.nats + nats, self.targets + targets, self.bytes + bytes_done

    def pending(self) -> bool:
        return self.targets > 0

    def write_train(self, step: int, bytes_seen: int, elapsed_s: float, lr: float, mfu_factor: float | None) -> None:
        loss = self.nats / max(self.targets, 1.0)
        bytes_per_s = self.bytes / max(_now() - self.start, 1e-9)
        record = {"step": step, "bytes": bytes_seen, "loss": round(loss, 6), "bpb": round(loss / math.log(2), 6),
                  "lr": lr, "bytes_per_s": round(bytes_per_s, 1), "elapsed_s": round(elapsed_s, 3)}
        postfix = {"step": f"{step:,}", "loss": f"{loss:.4f}", "bpb": f"{record['bpb']:.4f}",
                   "speed": _format_rate(bytes_per_s)}
        if mfu_factor:
            record["mfu"] = round(mfu_factor * bytes_per_s, 4)
            postfix["mfu"] = f"{record['mfu']:.1%}"
        self._write(record)
        self.bar.set_postfix(postfix, refresh=False)
        self._reset()

    def write_val(self, step: int, bytes_seen: int, elapsed_s: float, val_bpb: float) -> None:
        self._write({"step": step, "bytes": bytes_seen, "val_bpb": round(val_bpb, 6), "elapsed_s": round(elapsed_s, 3)})
        if self.file is not None:
            self.bar.write(f"step {step}: validation {val_bpb:.4f} bits/byte")

    def _write(self, record: dict) -> None:
        if self.file is not None:
            with writing(self.path, "writing the metrics log"):
                self.file.write(json.dumps(record) + "\n")
                self.file.flush()
            for logger in self.loggers:
                logger.log(record)

    def close(self) -> None:
        self.bar.close()
        for logger in self.loggers:
            logger.close()
        if self.file is not None:
            try:
                self.file.close()
            except OSError:  # the buffer was flushed after every line; a failed write has been reported
                pass


class Trainer:
    """Trains a ``Megabyte`` on token windows; resumable, distributed with torchrun, modality-blind.

    ``train_data`` and ``val_data`` are ``ByteDataset`` views (anything with
    ``windows(seq_len, patch_size, num_tags)``). ``sample_fn(model, step, samples_dir)`` is called on
    rank 0 every ``sample_every`` steps and at the end (and at the start with a time budget, to time it).
    ``metadata`` (JSON-able, e.g. the codec config) is stored in every checkpoint. ``resume`` is a checkpoint, run or checkpoints folder to continue
    from, or ``"auto"`` to continue ``out_dir``'s latest checkpoint when there is one.

    The run folder belongs to one process: rank 0 locks it from construction until ``fit()`` returns (a folder
    another process trains in is a ``RunFolderError`` naming its PID), removes what a killed checkpoint write
    left there, and on a new run moves aside the ``metrics.jsonl`` of an earlier run that saved no checkpoint.
    A checkpoint or log that cannot be written (disk full, read-only) is a ``RunFolderError`` naming the file;
    the previous checkpoint stays intact.
    """

    metric_loggers: Sequence[Any] = ()
    """Trackers each ``metrics.jsonl`` record is also sent to on rank 0 (``bytemodels.tracking``): objects with
    ``log(record)`` and ``close()``. Set before ``fit``."""

    def __init__(self, model_config: MegabyteConfig, train_config: TrainConfig, train_data: Any,
                 val_data: Any = None, *, sample_fn: SampleFn | None = None, metadata: Any = None,
                 resume: str | Path | None = None) -> None:
        model_config.validate()
        train_config.validate()
        self.model_config, self.config = model_config, train_config
        self.sample_fn, self.metadata = sample_fn, metadata
        self.run_dir = Path(train_config.out_dir)
        self.device = choose_device(train_config.device, environment_rank()[1])
        self.dist: DistributedContext = setup_distributed(self.device)
        self.is_main = self.dist.is_main
        if self.device.type == "cpu":
            keep_freed_memory()  # each step's gradients reuse the last step's pages instead of faulting in new ones
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.use_bf16 = train_config.dtype == "bf16" or (train_config.dtype == "auto" and bf16_is_fast(self.device))
        self.precision = "bf16 autocast" if self.use_bf16 else "fp32"

        seq_len, patch = model_config.max_seq_len, model_config.patch_size
        self.train_data, self.val_data = train_data, val_data
        self.train_windows = train_data.windows(seq_len, patch, model_config.num_tags)
        self.val_ids = None
        if val_data is not None and len(val_data):
            self.val_ids = torch.from_numpy(val_data.windows(seq_len, patch, model_config.num_tags)
                                            .fixed(train_config.eval_windows))
        self.rank_batch = train_config.batch_size * train_config.grad_accum
        self.bytes_per_step = self.rank_batch * self.dist.world_size * seq_len

        torch.manual_seed(train_config.seed)  # same initial weights on every rank
        self.model = Megabyte(model_config).to(self.device)
        self.optimizer = build_optimizer(self.model, train_config.lr, weight_decay=train_config.weight_decay,
                                         betas=train_config.betas, optimizer=train_config.optimizer,
                                         fused=self.device.type == "cuda")
        # Run state: everything a checkpoint restores besides weights, optimizer and RNG.
        self.step = 0
        self.bytes_seen = 0
        self.elapsed_s = 0.0
        self.best_val_bpb: float | None = None
        self.best_step: int | None = None
        self.last_val_bpb: float | None = None
        self.horizon = self._step_limit()
        """The schedule's last step: from the step and byte budgets, or estimated from a time budget's pace."""
        self.last_checkpoint: Path | None = None
        self._evaluated_step: int | None = None
        self._sampled_step: int | None = None
        self._saved_step: int | None = None
        self._stop_requested = False  # set by the Ctrl-C handler on this process
        self._stop_signal: int | None = None  # which signal asked for it
        self._stop_agreed = False  # the stop request as all processes agreed on it after a step
        self._time_up = False  # the time budget is spent (decided after a step, on every process alike)

        self._folder_lock: FolderLock | None = None
        if self.is_main:
            self._folder_lock = lock_folder(self.run_dir)
        try:
            if resume == "auto":
                resume = ckpt.latest_checkpoint(self.run_dir / ckpt.CHECKPOINTS_DIR)
            if self.is_main:
                self._clean_run_folder(fresh=resume is None)
            if resume is not None:
                self._load(resume)
        except BaseException:
            self._release_run_folder()
            raise

        self.compiled = False
        """Whether the training forward runs compiled: decided after the first steps when ``compile`` is set
        (False again after a failed compile)."""
        self._compile_phase = "probe" if train_config.compile else "off"  # probe, measure, then done
        self._costs: dict[str, float] = {}  # seconds of the latest evaluation, checkpoint and sample call
        self._checkpoint_guess_s = 0.5 + 12 * self.model.num_parameters() / 200e6  # until one is timed
        self.train_model = self._training_module()

    def _clean_run_folder(self, fresh: bool) -> None:
        """As the folder's new owner: remove a killed checkpoint write's leftovers, and on a ``fresh`` run start
        a new metrics log when an earlier run left one but no checkpoint (its lines would mix with ours)."""
        removed = ckpt.remove_partial_writes(self.run_dir / ckpt.CHECKPOINTS_DIR)
        removed += remove_leftovers(self.run_dir, _PARTIAL_RUN_FILES)
        if removed:
            tqdm.write(f"removed {len(removed)} unfinished write(s) of an earlier process from {self.run_dir}: "
                       + ", ".join(removed))
        metrics = self.run_dir / METRICS_FILE
        if fresh and metrics.is_file() and ckpt.latest_checkpoint(self.run_dir / ckpt.CHECKPOINTS_DIR) is None:
            aside = metrics.with_name(f"{METRICS_FILE}.old-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
            with writing(metrics, "moving it aside"):
                os.replace(metrics, aside)
            tqdm.write(f"{metrics}: left by an earlier run that saved no checkpoint; moved to {aside.name}")

    def _release_run_folder(self) -> None:
        if getattr(self, "_folder_lock", None) is not None:
            self._folder_lock.release()
            self._folder_lock = None

    def __del__(self) -> None:  # a Trainer dropped without fit() lets its folder go
        try:
            self._release_run_folder()
        except Exception:  # at interpreter exit the kernel releases it anyway
            pass

    def _training_module(self) -> torch.nn.Module:
        """The model as training calls it: compiled if asked, wrapped for DDP across processes."""
        module: torch.nn.Module = torch.compile(self.model) if self.compiled else self.model
        if self.dist.enabled:
            module = DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda"
                                             else None)
        return module

    def _training_loss(self, ids: torch.Tensor) -> torch.Tensor:
        """The training forward; a compile that fails (on the first call) falls back to the uncompiled model."""
        try:
            return self.train_model(ids, ids).loss
        except torch._dynamo.exc.BackendCompilerFailed as error:
            if not self.compiled:
                raise
            cause = getattr(error, "inner_exception", None) or error
            reason = (str(cause).strip().splitlines() or [""])[0]
            warnings.warn(f"torch.compile failed, training continues uncompiled: {type(cause).__name__}: {reason}",
                          RuntimeWarning, stacklevel=2)
            self.compiled = False
            self.train_model = self._training_module()
            return self.train_model(ids, ids).loss

    @classmethod
    def resume(cls, checkpoint: str | Path, train_data: Any, val_data: Any = None, *,
               sample_fn: SampleFn | None = None, **overrides: Any) -> "Trainer":
        """Continue a run from a checkpoint (or run folder) with the configs and metadata it recorded.

        ``overrides`` change TrainConfig fields, e.g. ``max_steps=20000`` to train longer."""
        loaded = ckpt.load_checkpoint(checkpoint)
        model_config = MegabyteConfig.from_dict(loaded.model_config)
        train_config = TrainConfig.from_dict({**loaded.train_config, **overrides})
        return cls(model_config, train_config, train_data, val_data, sample_fn=sample_fn,
                   metadata=loaded.metadata, resume=loaded.path)

    def _autocast(self):
        """bf16 autocast where configured (CUDA by default); plain fp32 otherwise."""
        if self.use_bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # -- budgets ----------------------------------------------------------------------------------
    def _step_limit(self) -> int | None:
        """Steps the step and byte budgets allow (None when only a time budget is set)."""
        return step_limit(self.config.max_steps, self.config.max_bytes, self.bytes_per_step)

    def _stop_reason(self) -> str | None:
        """Why the run stops before the next step (interrupted, max_steps, max_bytes, time), or None."""
        if self._stop_agreed or (self._stop_requested and not self.dist.enabled):
            return "interrupted"
        if self.config.max_steps and self.step >= self.config.max_steps:
            return "max_steps"
        if self.config.max_bytes and self.bytes_seen >= self.config.max_bytes:
            return "max_bytes"
        if self._time_up:
            return "time"
        return None

    def _learning_rate(self) -> float:
        cfg = self.config
        return learning_rate(self.step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                             total_steps=self.horizon, schedule=cfg.schedule, decay_fraction=cfg.decay_fraction)

    # -- the clock: pace, end-of-run reserve, compiling ---------------------------------------------------
    @contextmanager
    def _timed(self, kind: str):
        """Time an evaluation, checkpoint or sample call: its latest cost estimates the next one."""
        start = _now()
        try:
            yield
        finally:
            spent = _now() - start
            self._costs[kind] = spent
            self._between_s += spent

    def _cost(self, kind: str) -> float:
        """Seconds of the next evaluation, checkpoint or sample call: the last one measured, else an estimate."""
        if kind in self._costs:
            return self._costs[kind]
        if kind == "checkpoint":  # weights and AdamW's two moments in fp32, at a slow disk's 200 MB/s
            return self._checkpoint_guess_s
        # An evaluation's forward passes, each about half a training micro-step (forward and backward) at most.
        # A sample function never timed yet is guessed at twice an evaluation (the TinyStories recipe's two
        # 600-byte stories took 1.6 times its evaluation on a busy 2-core CPU).
        if kind == "eval" or "eval" not in self._costs:
            batches = -(-len(self.val_ids if self.val_ids is not None else []) // self.config.batch_size)
            evaluation = batches / self.dist.world_size * (self._pace.seconds or 0.0) / self.config.grad_accum / 2
        else:
            evaluation = self._costs["eval"]
        return evaluation if kind == "eval" else 2 * evaluation

    def _end_reserve_s(self) -> float:
        """Seconds the end of the run needs: its evaluation, checkpoint and samples, and a margin."""
        costs = self._agreed_costs
        return (END_MARGIN_S + costs["checkpoint"] + (costs["eval"] if self.val_ids is not None else 0.0)
                + (costs["sample"] if self.sample_fn is not None else 0.0))

    def _due_s(self, step: int) -> float:
        """Seconds of the periodic work due after step ``step`` if the run goes on (an evaluation may improve and
        so checkpoint)."""
        cfg = self.config
        evaluates = self.val_ids is not None and cfg.eval_every and step % cfg.eval_every == 0
        saves = evaluates or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
        samples = self.sample_fn is not None and cfg.sample_every and step % cfg.sample_every == 0
        return sum(self._agreed_costs[kind] for kind, due in (("eval", evaluates), ("checkpoint", saves),
                                                              ("sample", samples)) if due)

    def _per_step_s(self) -> float:
        """A step's seconds with the periodic work spread over the steps."""
        cfg, costs, per_step = self.config, self._agreed_costs, self._pace.seconds or 0.0
        if self.val_ids is not None and cfg.eval_every:
            per_step += (costs["eval"] + costs["checkpoint"]) / cfg.eval_every
        if cfg.checkpoint_every:
            per_step += costs["checkpoint"] / cfg.checkpoint_every
        if self.sample_fn is not None and cfg.sample_every:
            per_step += costs["sample"] / cfg.sample_every
        return per_step

    def _track_time(self, elapsed_s: float, between_s: float, costs: dict[str, float]) -> None:
        """After a step ended ``elapsed_s`` into the budget: time the step (the evaluations, checkpoints and samples
        since the last one, ``between_s``, left out), decide about compiling, and whether another step still
        leaves room for the end of the run; re-aim the schedule's horizon and move the bar. ``costs`` (rank 0's
        timings, the same on every process) are what an evaluation, checkpoint and sample call take."""
        self._agreed_costs = costs
        reserve_s = self._end_reserve_s()
        self._pace.add(max(elapsed_s - self.elapsed_s - between_s, 0.0))
        self.elapsed_s, self._between_s, extra_s = elapsed_s, 0.0, self._extra_next_s
        self._extra_next_s = 0.0
        if self._compile_phase != "off":
            self._compile_when_it_pays(reserve_s)
        budget = self._time_budget
        if budget is not None:
            # The next step at the mean pace, or the latest step's, whichever is slower (a busy machine).
            step_s = max(self._pace.seconds or 0.0, self._pace.last or 0.0)
            next_s = self._due_s(self.step) + step_s + self._extra_next_s
            self._time_up = budget.time_up(elapsed_s, next_s, reserve_s)
            if self._pace.count and not extra_s:  # a pace of steps that warmed up and compiled nothing
                self.horizon = budget.horizon(self.step, elapsed_s, self._per_step_s(), reserve_s)
        self._log.tick(self.step, elapsed_s)

    def _compile_key(self) -> str:
        """What a compile's cost and speedup depend on: the machine, torch, precision and the shapes."""
        device = (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                  else f"{self.device.type} x{torch.get_num_threads()}")
        shape = json.dumps([self.model_config.to_dict(), self.config.batch_size], sort_keys=True)
        digest = hashlib.sha256(shape.encode()).hexdigest()[:16]
        return f"{device} | torch {torch.__version__} | {self.precision} | {digest}"

    def _compile_estimate(self) -> tuple[float, float, str]:
        """(seconds to compile, speedup, where they come from): measured here before, else on the safe side.

        One measurement of a speedup below the safe guess is not trusted on its own: a run beside a busy neighbour
        (another run compiling, say) measures its compiled steps too slow, and a record that stopped every later
        run from compiling would never be measured again. The guess decides until a second run confirms it."""
        default_s = DEFAULT_COMPILE_S.get(self.device.type, 120.0)
        measured = _compile_measurement(_read_compile_records().get(self._compile_key()))
        if measured is None:
            return default_s, DEFAULT_SPEEDUP, "a safe guess, never measured here"
        compile_s, speedup, measurements = measured
        if speedup < DEFAULT_SPEEDUP and measurements < 2:
            return default_s, DEFAULT_SPEEDUP, f"a safe guess: measured {speedup:.2g}x once here, measuring again"
        return compile_s, speedup, "measured on this machine before"

    def _compile_when_it_pays(self, reserve_s: float) -> None:
        """After ``PROBE_STEPS`` eager steps compile if it pays in what is left (one line says why); once
        compiled, measure what compiling cost and gained and record it for the next run's decision."""
        pace = self._pace
        if self._compile_phase == "probe" and pace.count >= PROBE_STEPS - 1:
            compile_s, speedup, source = self._compile_estimate()
            budget = self._time_budget
            time_left = budget.seconds - self.elapsed_s - reserve_s if budget is not None else None
            limit = self._step_limit()
            pays, compiled, eager = compile_pays(pace.seconds, compile_s, speedup, time_left_s=time_left,
                                                 steps_left=limit - self.step if limit else None)
            # Rank 0 decides (its record file), every process follows.
            pays, compile_s = all_reduce_sum([float(pays), compile_s] if self.is_main else [0.0, 0.0], self.device,
                                             self.dist)
            pays = pays > 0
            if self.is_main:
                window = (f"in the {time_left:.0f} s left" if time_left is not None
                          else f"for {limit - self.step:,} steps")
                tqdm.write(f"compile: {'yes' if pays else 'no'}: {compiled:,} steps compiled against {eager:,} "
                           f"uncompiled {window} (compiling about {compile_s:.0f} s, then {speedup:.2g}x faster: "
                           f"{source}; uncompiled steps take {pace.seconds * 1e3:.0f} ms)")
            self._compile_phase = "measure" if pays else "done"
            if pays:
                self._eager_step_s = pace.seconds
                self._extra_next_s = compile_s + pace.seconds  # the first compiled step, at most
                self.compiled = True
                self.train_model = self._training_module()
                pace.reset()
        elif self._compile_phase == "measure" and (pace.count >= PROBE_STEPS or not self.compiled):
            self._compile_phase = "done"
            if self.compiled and self.is_main:  # a failed compile measured nothing
                self._save_compile_record(max(pace.first - pace.seconds, 0.0), self._eager_step_s / pace.seconds)

    def _save_compile_record(self, compile_s: float, speedup: float) -> None:
        """Record a measurement, keeping the best speedup of all measured (a busy machine only makes compiled steps
        look slower) and the latest compile time, and how many runs measured it (``_compile_estimate``)."""
        records, path = _read_compile_records(), compile_record_path()
        key = self._compile_key()
        measurements = 1
        before = _compile_measurement(records.get(key))
        if before is not None:  # an unreadable entry is replaced by this measurement
            speedup, measurements = max(speedup, before[1]), before[2] + 1
        records[key] = {"compile_s": round(compile_s, 2), "speedup": round(speedup, 3), "measurements": measurements,
                        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(records, indent=1) + "\n")
        except OSError as error:  # a cache: the next run decides from the defaults again
            warnings.warn(f"{path}: could not record the compile time: {error}", RuntimeWarning,
                          stacklevel=2)

    def _no_result(self) -> str | None:
        """Why the run's validation number is no result (ended during warmup or after a handful of steps), or None."""
        steps = f"the run ended after {self.step:,} step{'' if self.step == 1 else 's'}"
        if self.step < self.config.warmup_steps:
            return f"{steps}, during warmup ({self.config.warmup_steps:,} steps)"
        return f"{steps}, too few to learn from" if self.step < MIN_RESULT_STEPS else None

    # -- data ----------------------------------------------------------------------------------------
    def _batch(self, step: int) -> torch.Tensor:
        """This rank's windows of step ``step`` (all its micro-batches), ready to move to the device."""
        ids = torch.from_numpy(self.train_windows.batch(self.config.seed, step, self.rank_batch,
                                                        self.dist.rank, self.dist.world_size))
        return ids.pin_memory() if self.device.type == "cuda" else ids

    # -- evaluation and samples --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Validation bits/byte over the fixed validation windows (shared out across ranks)."""
        if self.val_ids is None:
            return None
        self.model.eval()
        nats, count = 0.0, 0.0
        rows = self.val_ids[self.dist.rank::self.dist.world_size]
        for start in range(0, len(rows), self.config.batch_size):
            ids = rows[start:start + self.config.batch_size].to(self.device)
            with self._autocast():
                loss = self.model(ids, ids).loss
            targets = int((ids != tokens.PAD_ID).sum())
            nats += float(loss) * targets
            count += targets
        self.model.train()
        nats, count = all_reduce_sum([nats, count], self.device, self.dist)
        return nats / max(count, 1.0) / math.log(2)

    def _sample(self, step: int) -> None:
        # Once per step: the run's end samples too, and its last step may already have (sample_every divides it).
        if self.sample_fn is None or not self.is_main or step == self._sampled_step:
            return
        self._sampled_step = step
        folder = self.run_dir / SAMPLES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.model.eval()
        try:
            with self._autocast(), self._timed("sample"):
                self.sample_fn(self.model, step, folder)
        except Exception as error:  # a broken writer must not cost the training run
            warnings.warn(f"sample function failed at step {step}: {error!r}", RuntimeWarning, stacklevel=2)
        finally:
            self.model.train()

    # -- checkpoints ----------------------------------------------------------------------------------
    def _state(self, rng_json: dict[str, Any]) -> dict[str, Any]:
        def describe(data: Any) -> Any:
            return getattr(data, "fingerprint", None)

        return {"step": self.step, "bytes_seen": self.bytes_seen, "elapsed_s": self.elapsed_s,
                "best_val_bpb": self.best_val_bpb, "best_step": self.best_step, "last_val_bpb": self.last_val_bpb,
                "horizon": self.horizon, "world_size": self.dist.world_size,
                "global_batch": self.rank_batch * self.dist.world_size,
                "data": {"seed": self.config.seed, "next_step": self.step, "train": describe(self.train_data),
                         "val": describe(self.val_data)},
                "rng": rng_json, "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def save_checkpoint(self, best: bool = False) -> Path | None:
        """Write a checkpoint of the current step (rank 0 only); ``best`` also makes it ``best/``."""
        if not self.is_main:
            return None
        rng_tensors, rng_json = rng_state.capture()
        root = self.run_dir / ckpt.CHECKPOINTS_DIR
        path = ckpt.save_checkpoint(root, self.step, write_model=self.model.save_pretrained,
                                    optimizer_state=self.optimizer.state_dict(), rng_tensors=rng_tensors,
                                    state=self._state(rng_json),
                                    train_config=self.config.to_dict(), metadata=self.metadata)
        if best:
            ckpt.update_best(root, path)
        ckpt.prune_checkpoints(root, self.config.keep_last)
        self.last_checkpoint, self._saved_step = path, self.step
        return path

    def _load(self, path: str | Path) -> None:
        loaded = ckpt.load_checkpoint(path)
        check_model_config(loaded.path, loaded.model_config, self.model_config.to_dict())
        check_optimizer(loaded.path, loaded.train_config, self.config.optimizer)
        self.model.load_state_dict(loaded.model_state(self.device))
        self.optimizer.load_state_dict(loaded.optimizer_state(self.device))
        state = loaded.state
        self.step, self.bytes_seen, self.elapsed_s = state["step"], state["bytes_seen"], state["elapsed_s"]
        self.best_val_bpb, self.best_step = state["best_val_bpb"], state["best_step"]
        self.last_val_bpb = state.get("last_val_bpb")
        # Step and byte budgets come from the (possibly changed) config; a horizon estimated from a time
        # budget carries on until the clock re-estimates it.
        self.horizon = self._step_limit()
        if self.config.time and state.get("horizon"):
            self.horizon = min(self.horizon or state["horizon"], state["horizon"])
        warn_if_data_changed(loaded.path, state["data"], {"train": self.train_data, "val": self.val_data})
        warn_if_batch_changed(loaded.path, state.get("global_batch"), self.config.batch_size, self.config.grad_accum,
                              self.dist.world_size)
        rng_state.restore(loaded.rng_tensors(), state["rng"])
        self._evaluated_step = self._saved_step = self.step
        self.last_checkpoint = loaded.path
        if self.is_main:
            self._truncate_metrics()
            tqdm.write(f"resumed from {loaded.path} at step {self.step}")

    def _truncate_metrics(self) -> None:
        """Drop metrics lines a killed run wrote after the checkpoint we resume from."""
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= self.step]
        with writing(path, "dropping the lines after the checkpoint"):
            atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))

    # -- the loop -----------------------------------------------------------------------------------------
    def fit(self) -> TrainSummary:
        """Train until a budget is spent (or Ctrl-C); evaluate, checkpoint, sample and plot along the way."""
        cfg = self.config
        session_start, elapsed_base = _now(), self.elapsed_s  # time budgets sum over resumes
        self._begin_fit()
        prefetch = ThreadPoolExecutor(max_workers=1)  # reads the next batch while this one trains
        next_batch = prefetch.submit(self._batch, self.step)
        previous_handlers = self._install_signal_handlers()
        stop_reason, lr, finished = None, cfg.lr, False
        try:
            while True:
                self._eval_and_checkpoint()
                stop_reason = self._stop_reason()
                if stop_reason:
                    break
                lr = self._learning_rate()
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                batch = next_batch.result()
                next_batch = prefetch.submit(self._batch, self.step + 1)
                nats, targets, grad_norm = self._forward_backward(batch)  # micro-steps, backward, clip
                # One small all-reduce: the step's loss and norm, whether a process wants to stop, the clock
                # (averaged) and rank 0's timings, so every process takes the same time-budget decisions.
                nats, grad_norm, stop_votes, session_s, between_s, *costs = all_reduce_sum(
                    [nats, grad_norm, float(self._stop_requested), _now() - session_start,
                     *([self._between_s, *map(self._cost, COST_KINDS)] if self.is_main else [0.0] * 4)],
                    self.device, self.dist)
                self._check_finite(nats, grad_norm, lr)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)

                self.step += 1
                self.bytes_seen += self.bytes_per_step
                self._stop_agreed = stop_votes > 0
                self._track_time(elapsed_base + session_s / self.dist.world_size, between_s,
                                 dict(zip(COST_KINDS, costs)))
                self._log.add(nats, targets, self.bytes_per_step)
                if self.step % cfg.log_every == 0:
                    self._log.write_train(self.step, self.bytes_seen, self.elapsed_s, lr, self._mfu_factor())
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self._sample(self.step)
            self._end_fit(stop_reason, lr)
            self._log.tick(self.step, elapsed_base + _now() - session_start)
            finished = True
        finally:
            prefetch.shutdown(wait=True, cancel_futures=True)
            self._restore_signal_handlers(previous_handlers)
            self._log.close()
            if isinstance(self.train_model, DistributedDataParallel):
                # The wrapper holds the process group: while it lives, destroying the group leaves gloo's threads
                # running until the interpreter's own teardown, where their last work can abort the process.
                self.train_model = self.train_model.module
            teardown(self.dist)
            if not finished:  # an error: the folder is free for the next process at once
                self._release_run_folder()
        try:
            if self.is_main:
                with writing(self.run_dir / CURVE_FILE, "drawing the learning curve"):
                    plot_curves(self.run_dir / METRICS_FILE, self.run_dir / CURVE_FILE)
        finally:
            self._release_run_folder()
        return TrainSummary(self.run_dir, self.step, self.bytes_seen, self.last_val_bpb, self.best_val_bpb,
                            stop_reason, self.last_checkpoint,
                            self._stop_signal if stop_reason == "interrupted" else None, self._no_result())

    def _begin_fit(self) -> None:
        """Own the run folder (again, for a second ``fit``), say what trains where, and open the run's log."""
        if self.is_main:
            if self._folder_lock is None:  # fit() called again: the first one released the folder
                self._folder_lock = lock_folder(self.run_dir)
            tqdm.write(f"training {self.model.num_parameters():,} parameters on {self.device} ({self.precision}, "
                       f"{self.dist.world_size} process{'es' if self.dist.world_size > 1 else ''}), "
                       f"global batch {self.rank_batch * self.dist.world_size} x {self.model_config.max_seq_len}"
                       + (f", time budget {self.config.time} (compiling, evaluations and the end of the run "
                          "included)" if self.config.time else ""))
        budget_s = self.config.time_budget
        self._time_budget = TimeBudget(budget_s, self._step_limit()) if budget_s else None
        self._log = _RunLog(self.run_dir / METRICS_FILE if self.is_main else None,
                            self.is_main and self.config.progress, steps=self.horizon, step=self.step,
                            budget_s=budget_s, elapsed_s=self.elapsed_s,
                            loggers=self.metric_loggers if self.is_main else ())
        self._time_up = bool(budget_s) and self.elapsed_s >= budget_s  # then decided after each step
        self._pace = StepPace()  # this fit's step times (a resumed process warms up again)
        self._between_s = 0.0  # seconds of evaluations, checkpoints and samples since the last step
        self._extra_next_s = 0.0  # what the next step costs on top of the pace (compiling)
        if self._time_budget is not None:
            # The budget keeps room for the end's samples: time the sample function now rather than guess (the
            # TinyStories recipe's took 6 to 21 s on a busy CPU, a process's first story the slowest).
            self._sample(self.step)

    def _check_finite(self, nats: float, grad_norm: float, lr: float) -> None:
        """Raise ``TrainingDiverged`` before a step that a NaN or infinite loss or gradient would poison."""
        if math.isfinite(nats) and math.isfinite(grad_norm):
            return
        what = "loss" if not math.isfinite(nats) else "gradient norm"
        raise TrainingDiverged(
            f"training diverged: the {what} is not finite at step {self.step} (lr {lr:.3g}); nothing "
            f"was saved from this state. Last good checkpoint: {self.last_checkpoint or 'none'}; "
            "resume from it with a lower lr or more warmup_steps")

    def _end_fit(self, stop_reason: str, lr: float) -> None:
        """Log the last steps; interrupted, save them; otherwise evaluate, checkpoint and sample the end."""
        if self._log.pending():
            self._log.write_train(self.step, self.bytes_seen, self.elapsed_s, lr, self._mfu_factor())
        if stop_reason == "interrupted":
            if self.step > 0 and self.step != self._saved_step:
                self.save_checkpoint()
            if self.is_main:
                tqdm.write(f"interrupted at step {self.step}; checkpoint {self.last_checkpoint}")
        else:
            self._eval_and_checkpoint(final=True)
            self._sample(self.step)

    def _forward_backward(self, batch: torch.Tensor) -> tuple[float, float, float]:
        """Accumulate the gradients of one step's micro-batches.

        Returns this rank's summed loss in nats, the global batch's target count and the gradient norm.

        The loss is token-weighted: every non-PAD target of the global batch counts the same, however the
        windows are split into micro-batches and processes (DDP averages gradients over processes)."""
        cfg = self.config
        torch.manual_seed(rng_state.step_seed(cfg.seed, self.step, self.dist.rank))  # dropout: a function of the step
        local_targets = float((batch != tokens.PAD_ID).sum())
        global_targets = all_reduce_sum([local_targets], self.device, self.dist)[0]
        nats = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            ids = batch[micro * cfg.batch_size:(micro + 1) * cfg.batch_size].to(self.device, non_blocking=True)
            targets = (ids != tokens.PAD_ID).sum()
            last = micro == cfg.grad_accum - 1
            sync = self.train_model.no_sync() if self.dist.enabled and not last else nullcontext()
            with sync, torch.enable_grad():  # a caller may have turned gradients off globally
                with self._autocast():
                    loss = self._training_loss(ids)
                (loss * (targets * self.dist.world_size / global_targets)).backward()
            nats += loss.detach() * targets
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0
                                                   else float("inf"))
        return float(nats), global_targets, float(grad_norm)

    def _eval_and_checkpoint(self, final: bool = False) -> None:
        """Evaluate when due (or at the end) and checkpoint when due, when validation improved, or at the end."""
        cfg, step = self.config, self.step
        improved = False
        due_eval = cfg.eval_every and step % cfg.eval_every == 0
        if self.val_ids is not None and (due_eval or final) and step != self._evaluated_step:
            with self._timed("eval"):
                self.last_val_bpb, self._evaluated_step = self.evaluate(), step
            self._log.write_val(step, self.bytes_seen, self.elapsed_s, self.last_val_bpb)
            if step > 0 and (self.best_val_bpb is None or self.last_val_bpb < self.best_val_bpb):
                self.best_val_bpb, self.best_step, improved = self.last_val_bpb, step, True
        due_checkpoint = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
        if step > 0 and step != self._saved_step and (due_checkpoint or improved or final):
            with self._timed("checkpoint"):
                self.save_checkpoint(best=improved)

    def _mfu_factor(self) -> float | None:
        """MFU per byte/s (FLOPs per byte over the job's peak FLOP/s), or None where the peak is unknown."""
        if self.device.type != "cuda" or not self.use_bf16:
            return None
        name = torch.cuda.get_device_name(self.device)
        peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
        return self.model_config.flops_per_byte() / (peak * self.dist.world_size) if peak else None


    # -- Ctrl-C -----------------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict:
        """First Ctrl-C (or SIGTERM) asks the loop to save and stop after this step; a second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested, self._stop_signal = True, signum
            if self.is_main:
                tqdm.write("stopping after this step and saving a checkpoint (press Ctrl-C again to abort)")

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, request_stop)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
