"""Optional experiment tracking: the records a run writes to ``metrics.jsonl``, also sent to TensorBoard or Weights &
Biases (``--log tensorboard``, ``--log wandb`` in the recipes).

Neither package is a dependency of bytemodels: each is imported only when asked for, and one that is not installed
is a ``TrackingError`` of one line saying what to install. ``metrics.jsonl`` stays the record of the run either way.
A tracker that fails during training (a network error) is dropped with one warning; training goes on.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = ["TRACKERS", "MetricsLogger", "TrackingError", "TensorBoardLogger", "WandbLogger", "check_trackers",
           "open_loggers"]

#: The trackers ``--log`` takes: name -> (module imported, package to install).
TRACKERS = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class TrackingError(Exception):
    """A tracker asked for that cannot be used (its package is not installed); the message is one line."""


class MetricsLogger(Protocol):
    """What the trainer forwards each metrics record to (rank 0 only)."""

    def log(self, record: Mapping[str, Any]) -> None:
        """Take one record as written to ``metrics.jsonl`` (it has ``step``; train or ``val_bpb`` fields)."""

    def close(self) -> None:
        """Flush and finish; a later ``log`` opens it again (a second ``fit``)."""


def _import(name: str) -> Any:
    module, package = TRACKERS[name]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TrackingError(f"--log {name}: the {package} package is not installed (pip install {package}); "
                            "metrics.jsonl records the run without it") from None


def check_trackers(names: Sequence[str]) -> list[str]:
    """``names`` once each, in order, after checking that each one's package imports (a ``TrackingError`` if not):
    called before any data is read, so a missing package stops a run at once."""
    chosen = list(dict.fromkeys(names))
    for name in chosen:
        if name not in TRACKERS:
            raise TrackingError(f"--log {name}: not a tracker; choose from {', '.join(TRACKERS)}")
        _import(name)
    return chosen


def open_loggers(names: Sequence[str], run_dir: str | Path, config: Mapping[str, Any] | None = None) -> list[Any]:
    """A logger per tracker in ``names`` for the run in ``run_dir``; ``config`` (JSON-able) is recorded with the run
    where the tracker keeps one (W&B)."""
    makers = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}
    return [makers[name](Path(run_dir), dict(config or {})) for name in check_trackers(names)]


class _Guarded:
    """A tracker whose failure during training is one warning, after which it is dropped: the run goes on."""

    label = ""

    def log(self, record: Mapping[str, Any]) -> None:
        if self.failed:
            return
        try:
            self._log(record)
        except Exception as error:  # a tracker's network or disk trouble must not end a training run
            self.failed = True
            print(f"warning: --log {self.label} stopped ({type(error).__name__}: {error}); metrics.jsonl goes on",
                  file=sys.stderr)

    failed = False

    def _log(self, record: Mapping[str, Any]) -> None:
        raise NotImplementedError


def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """``train/loss``, ``train/bpb``, ... and ``val/bpb``: the record's numbers under the names trackers show."""
    if "val_bpb" in record:
        return {"val/bpb": record["val_bpb"]}
    return {f"train/{key}": value for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


class TensorBoardLogger(_Guarded):
    """Scalars to TensorBoard event files in ``<run>/tensorboard`` (``tensorboard --logdir runs``)."""

    label = "tensorboard"

    def __init__(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        self.module = _import("tensorboard")
        self.log_dir = run_dir / "tensorboard"
        self.writer = None

    def _log(self, record: Mapping[str, Any]) -> None:
        if self.writer is None:
            self.writer = self.module.SummaryWriter(log_dir=str(self.log_dir))
        for tag, value in _scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbLogger(_Guarded):
    """Each record to a Weights & Biases run named after the run folder (project ``$WANDB_PROJECT``, else
    ``bytemodels``; ``WANDB_MODE=offline`` keeps it on disk)."""

    label = "wandb"

    def __init__(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        self.module = _import("wandb")
        self.run_dir, self.config = run_dir, config
        self.run = None

    def _log(self, record: Mapping[str, Any]) -> None:
        if self.run is None:
            self.run = self.module.init(project=os.environ.get("WANDB_PROJECT", "bytemodels"), name=self.run_dir.name,
                                        dir=str(self.run_dir), config=self.config)
        self.run.log(_scalars(record), step=record["step"])

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
