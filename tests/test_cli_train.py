"""``bytemodels train NAME`` runs a recipe from any folder (the recipes are installed with the package), and
``bytemodels --version`` says which bytemodels this is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import bytemodels
from bytemodels.app.cli import main

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
