"""Models on the Hugging Face hub through the real ``huggingface_hub`` client: a local stand-in serves its API
(tests/hub_stand_in.py), and a hub cache laid out by a download serves ``HF_HUB_OFFLINE=1``. The client reads
``HF_ENDPOINT`` and ``HF_HOME`` when it is imported, so each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bytemodels import Megabyte, MegabyteConfig, ModelFileError
from bytemodels.hub_models import is_repo_id, model_card, model_folder
from hub_stand_in import stand_in_hub

TINY = dict(dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=64)
PRELUDE = """
import json, sys, torch
from bytemodels import Megabyte, MegabyteConfig
torch.manual_seed(0)
model = Megabyte(MegabyteConfig.preset("tiny", dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=64)).eval()
ids = torch.tensor([[1, 72, 105, 33, 10, 200, 0, 255]])
"""


def run(script: str, home: Path, endpoint: str = "http://127.0.0.1:9", **env: str) -> subprocess.CompletedProcess:
    inherited = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    environment = {**inherited, "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_TOKEN": "hf_stand_in",
                   "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "3", "HF_HUB_DOWNLOAD_TIMEOUT": "3",
                   "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), str(Path(__file__).parent)]),
                   **env}
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(script)], env=environment,
                          capture_output=True, text=True, timeout=120)


def test_push_then_load_by_repo_id_gives_the_same_model_and_then_works_offline(tmp_path):
    with stand_in_hub() as hub:
        done = run("""
            url = model.push_to_hub("org/tiny")
            again = Megabyte.from_pretrained("org/tiny")
            print(json.dumps({"url": url, "same": bool(torch.equal(model(ids).logits, again(ids).logits))}))
        """, tmp_path / "hf", hub.endpoint)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["same"] and result["url"].startswith(f"{hub.endpoint}/org/tiny/commit/")
        files = hub.files("org/tiny")
        assert set(files) == {"config.json", "model.safetensors", "README.md"}
        card = files["README.md"].decode()
        assert card.startswith("---\nlibrary_name: bytemodels\nlicense: mit\ntags:\n- bytemodels\n")
        assert 'Megabyte.from_pretrained("org/tiny")' in card and f"{Megabyte(MegabyteConfig.preset('tiny', **TINY)).num_parameters():,} parameters" in card
    # The hub is gone: offline mode reads the cache the download filled.
    done = run("""
        again = Megabyte.from_pretrained("org/tiny")
        print(bool(torch.equal(model(ids).logits, again(ids).logits)))
    """, tmp_path / "hf", HF_HUB_OFFLINE="1")
    assert done.returncode == 0 and done.stdout.strip().endswith("True"), done.stderr[-3000:]


def test_a_revision_is_downloaded_as_it_was(tmp_path):
    with stand_in_hub() as hub:
        done = run("""
            first = model.push_to_hub("org/tiny").rsplit("/", 1)[1]
            with torch.no_grad():
                model.head.weight.mul_(2)
            model.push_to_hub("org/tiny")
            old = Megabyte.from_pretrained("org/tiny", revision=first)
            new = Megabyte.from_pretrained("org/tiny")
            print(bool(torch.equal(new(ids).logits, model(ids).logits)), bool(torch.equal(old(ids).logits, new(ids).logits)))
        """, tmp_path / "hf", hub.endpoint)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.split()[-2:] == ["True", "False"]


@pytest.mark.parametrize("script, message", [
    ('Megabyte.from_pretrained("org/missing")', "org/missing: no such model on the Hugging Face hub"),
    ('model.push_to_hub("org/tiny"); Megabyte.from_pretrained("org/tiny", revision="v9")',
     "org/tiny (revision v9): the model repo has no such revision"),
])
def test_hub_failures_are_one_line(tmp_path, script, message):
    with stand_in_hub() as hub:
        done = run(f"""
            from bytemodels import ModelFileError
            try:
                {script}
            except ModelFileError as error:
                print("ERROR", error)
        """, tmp_path / "hf", hub.endpoint)
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("ERROR ") and message in line


def test_offline_without_a_cached_copy_is_one_line(tmp_path):
    done = run("""
        from bytemodels import ModelFileError
        try:
            Megabyte.from_pretrained("org/never-downloaded")
        except ModelFileError as error:
            print("ERROR", error)
    """, tmp_path / "hf", HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not in the local hub cache, and the hub cannot be reached" in done.stdout


def test_local_folders_come_first_and_a_run_folder_loads_its_newest_checkpoint(tmp_path, monkeypatch):
    from bytemodels import ByteDataset, TrainConfig, Trainer

    data = ByteDataset.build([bytes(range(200))] * 4, tmp_path / "cache", key={"t": 1}, progress=False)
    config = MegabyteConfig.preset("tiny", **TINY)
    Trainer(config, TrainConfig(out_dir=str(tmp_path / "org" / "run"), batch_size=2, max_steps=2, warmup_steps=1,
                                eval_windows=1, progress=False), data, None).fit()
    # "org/run" is spelled like a repo id, but the folder exists here: it is read, never downloaded.
    monkeypatch.chdir(tmp_path)
    model = Megabyte.from_pretrained("org/run")
    assert model.config == config
    assert model_folder("org/run").name == "step_000002"
    with pytest.raises(ModelFileError, match="revision='v1' is for models on the hub"):
        Megabyte.from_pretrained("org/run", revision="v1")
    with pytest.raises(ModelFileError, match="no such model folder"):
        Megabyte.from_pretrained("no/such/folder")


def test_repo_ids_are_told_from_paths():
    assert is_repo_id("org/name") and is_repo_id("user-1/tiny.v2")
    assert not any(is_repo_id(name) for name in ("name", "a/b/c", "../x", "org/..", "/abs", "org/"))


def test_a_run_card_says_what_the_run_measured():
    card = model_card("org/stories", {"patch_sizes": [8], "dims": [128, 64], "layers": [4, 2], "max_seq_len": 512},
                      1_070_092, metadata={"recipe": "tinystories", "codec": {"name": "text"},
                                           "data": {"path": "/data/tinystories", "val_fraction": 0.05}},
                      state={"best_val_bpb": 1.1812, "step": 11207, "elapsed_s": 1800.0,
                             "command": "python -m recipes.tinystories --time 30m"},
                      samples=["Once upon a time, there was a cat."], pictures=["curve.png"])
    assert "- codec-text" in card and "| validation bits per byte (best) | 1.1812 |" in card
    assert "| steps | 11,207 |" in card and "| training time | 30m 00s |" in card
    assert "python -m recipes.tinystories --time 30m" in card and "![curve](curve.png)" in card
    assert "Once upon a time, there was a cat." in card and 'bytemodels sample org/stories --prompt' in card


def test_bytemodels_push_uploads_a_run_with_its_card_and_sample_reads_it_back(tmp_path):
    """``bytemodels push RUN org/name`` and ``bytemodels sample org/name`` through the stand-in hub."""
    from bytemodels import ByteDataset, TrainConfig, Trainer

    codec = {"name": "text", "strict": False, "normalize": None}
    data = ByteDataset.build([(b"Once upon a time there was a cat. " * 8, 0)] * 6, tmp_path / "cache", key={"t": 2},
                             val_fraction=0.3, progress=False)

    def write_story(model, step, folder):
        (folder / f"step_{step:06d}_0.txt").write_text("Once upon a time, a story.", encoding="utf-8")

    Trainer(MegabyteConfig.preset("tiny", **TINY),
            TrainConfig(out_dir=str(tmp_path / "run"), batch_size=2, max_steps=2, warmup_steps=1, eval_every=1,
                        eval_windows=2, progress=False), data.train, data.val, sample_fn=write_story,
            metadata={"recipe": "tinystories", "codec": codec, "layout": "packed"}).fit()
    with stand_in_hub() as hub:
        done = run(f"""
            from bytemodels.cli import main
            codes = [main(["push", {str(tmp_path / "run")!r}, "org/stories"]),
                     main(["sample", "org/stories", "--prompt", "Once", "--max-bytes", "5", "--seed", "1", "--quiet",
                           "-o", {str(tmp_path / "story.txt")!r}])]
            print(codes)
        """, tmp_path / "hf", hub.endpoint)
        assert done.returncode == 0 and done.stdout.strip().endswith("[0, 0]"), done.stdout + done.stderr[-3000:]
        files = hub.files("org/stories")
    assert set(files) == {"config.json", "model.safetensors", "metadata.json", "README.md", "curve.png"}
    assert json.loads(files["metadata.json"])["codec"] == codec
    card = files["README.md"].decode()
    assert "| validation bits per byte (best) |" in card and "Once upon a time, a story." in card
    assert "![curve](curve.png)" in card and "- codec-text" in card
    assert (tmp_path / "story.txt").read_bytes().startswith(b"Once")


def test_pushing_somewhere_that_is_no_repo_id_is_one_line(tmp_path, capsys):
    from bytemodels.cli import main

    model = Megabyte(MegabyteConfig.preset("tiny", **TINY))
    model.save_pretrained(tmp_path / "model")
    assert main(["push", str(tmp_path / "model"), "not a repo"]) == 2
    assert capsys.readouterr().err.strip() == ("bytemodels: error: 'not a repo' is not a hub repo id; write it as "
                                               "org/name (or user/name)")
