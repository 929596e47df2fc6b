"""Models on the Hugging Face hub: find a model folder by path or repo id, and upload one with a model card.

``Megabyte.from_pretrained`` takes a local model folder, a training checkpoint or run folder, or a hub repo id
(``"org/name"``, with an optional ``revision``); a repo id is downloaded through ``huggingface_hub``'s client and
cache, so a second load reads the cache and ``HF_HUB_OFFLINE=1`` works from it. ``push_folder`` uploads a model
folder (``config.json``, ``model.safetensors``, the codec's ``metadata.json``) with a generated ``README.md``.
Every failure (no such repo or revision, no network, not logged in) is a ``HubModelError``: one line.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bytemodels.pretrained import CONFIG_FILE, WEIGHTS_FILE, ModelFileError

METADATA_FILE = "metadata.json"
CARD_FILE = "README.md"
#: What a model repo holds: enough to load the model and rebuild its codec, and the card.
HUB_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE, CARD_FILE)
#: ``org/name`` as the hub spells repo ids (one slash, no spaces, no ``..``).
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


class HubModelError(ModelFileError):
    """A model could not be downloaded from or uploaded to the Hugging Face hub; the message says why in one line."""


def is_repo_id(name: str) -> bool:
    """Whether ``name`` is spelled like a hub repo id (``org/name``)."""
    return bool(_REPO_ID.match(name)) and ".." not in name


def model_folder(name_or_path: str | Path, revision: str | None = None) -> Path:
    """The local folder holding ``config.json`` and ``model.safetensors`` for ``name_or_path``.

    A model folder is itself; a training checkpoint, run folder or checkpoints folder gives its newest
    checkpoint (its model files verified against their recorded checksums); anything else spelled ``org/name``
    is downloaded from the hub at ``revision`` (default: main) into the hub cache."""
    from bytemodels.checkpoint import CHECKPOINTS_DIR, STATE_FILE, resolve_checkpoint

    path = Path(name_or_path)
    if path.exists():
        if revision is not None:
            raise ModelFileError(f"{path}: revision={revision!r} is for models on the hub; this is a local folder")
        if (path / WEIGHTS_FILE).is_file() or not ((path / STATE_FILE).is_file() or (path / CHECKPOINTS_DIR).is_dir()
                                                   or any(path.glob("step_*"))):
            return path  # a model folder (load_pretrained names a missing file)
        return resolve_checkpoint(path, only=(CONFIG_FILE, WEIGHTS_FILE))
    if isinstance(name_or_path, str) and is_repo_id(name_or_path):
        return download(name_or_path, revision)
    raise ModelFileError(f"{path}: no such model folder (nor a hub repo id such as org/name)")


def download(repo_id: str, revision: str | None = None) -> Path:
    """Download (or find in the hub cache) the model files of ``repo_id`` at ``revision``; returns their folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(HUB_FILES)))
    except RevisionNotFoundError:
        raise HubModelError(f"{where}: the model repo has no such revision on the Hugging Face hub") from None
    except GatedRepoError:
        raise HubModelError(f"{where}: the model is gated; accept its terms on the hub and log in "
                            "(hf auth login)") from None
    except RepositoryNotFoundError:
        raise HubModelError(f"{where}: no such model on the Hugging Face hub (or it is private: log in with "
                            "hf auth login)") from None
    except LocalEntryNotFoundError:
        raise HubModelError(f"{where}: not in the local hub cache, and the hub cannot be reached (offline mode, "
                            "or no network)") from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise HubModelError(f"{where}: download from the Hugging Face hub failed ({_first_line(error)})") from None
    if not (folder / WEIGHTS_FILE).is_file():
        raise HubModelError(f"{where}: the repo has no {WEIGHTS_FILE}; it is not a bytemodels model")
    return folder


