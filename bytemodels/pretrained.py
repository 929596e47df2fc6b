"""Model files: ``config.json`` + ``model.safetensors``; never pickle."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from bytemodels.config import MegabyteConfig
from bytemodels.distributed import choose_device
from bytemodels.runfolder import atomic_file, atomic_write

if TYPE_CHECKING:
    from bytemodels.model import Megabyte

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ModelFileError(ValueError):
    """A model folder is missing a file, or a file is truncated or does not match its config."""


def save_pretrained(model: "Megabyte", directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    with atomic_file(directory / WEIGHTS_FILE) as temp:
        save_file(state, temp, metadata={"format": "pt"})
    atomic_write(directory / CONFIG_FILE, model.config.to_json() + "\n")


def read_config(path: Path) -> MegabyteConfig:
    """A folder's ``config.json``; a file that is not JSON, or whose values are wrong or beyond the config's
    limits, raises ``ModelFileError`` naming it (before anything is allocated for the model)."""
    try:
        return MegabyteConfig.load(path)
    except ValueError as error:  # the message names the file
        raise ModelFileError(str(error)) from None


def weights_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in a safetensors file, read from its header alone."""
    try:
        with safe_open(str(path), framework="pt") as file:
            return {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: unreadable or truncated weights ({error})") from None


def check_weights(cls: type["Megabyte"], config: MegabyteConfig, config_path: Path, weights_path: Path
                  ) -> dict[str, tuple[int, ...]]:
    """The weights file's header (name → shape), checked against the shapes ``config`` implies; raises
    ``ModelFileError`` naming both files where they differ. Reads no tensor and allocates no weight: the block
    counts are compared first, then a model built on the meta device gives the expected shapes."""
    shapes = weights_header(weights_path)
    for stage, layers in enumerate(config.layers):
        prefix = f"stages.{stage}.transformer.blocks."
        found = len({name[len(prefix):].split(".")[0] for name in shapes if name.startswith(prefix)})
        if found != layers:
            raise ModelFileError(f"{weights_path}: weights do not match {config_path} (stage {stage} has {found} "
                                 f"blocks where the config says layers={list(config.layers)})")
    import torch

    with torch.device("meta"):
        expected = {name: tuple(tensor.shape) for name, tensor in cls(config).state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong_shape = sorted(name for name in set(expected) & set(shapes) if expected[name] != shapes[name])
    if missing or unexpected or wrong_shape:
        details = "; ".join(f"{label}: {names[:5]}{' …' if len(names) > 5 else ''}"
                            for label, names in (("missing", missing), ("unexpected", unexpected),
                                                 ("wrong shape", wrong_shape)) if names)
        raise ModelFileError(f"{weights_path}: weights do not match {config_path} ({details})")
    return shapes


def load_pretrained(cls: type["Megabyte"], directory: str | Path, map_location, *, verify: bool = True,
                    revision: str | None = None) -> "Megabyte":
    """See ``Megabyte.from_pretrained``. A training checkpoint's files are first checked against the sizes and
    SHA-256 its ``trainer_state.json`` recorded (``verify=False``: the caller has just done so)."""
    from bytemodels.hub_models import model_folder

    folder = model_folder(directory, revision)
    verify = verify and folder == Path(directory)  # a run folder's checkpoint was checked as it was found
    directory = folder
    # A device that is no device, or that this machine lacks, is said so here: inside safetensors' loader it
    # would read as a damaged weights file.
    map_location = choose_device(map_location) if isinstance(map_location, str) else map_location
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ModelFileError(f"{path}: file is missing; a model folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    if verify:
        verify_model_files(directory)
    config = read_config(config_path)
    check_weights(cls, config, config_path, weights_path)
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{weights_path}: unreadable or truncated weights ({error})") from None
    model = cls(config)
    model.load_state_dict(state)
    return model.to(map_location).eval()


def verify_model_files(directory: Path) -> None:
    """Where ``directory`` is a training checkpoint (it has a ``trainer_state.json``), check its model files
    against the recorded sizes and SHA-256; a plain ``save_pretrained`` folder records none."""
    from bytemodels.checkpoint import STATE_FILE, verify_checkpoint

    if (directory / STATE_FILE).is_file():
        verify_checkpoint(directory, only=(CONFIG_FILE, WEIGHTS_FILE))
