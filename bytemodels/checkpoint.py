"""Training checkpoints: safetensors and JSON (plus an optimizer file read with ``weights_only``), never pickle.

A run folder holds ``checkpoints/``::

    checkpoints/
        step_000500/            one checkpoint (Megabyte.from_pretrained reads it as a model folder)
            config.json         model config           }  exactly what Megabyte.save_pretrained
            model.safetensors   weights                }  writes
            optimizer.pt        AdamW state (torch.load(weights_only=True))
            rng.safetensors     torch RNG states (uint8 tensors)
            train_config.json   the TrainConfig
            metadata.json       the caller's opaque metadata (e.g. the codec config)
            trainer_state.json  step, bytes seen, best val bits/byte, data position, numpy/python RNG,
                                and the size and SHA-256 of every other file (written last)
        best/                   hard-linked copy of the checkpoint with the best validation bits/byte
        latest                  text file naming the newest checkpoint folder

Each checkpoint is written into a temporary folder and renamed into place, so a folder named
``step_*`` is always complete; a truncated or altered file is caught by its recorded size and hash. A write
that fails (disk full, read-only) raises ``RunFolderError`` naming the file and leaves the previous checkpoint
as it was; what a killed writer left (``.step_*.tmp-*``, ``.best.tmp-*``, ``.*.old-*``) is removed by
``remove_partial_writes`` when the next owner of the run folder starts.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bytemodels.jsonfile import read_json
from bytemodels.runfolder import atomic_write, disk_error, file_sha256, remove_leftovers, write_error, writing


CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"
TRAIN_CONFIG_FILE = "train_config.json"
METADATA_FILE = "metadata.json"
MODEL_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LATEST_FILE = "latest"
BEST_DIR = "best"
#: The checkpoint format written and read. 2: the model format of ``config.MODEL_FORMAT`` 2 (format 1 held models
#: whose config had switches that are now fixed, so an older checkpoint is refused in one line).
FORMAT_VERSION = 2
_STEP_DIR = re.compile(r"^step_(\d+)$")
# Temporary names of writes in progress: checkpoint and best/ folders, folders being replaced, the latest pointer.
_PARTIAL_WRITE = r"\.(step_\d+|best)\.(tmp|old)-|\.latest\."


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupted; the message names the file."""


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _fsync(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    except OSError:  # folders cannot be synced on some platforms; renames stay atomic regardless
        pass
    finally:
        os.close(handle)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _replace_dir(temp: Path, final: Path) -> None:
    """Move the finished folder ``temp`` to ``final``, replacing an older folder of that name."""
    if final.exists():
        trash = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
        os.rename(final, trash / final.name)
        os.rename(temp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(temp, final)
    _fsync(final.parent)


def save_checkpoint(root: str | Path, step: int, *, write_model: Callable[[Path], None],
                    optimizer_state: dict, rng_tensors: dict[str, torch.Tensor], state: dict[str, Any],
                    train_config: dict[str, Any], metadata: dict[str, Any] | None) -> Path:
    """Write checkpoint ``step`` into ``root`` atomically and point ``latest`` at it; returns its folder.

    ``write_model(folder)`` writes ``config.json`` and ``model.safetensors`` (``model.save_pretrained``)."""
    root = Path(root)
    name = step_dir_name(step)
    with writing(root, f"creating checkpoint {name}"):
        root.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.tmp-"))
    doing = f"writing {WEIGHTS_FILE}"  # named in the error if the disk fails
    try:
        write_model(temp)
        doing = f"writing {OPTIMIZER_FILE}"
        with open(temp / OPTIMIZER_FILE, "wb") as file:  # a file object: a full disk is an OSError with errno
            torch.save(optimizer_state, file)
        doing = f"writing {RNG_FILE}"
        save_file({key: value.contiguous().cpu() for key, value in rng_tensors.items()}, str(temp / RNG_FILE))
        doing = f"writing {TRAIN_CONFIG_FILE}"
        _write_json(temp / TRAIN_CONFIG_FILE, train_config)
        doing = f"writing {METADATA_FILE}"
        _write_json(temp / METADATA_FILE, metadata)
        files = {}
        for path in sorted(temp.iterdir()):
            _fsync(path)
            files[path.name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        doing = f"writing {STATE_FILE}"
        _write_json(temp / STATE_FILE, {"format": FORMAT_VERSION, **state, "step": step, "files": files})
        _fsync(temp / STATE_FILE)
        _fsync(temp)
        doing = "renaming it into place"
        _replace_dir(temp, root / name)
    except Exception as error:
        shutil.rmtree(temp, ignore_errors=True)
        cause = disk_error(error)
        if cause is None:
            raise
        if doing.startswith("writing") and getattr(cause, "filename", None):  # the file that failed
            doing = f"writing {Path(cause.filename).name}"
        raise write_error(root, cause, f"{doing} of checkpoint {name}") from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    with writing(root, f"writing {LATEST_FILE}"):
        atomic_write(root / LATEST_FILE, name + "\n")
    return root / name


def update_best(root: str | Path, checkpoint: str | Path) -> Path:
    """Make ``root/best`` a copy of ``checkpoint`` (hard links where possible, so it costs no space)."""
    root, checkpoint = Path(root), Path(checkpoint)
    with writing(root, f"writing {BEST_DIR}/"):
        temp = Path(tempfile.mkdtemp(dir=root, prefix=f".{BEST_DIR}.tmp-"))
        try:
            for path in checkpoint.iterdir():
                try:
                    os.link(path, temp / path.name)
                except OSError:
                    shutil.copy2(path, temp / path.name)
            _replace_dir(temp, root / BEST_DIR)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
    return root / BEST_DIR


def remove_partial_writes(root: str | Path) -> list[str]:
    """Delete the temporary folders and files a killed checkpoint write left in ``root`` (``.step_*.tmp-*``,
    ``.best.tmp-*``, ``.*.old-*``, ``.latest.*``); returns their names. Only the run folder's owner calls it."""
    return remove_leftovers(root, _PARTIAL_WRITE)


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete ``step_*`` checkpoints under ``root`` as (step, folder), oldest first."""
    root = Path(root)
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and (path / STATE_FILE).is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def prune_checkpoints(root: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` step checkpoints (``best/`` is separate and stays)."""
    if keep_last < 1:
        return
    for _, path in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def checkpoints_root(path: str | Path) -> Path:
    """The ``checkpoints`` folder of a run folder (or ``path`` itself when it is one)."""
    path = Path(path)
    return path / CHECKPOINTS_DIR if (path / CHECKPOINTS_DIR).is_dir() else path


def latest_checkpoint(path: str | Path) -> Path | None:
    """The newest complete checkpoint of a run folder or checkpoints folder, or None."""
    root = checkpoints_root(path)
    pointer = root / LATEST_FILE
    if pointer.is_file():
        named = root / pointer.read_text(encoding="utf-8").strip()
        if (named / STATE_FILE).is_file():
            return named
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | Path, only: Collection[str] | None = None) -> Path:
    """A checkpoint folder from a checkpoint folder, a run folder or a checkpoints folder.

    The checkpoint is verified (the files named in ``only``, or all); if it is damaged the error names the
    file and the newest intact earlier checkpoint to resume from instead."""
    path = Path(path)
    checkpoint = path if (path / STATE_FILE).is_file() else latest_checkpoint(path)
    if checkpoint is None:
        raise CheckpointError(f"{path}: no complete checkpoint found "
                              f"(looked for {CHECKPOINTS_DIR}/step_*/{STATE_FILE})")
    try:
        verify_checkpoint(checkpoint, only)
    except CheckpointError as error:
        intact = next((p for _, p in reversed(list_checkpoints(checkpoint.parent))
                       if p != checkpoint and _intact(p, only)), None)
        hint = f"; checkpoint {intact} is intact: resume from it" if intact else ""
        raise CheckpointError(f"{error}{hint}") from None
    return checkpoint


def _intact(path: Path, only: Collection[str] | None = None) -> bool:
    try:
        verify_checkpoint(path, only)
    except CheckpointError:
        return False
    return True


def read_state(path: str | Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint folder."""
    state_path = Path(path) / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"{state_path}: file is missing; this folder is not a complete checkpoint")
    state = read_json(state_path, CheckpointError)
    found = state.get("format") if isinstance(state, dict) else None
    if type(found) is int and 0 < found < FORMAT_VERSION:
        raise CheckpointError(f"{state_path}: written by an older bytemodels (checkpoint format {found}; this release "
                              f"reads format {FORMAT_VERSION}): retrain, or use the bytemodels release that wrote it")
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or not _valid_files(state.get("files")):
        raise CheckpointError(f"{state_path}: not a format-{FORMAT_VERSION} trainer state; the checkpoint is corrupted")
    return state


def _valid_files(files: Any) -> bool:
    """Whether a trainer state's ``files`` is {plain file name: {"bytes": int, "sha256": str}}."""
    return isinstance(files, dict) and all(
        isinstance(entry, dict) and Path(name).name == name and name not in ("", ".", "..")
        and type(entry.get("bytes")) is int and isinstance(entry.get("sha256"), str)
        for name, entry in files.items())


def verify_checkpoint(path: str | Path, only: Collection[str] | None = None) -> dict[str, Any]:
    """Check every file of a checkpoint (or those named in ``only``) against the size and SHA-256 recorded when
    it was written.

    Returns the trainer state; raises ``CheckpointError`` naming the first missing or damaged file. A file in
    ``only`` that the state records nothing for is refused too: its contents could not be trusted."""
    path = Path(path)
    state = read_state(path)
    recorded = state["files"]
    for name in only or ():
        if name not in recorded:
            raise CheckpointError(f"{path / STATE_FILE}: records no checksum for {name}; the checkpoint is corrupted")
    for name, expected in recorded.items():
        if only is not None and name not in only:
            continue
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: file is missing from the checkpoint")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"{file}: {size} bytes where the checkpoint recorded {expected['bytes']} "
                                  "(truncated or overwritten)")
        if file_sha256(file) != expected["sha256"]:
            raise CheckpointError(f"{file}: contents do not match the checksum recorded in {STATE_FILE} (corrupted)")
    return state


@dataclass
class Checkpoint:
    """A verified checkpoint folder and its JSON parts; tensors are loaded on demand."""

    path: Path
    state: dict[str, Any]
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    metadata: Any

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def model_state(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        file = self.path / WEIGHTS_FILE
        try:
            return load_file(str(file), device=str(device))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{file}: unreadable weights ({error})") from None

    def optimizer_state(self, device: str | torch.device = "cpu") -> dict:
        file = self.path / OPTIMIZER_FILE
        try:  # weights_only: tensors and plain containers only, never arbitrary objects
            return torch.load(file, map_location=device, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as error:
            raise CheckpointError(f"{file}: unreadable or unsafe optimizer state ({error})") from None

    def rng_tensors(self) -> dict[str, torch.Tensor]:
        file = self.path / RNG_FILE
        try:
            return load_file(str(file))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{file}: unreadable RNG state ({error})") from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Resolve (run folder, checkpoints folder or checkpoint folder), verify and read a checkpoint."""
    path = resolve_checkpoint(path)
    state = read_state(path)
    parts = []
    for name in (MODEL_CONFIG_FILE, TRAIN_CONFIG_FILE, METADATA_FILE):
        parts.append(read_json(path / name, CheckpointError))
    return Checkpoint(path, state, *parts)


# -- opening a checkpoint to use its model (sampling, evaluating, inspecting) ------------------------------------
MODEL_FILES = ("config.json", "model.safetensors", "metadata.json")
"""The files of a checkpoint that sampling, evaluating and inspecting read: verified against their checksums."""


def open_checkpoint(path: str | Path, revision: str | None = None) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(checkpoint folder, metadata, trainer state) for a checkpoint or run folder, a model folder, or a model on
    the Hugging Face hub (``org/name`` at ``revision``, downloaded into the hub cache).

    A checkpoint's model files are checked against the sizes and SHA-256 its trainer state recorded; a
    metadata.json whose codec entries or layout have the wrong type is refused. Every problem is a
    ``CheckpointError`` naming the folder or file. A model folder (``save_pretrained``) has no metadata or
    state: both are ``{}``."""
    from bytemodels.hub_models import download, is_repo_id

    folder = Path(path)
    if not folder.exists():
        if not is_repo_id(str(path)):
            raise CheckpointError(f"{path}: no such checkpoint folder (nor a hub model id such as org/name)")
        folder = download(str(path), revision)
    elif revision is not None:
        raise CheckpointError(f"{path}: --revision is for models on the hub; this is a local folder")
    if (folder / STATE_FILE).is_file() or not (folder / "model.safetensors").is_file():
        folder = resolve_checkpoint(folder, only=MODEL_FILES)
    metadata = _read_json_object(folder / METADATA_FILE, allow_null=True)
    _check_metadata(metadata, folder / METADATA_FILE)
    state = _read_json_object(folder / STATE_FILE)
    return folder, metadata, state


def _read_json_object(path: Path, allow_null: bool = False) -> dict[str, Any]:
    """A JSON object file, {} where the file is absent (or holds null, where allowed)."""
    if not path.is_file():
        return {}
    value = read_json(path, CheckpointError)
    if value is None and allow_null:  # a checkpoint saved without metadata records null
        return {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: not a JSON object (found a {type(value).__name__})")
    return value


def _check_metadata(metadata: dict[str, Any], path: Path) -> None:
    """Refuse a metadata.json whose codec entries or layout have the wrong type, naming the file."""
    codec, several, layout = metadata.get("codec"), metadata.get("codecs"), metadata.get("layout", "packed")
    configs = [codec] if codec is not None else []
    if several is not None:
        if not isinstance(several, dict):
            raise CheckpointError(f"{path}: 'codecs' must map modality names to codec configs, not {several!r}")
        configs += list(several.values())
    for config in configs:
        if not isinstance(config, dict) or not isinstance(config.get("name"), str):
            raise CheckpointError(f"{path}: a codec config must be an object with a 'name' string, not {config!r}")
    if layout not in ("packed", "records"):
        raise CheckpointError(f"{path}: layout must be 'packed' or 'records', not {layout!r}")


def load_model(folder: Path, device: str) -> Any:
    """The model of a folder from ``open_checkpoint`` (which verified its checksums), in eval mode."""
    from bytemodels.model import Megabyte
    from bytemodels.pretrained import load_pretrained

    # As from_pretrained: checks the device (auto included) and the config against the weights first.
    return load_pretrained(Megabyte, folder, map_location=device, verify=False)
