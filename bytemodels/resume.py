"""What resuming a run checks against its checkpoint: the model and the optimizer must be the same (an error); the
data and the global batch should be (a warning, since the run still trains but will not match the one it continues)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def check_model_config(checkpoint: Path, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the fields that differ when the checkpoint's model config is not ``current``."""
    if recorded == current:
        return
    changed = sorted(key for key in set(recorded) | set(current) if recorded.get(key) != current.get(key))
    raise ValueError(f"{checkpoint}: checkpoint has a different model config ({', '.join(changed)}); "
                     "resume with the config it was trained with (Trainer.resume reads it)")


def check_optimizer(checkpoint: Path, recorded_train_config: dict[str, Any], optimizer: str) -> None:
    """Raise ``ValueError`` when the checkpoint was trained with another optimizer than ``optimizer``: the state of
    one cannot continue the other. Checkpoints from before the field was recorded were trained with AdamW."""
    recorded = recorded_train_config.get("optimizer", "adamw")
    if recorded != optimizer:
        raise ValueError(f"{checkpoint}: checkpoint was trained with optimizer={recorded!r}, not {optimizer!r}; "
                         f"resume with optimizer={recorded!r}")


def warn_if_data_changed(checkpoint: Path, recorded: dict[str, Any], datasets: dict[str, Any]) -> None:
    """Warn for each data set (by name) whose ``fingerprint`` differs from the one the checkpoint recorded."""
    for name, data in datasets.items():
        before, now = recorded.get(name), getattr(data, "fingerprint", None)
        if before and now and before != now:
            warnings.warn(f"{checkpoint}: the {name} data differs from the checkpoint's ({before} vs {now}); "
                          "the resumed run will not match the original", RuntimeWarning, stacklevel=3)


def warn_if_batch_changed(checkpoint: Path, recorded_batch: int | None, batch_size: int, grad_accum: int,
                          processes: int) -> None:
    """Warn when the global batch (batch_size x grad_accum x processes) is not the recorded one, saying which
    grad_accum gets it back with this many processes when one does."""
    batch = batch_size * grad_accum * processes
    if recorded_batch == batch:
        return
    keep = ""
    per_process = batch_size * processes
    if recorded_batch and recorded_batch % per_process == 0:
        keep = (f"; to keep it with {processes} process(es), set grad_accum={recorded_batch // per_process} "
                f"(batch_size {batch_size})")
    warnings.warn(f"{checkpoint}: global batch changed from {recorded_batch} to {batch} "
                  f"(batch_size x grad_accum x processes){keep}; the resumed run will not match the original",
                  RuntimeWarning, stacklevel=3)