def push_folder(folder: str | Path, repo_id: str, *, card: str, extra_files: Mapping[str, Path] = {},
                private: bool = False, token: str | None = None, revision: str | None = None,
                commit_message: str = "Upload bytemodels model") -> str:
    """Upload the model files of ``folder`` (``config.json``, ``model.safetensors`` and ``metadata.json`` when
    present), the model ``card`` as ``README.md`` and ``extra_files`` (name in the repo -> local file, e.g. the
    training curve) to the model repo ``repo_id``, creating it if needed; returns the commit's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not is_repo_id(repo_id):
        raise HubModelError(f"{repo_id!r} is not a hub repo id; write it as org/name (or user/name)")
    folder = Path(folder)
    with tempfile.TemporaryDirectory() as staging:
        staged = Path(staging)
        for name in (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE):
            if (folder / name).is_file():
                shutil.copyfile(folder / name, staged / name)
        for name, path in extra_files.items():
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, staged / name)
        (staged / CARD_FILE).write_text(card, encoding="utf-8")
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            commit = api.upload_folder(repo_id=repo_id, folder_path=staged, revision=revision,
                                       commit_message=commit_message, repo_type="model")
        except (HfHubHTTPError, OSError, ValueError) as error:
            raise HubModelError(f"{repo_id}: upload to the Hugging Face hub failed ({_first_line(error)})") from None
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# -- the model card ----------------------------------------------------------------------------------------------
def model_card(repo_id: str, config: Mapping[str, Any], parameters: int, *, metadata: Mapping[str, Any] | None = None,
               state: Mapping[str, Any] | None = None, train_config: Mapping[str, Any] | None = None,
               samples: Sequence[str] = (), pictures: Sequence[str] = (), license: str = "mit") -> str:
    """A ``README.md`` for a model repo: YAML front matter (library, license, tags), what the model is, how to load
    it, and what its training recorded (validation bits/byte, data, command, samples, pictures)."""
    metadata, state, train_config = metadata or {}, state or {}, train_config or {}
    codecs = metadata.get("codecs") or ({"": metadata["codec"]} if metadata.get("codec") else {})
    modalities = sorted({str(codec.get("name")) for codec in codecs.values() if isinstance(codec, Mapping)})
    tags = ["bytemodels", "megabyte", "byte-level"] + [f"codec-{name}" for name in modalities]
    lines = ["---", "library_name: bytemodels", f"license: {license}", "tags:"]
    lines += [f"- {tag}" for tag in tags]
    lines += ["---", "", f"# {repo_id.split('/')[-1]}", "",
              f"A byte-level MEGABYTE model trained with [bytemodels](https://pypi.org/project/bytemodels/): "
              f"{parameters:,} parameters, patches of {list(config.get('patch_sizes', []))} bytes, "
              f"stage widths {list(config.get('dims', []))} and depths {list(config.get('layers', []))}, "
              f"a window of {config.get('max_seq_len')} bytes.", "",
              "## Use it", "", "```python", "from bytemodels import Megabyte", "",
              f'model = Megabyte.from_pretrained("{repo_id}")',
              'print(model.generate(b"Once upon a time", 200, temperature=0.8, top_k=50))' if "text" in modalities
              or not modalities else "# model.generate(...) returns bytes; the codec below turns them into files",
              "```", "", "```bash", f"bytemodels sample {repo_id}" + (' --prompt "Once upon a time"'
                                                                     if "text" in modalities else ""), "```", ""]
    lines += ["## Training", "", "| what | value |", "| --- | --- |"]
    rows = [("validation bits per byte (best)", _number(state.get("best_val_bpb"))),
            ("validation bits per byte (last)", _number(state.get("last_val_bpb"))),
            ("steps", _count(state.get("step"))), ("bytes seen", _count(state.get("bytes_seen"))),
            ("training time", _duration(state.get("elapsed_s"))),
            ("recipe", metadata.get("recipe")), ("data", _data(metadata.get("data"))),
            ("codec", ", ".join(json.dumps(codec) for codec in codecs.values()) or None),
            ("learning rate", train_config.get("lr")), ("batch", train_config.get("batch_size"))]
    lines += [f"| {label} | {value} |" for label, value in rows if value not in (None, "")]
    if state.get("command"):
        lines += ["", "Trained with:", "", "```bash", str(state["command"]), "```"]
    for picture in pictures:
        lines += ["", f"![{Path(picture).stem}]({picture})"]
    if samples:
        lines += ["", "## Samples", ""]
        for sample in samples:
            lines += ["```text", sample.replace("```", "'''"), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _number(value: Any) -> str | None:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else None


def _count(value: Any) -> str | None:
    return f"{value:,}" if isinstance(value, int) else None


def _duration(seconds: Any) -> str | None:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return None
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m {secs:02d}s"


def _data(data: Any) -> str | None:
    if not isinstance(data, Mapping):
        return None
    shown = {key: value for key, value in data.items() if value not in (None, "", [], {})}
    return ", ".join(f"{key}={value}" for key, value in shown.items()) or None


# -- what gets pushed ------------------------------------------------------------------------------------------
def push_model(model: Any, repo_id: str, **options: Any) -> str:
    """``Megabyte.push_to_hub``: upload the model's files and a card describing it; returns the commit's URL."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        card = model_card(repo_id, model.config.to_dict(), model.num_parameters())
        return push_folder(folder, repo_id, card=card, **options)


