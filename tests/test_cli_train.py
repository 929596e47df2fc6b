"""``bytemodels train NAME`` runs a recipe from any folder (the recipes are installed with the package), and
``bytemodels --version`` says which bytemodels this is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import bytemodels
from bytemodels.cli import main

SHARED_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"
TINY_FLAGS = ["--preset", "tiny", "--dims", "32,16", "--layers", "1,1", "--heads", "2,1", "--max-seq-len", "64",
              "--batch-size", "2", "--eval-windows", "2", "--no-compile"]


def test_version(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out.strip() == f"bytemodels {bytemodels.__version__}"


def test_train_runs_a_recipe_from_another_folder_and_names_itself(tmp_path):
    data = tmp_path / "stories.txt"
    data.write_text("\n<|endoftext|>\n".join(f"Once upon a time there were {n} cats." for n in range(40)),
                    encoding="utf-8")
    # A fresh interpreter in a folder that is not the checkout: `recipes` comes from the installed package.
    done = subprocess.run([sys.executable, "-m", "bytemodels", "train", "tinystories", "--data", str(data),
                           "--out", "run", "--max-steps", "2", *TINY_FLAGS], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "step_000002").is_dir()
    assert "write more stories: bytemodels train tinystories sample --checkpoint run" in done.stdout
    refused = subprocess.run([sys.executable, "-m", "bytemodels", "train", "tinystories", "--bogus"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].startswith("bytemodels train tinystories: error:")


def test_train_refuses_an_unknown_recipe(capsys):
    with pytest.raises(SystemExit):
        main(["train", "poetry"])
    assert "invalid choice: 'poetry'" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["tinystories", "audio", "images", "mixed"])
def test_help_shows_the_values_a_run_takes_on_this_machine(recipe, capsys):
    """A flag's help shows the recipe's default for this kind of device (and its preset's fields), not the
    dataclass default: what a run without the flag will use."""
    import importlib

    from bytemodels import MegabyteConfig, TrainConfig
    from bytemodels.distributed import choose_device

    module = importlib.import_module(f"recipes.{recipe}")
    chosen = module.DEVICE_DEFAULTS["gpu" if choose_device("auto").type == "cuda" else "cpu"]
    with pytest.raises(SystemExit):
        module.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("lr", "batch_size", "warmup_steps"):
        value = chosen.get(name, getattr(TrainConfig(), name))
        assert f"--{name.replace('_', '-')} {name.upper()} " in text
        assert f"(default: {value})" in text.split(f"--{name.replace('_', '-')} {name.upper()} ")[1][:300], name
    preset = MegabyteConfig.preset(chosen["preset"], **chosen.get("model", {}),
                                   **{k: v for k, v in chosen.items() if k in MegabyteConfig.__dataclass_fields__})
    dims = ",".join(str(d) for d in preset.dims)
    assert f"(default: {dims})" in text.split("--dims A,B,... ")[1][:200]
    assert f"(default: {preset.max_seq_len})" in text.split("--max-seq-len MAX_SEQ_LEN ")[1][:200]
