"""Model files: ``config.json`` + ``model.safetensors``; never pickle."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bytemodels.config import MegabyteConfig
from bytemodels.distributed import choose_device

if TYPE_CHECKING:
    from bytemodels.model import Megabyte

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ModelFileError(ValueError):
    """A model folder is missing a file, or a file is truncated or does not match its config."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so readers never see half a file."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def save_pretrained(model: "Megabyte", directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    handle, temp = tempfile.mkstemp(dir=directory, prefix=f".{WEIGHTS_FILE}.")
    os.close(handle)
    try:
        save_file(state, temp, metadata={"format": "pt"})
        os.replace(temp, directory / WEIGHTS_FILE)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    atomic_write_bytes(directory / CONFIG_FILE, (model.config.to_json() + "\n").encode())


def load_pretrained(cls: type["Megabyte"], directory: str | Path, map_location) -> "Megabyte":
    directory = Path(directory)
    # A device that is no device, or that this machine lacks, is said so here: inside safetensors' loader it
    # would read as a damaged weights file.
    map_location = choose_device(map_location) if isinstance(map_location, str) else map_location
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ModelFileError(f"{path}: file is missing; a model folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        config = MegabyteConfig.from_json(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, ValueError, TypeError) as error:
        raise ModelFileError(f"{config_path}: not a valid model config ({error})") from None
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{weights_path}: unreadable or truncated weights ({error})") from None
    model = cls(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(name for name in set(expected) & set(state) if expected[name].shape != state[name].shape)
    if missing or unexpected or wrong_shape:
        details = "; ".join(f"{label}: {names[:5]}{' …' if len(names) > 5 else ''}"
                            for label, names in (("missing", missing), ("unexpected", unexpected),
                                                 ("wrong shape", wrong_shape)) if names)
        raise ModelFileError(f"{weights_path}: weights do not match {config_path} ({details})")
    model.load_state_dict(state)
    return model.to(map_location).eval()