#: Pictures a recipe leaves in a step's samples folder, shown in the card under these names.
SAMPLE_PICTURES = ("grid.png", "spectrograms.png")
#: How many text samples a card shows, and how much of each.
CARD_SAMPLES, CARD_SAMPLE_CHARS = 3, 1500


def push_run(run: str | Path, repo_id: str, **options: Any) -> str:
    """Upload a training run (a run folder or one of its checkpoints): the best checkpoint's model files and codec
    metadata (else the newest), and a card with its validation bits/byte, data, command, text samples, training
    curve and the recipe's sample pictures; returns the commit's URL."""
    from bytemodels.checkpoint import BEST_DIR, STATE_FILE, checkpoints_root, load_checkpoint

    if not is_repo_id(repo_id):
        raise HubModelError(f"{repo_id!r} is not a hub repo id; write it as org/name (or user/name)")
    run = Path(run)
    if (run / WEIGHTS_FILE).is_file() and not (run / STATE_FILE).is_file():  # a save_pretrained folder
        from bytemodels.model import Megabyte

        return push_model(Megabyte.from_pretrained(run), repo_id, **options)
    root = checkpoints_root(run)
    best = root / BEST_DIR
    checkpoint = load_checkpoint(best if best.is_dir() and not (run / "trainer_state.json").is_file() else run)
    run_dir = root.parent if root.name == "checkpoints" else run
    samples_dir = run_dir / "samples"
    extra: dict[str, Path] = {}
    if (run_dir / "curve.png").is_file():
        extra["curve.png"] = run_dir / "curve.png"
    steps = sorted(samples_dir.glob("step_*")) if samples_dir.is_dir() else []
    last_step = max((path.name.split("_")[1] for path in steps), default=None)
    texts = []
    if last_step is not None:
        for path in sorted(samples_dir.glob(f"step_{last_step}*")):
            if path.is_file() and path.suffix == ".txt" and len(texts) < CARD_SAMPLES:
                texts.append(path.read_text(encoding="utf-8", errors="replace")[:CARD_SAMPLE_CHARS])
            if path.is_dir():
                for picture in SAMPLE_PICTURES:
                    if (path / picture).is_file():
                        extra[f"samples_{picture}"] = path / picture
    from bytemodels.config import MegabyteConfig
    from bytemodels.model import Megabyte

    import torch

    with torch.device("meta"):  # count the parameters without allocating them
        parameters = Megabyte(MegabyteConfig.from_dict(checkpoint.model_config)).num_parameters()
    metadata = checkpoint.metadata if isinstance(checkpoint.metadata, dict) else {}
    card = model_card(repo_id, checkpoint.model_config, parameters, metadata=metadata, state=checkpoint.state,
                      train_config=checkpoint.train_config, samples=texts, pictures=sorted(extra))
    return push_folder(checkpoint.path, repo_id, card=card, extra_files=extra, **options)
