"""What the command line adds to the Python API: image arrays for eval and encode, self-describing encoded files,
codec options listed, sample --stop/--force, chat through a pipe, and --log trackers."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile

import bytecodecs
from bytemodels import ByteDataset, MegabyteConfig, TrainConfig, Trainer
from bytemodels.cli import main

STORIES = [f"Once upon a time there was a dog number {i}. The dog liked to run." for i in range(40)]
TINY = dict(dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=64)


def train_tiny(root: Path, documents, metadata, layout="packed", patch_sizes=None) -> Path:
    dataset = ByteDataset.build(documents, root / "cache", key={"t": 1}, layout=layout, val_fraction=0.1,
                                progress=False)
    config = MegabyteConfig.preset("tiny", **TINY, **({"patch_sizes": patch_sizes} if patch_sizes else {}))
    train = TrainConfig(out_dir=str(root / "run"), batch_size=4, max_steps=2, warmup_steps=1, eval_every=2,
                        eval_windows=2, checkpoint_every=2, progress=False)
    Trainer(config, train, dataset.train, dataset.val, metadata=metadata).fit()
    return root / "run"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    codec = bytecodecs.get_codec("text")
    return train_tiny(tmp_path_factory.mktemp("text"), [(codec.encode(s), codec.tag) for s in STORIES],
                      {"codec": codec.config()})


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """An MNIST-shaped .npz: six 8x8 grey images under the key ``images``, as the images recipe reads."""
    path = tmp_path_factory.mktemp("arrays") / "digits.npz"
    images = np.random.default_rng(0).integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    np.savez(path, images=images, labels=np.arange(6))
    return path


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    codec = bytecodecs.get_codec("image", width=8, height=8, mode="L")
    images = np.random.default_rng(1).integers(0, 256, size=(20, 8, 8), dtype=np.uint8)
    return train_tiny(tmp_path_factory.mktemp("image"), [(codec.encode_array(i), codec.tag) for i in images],
                      {"codec": codec.config(), "layout": "records"}, layout="records", patch_sizes=(4,))


# -- .npz arrays ---------------------------------------------------------------------------------------------
def test_eval_reads_an_npz_of_images_one_record_each(image_run, digits, capsys):
    assert main(["eval", str(image_run), str(digits), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["skipped"] == []
    assert result["files"][0]["bytes"] == 6 * 64 and 0 < result["files"][0]["bits_per_byte"] < 12


def test_encode_an_npz_writes_every_image_and_decode_restores_them(digits, tmp_path, capsys):
    out = tmp_path / "digits.bin"
    assert main(["encode", "--codec", "image", str(digits), str(out)]) == 0
    images = np.load(digits)["images"]
    assert out.read_bytes() == images.tobytes()  # 8x8 grey: the array's own size and mode
    sidecar = json.loads((tmp_path / "digits.bin.json").read_text())
    assert sidecar["codec"] == {"name": "image", "width": 8, "height": 8, "mode": "L", "fit": "crop",
                                "header": False, "fill": 0} and sidecar["records"] == 6
    assert main(["decode", str(out), str(tmp_path / "digit.png")]) == 0
    back = [np.asarray(bytecodecs.get_codec("image").load(tmp_path / f"digit-{i}.png").convert("L")) for i in range(6)]
    assert np.array_equal(np.stack(back), images)


# -- self-describing encoded files -----------------------------------------------------------------------------
@pytest.fixture
def pcm16_clip(tmp_path) -> tuple[Path, np.ndarray]:
    samples = (np.sin(np.arange(10240) / 5) * 20000).astype(np.int16)  # 0.64 s at 16 kHz
    soundfile.write(tmp_path / "clip.wav", samples, 16000, subtype="PCM_16")
    return tmp_path / "clip.wav", samples


def test_decode_without_flags_restores_what_encode_wrote(pcm16_clip, tmp_path, capsys):
    clip, samples = pcm16_clip
    assert main(["encode", "--codec", "wav", "-O", "sample_rate=16000", "-O", "sample_format=pcm16", str(clip),
                 str(tmp_path / "clip.bin")]) == 0
    assert (tmp_path / "clip.bin").read_bytes() == samples.tobytes()  # the .bin stays the raw model bytes
    assert main(["decode", str(tmp_path / "clip.bin"), str(tmp_path / "back.wav")]) == 0
    back, rate = soundfile.read(tmp_path / "back.wav", dtype="int16")
    assert rate == 16000 and np.array_equal(back, samples)


def test_decode_refuses_options_that_differ_from_the_sidecar(pcm16_clip, tmp_path, capsys):
    clip, _ = pcm16_clip
    main(["encode", "--codec", "wav", "-O", "sample_rate=16000", "-O", "sample_format=pcm16", str(clip),
          str(tmp_path / "clip.bin")])
    capsys.readouterr()
    assert main(["decode", "-O", "sample_format=mulaw", str(tmp_path / "clip.bin"), str(tmp_path / "x.wav")]) == 2
    error = capsys.readouterr().err
    assert "sample_format='mulaw' (recorded: 'pcm16')" in error and "--ignore-metadata" in error
    assert not (tmp_path / "x.wav").exists()
    assert main(["decode", "--codec", "wav", "-O", "sample_format=pcm16", "-O", "sample_rate=16000",
                 str(tmp_path / "clip.bin"), str(tmp_path / "same.wav")]) == 0  # flags that agree are fine
    assert main(["decode", "--ignore-metadata", "--codec", "wav", str(tmp_path / "clip.bin"),
                 str(tmp_path / "raw.wav")]) == 0
    assert soundfile.info(tmp_path / "raw.wav").samplerate == 8000  # the flags alone, as asked


def test_decode_of_raw_bytes_without_codec_says_what_to_pass(tmp_path, capsys):
    (tmp_path / "raw.bin").write_bytes(b"\x00" * 100)
    assert main(["decode", str(tmp_path / "raw.bin"), str(tmp_path / "out.wav")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "raw.bin" in error and "pass --codec NAME" in error


def test_an_unknown_codec_option_lists_the_valid_ones(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("hi")
    assert main(["encode", "--codec", "wav", "-O", "bogus=1", str(tmp_path / "a.txt"), str(tmp_path / "a.bin")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == ("bytemodels: error: codec 'wav' has no option 'bogus'; its options are: sample_rate, channels, "
                     "sample_format")
    with pytest.raises(bytecodecs.CodecError, match="has no option .colour.; its options are: strict, normalize"):
        bytecodecs.codec_from_config({"name": "text", "colour": 1})


# -- sample --------------------------------------------------------------------------------------------------
def test_sample_never_overwrites_without_force(text_run, tmp_path, capsys):
    out = tmp_path / "story.txt"
    out.write_text("keep me")
    assert main(["sample", str(text_run), "--max-bytes", "8", "--quiet", "-o", str(out)]) == 2
    assert "story.txt exists: pass --force" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["sample", str(text_run), "--prompt", "Once", "--max-bytes", "8", "--quiet", "--force",
                 "-o", str(out)]) == 0
    assert out.read_text().startswith("Once") and [p.name for p in tmp_path.iterdir()] == ["story.txt"]


def test_a_failed_forced_sample_leaves_the_old_file_whole(text_run, tmp_path, monkeypatch, capsys):
    from bytemodels.model import Megabyte

    def disk_full(*args, **kwargs):
        yield b"x"
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Megabyte, "generate_stream", disk_full)
    out = tmp_path / "story.txt"
    out.write_text("old story")
    assert main(["sample", str(text_run), "--max-bytes", "8", "--quiet", "--force", "-o", str(out)]) == 2
    assert out.read_text() == "old story" and [p.name for p in tmp_path.iterdir()] == ["story.txt"]


def test_sample_stop_strings_reach_the_generator(text_run, tmp_path, monkeypatch, capsys):
    from bytemodels.model import Megabyte

    seen = {}

    def fake_stream(self, ids, max_bytes, **options):
        seen.update(options)
        yield b"a dog"

    monkeypatch.setattr(Megabyte, "generate_stream", fake_stream)
    assert main(["sample", str(text_run), "--max-bytes", "8", "--quiet", "--stop", ".", "--stop", "\\n",
                 "-o", str(tmp_path / "s.txt")]) == 0
    assert seen["stop"] == [b".", b"\n"]


# -- chat ----------------------------------------------------------------------------------------------------
def test_chat_streams_a_reply_per_line_through_a_pipe(text_run):
    done = subprocess.run([sys.executable, "-m", "bytemodels", "chat", str(text_run), "--temperature", "0",
                           "--max-bytes", "12", "--device", "cpu"], input="Once upon\n\nThe dog\n",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    replies = done.stdout.split("\n")
    assert len(replies) == 3 and replies[2] == ""  # two prompts (the blank line is skipped), two replies
    assert all(0 < len(reply.encode()) <= 12 * 3 for reply in replies[:2])


def test_chat_refuses_a_checkpoint_that_is_not_text(image_run, capsys):
    assert main(["chat", str(image_run)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "chat is for text models" in error and "'image'" in error


def test_chat_uses_the_instruct_prompt_format_of_an_instruct_checkpoint():
    from bytemodels.cli import chat_prompt_format

    instruct = chat_prompt_format({"recipe": "tinystories", "instruct": True})
    assert instruct("a dog finds a ball") == "Summary: a dog finds a ball\nStory: "
    assert instruct("Words: dog, ball") == "Words: dog, ball\nStory: "
    assert chat_prompt_format({"recipe": "tinystories", "instruct": False})("Once upon") == "Once upon"
    assert chat_prompt_format({})("Words: x") == "Words: x"


# -- --log ---------------------------------------------------------------------------------------------------
def test_log_tensorboard_without_the_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` of it raises ImportError
    from recipes import tinystories

    with pytest.raises(SystemExit) as stopped:
        tinystories.main(["--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "run"),
                          "--log", "tensorboard"])
    error = str(stopped.value.code)
    assert error.endswith("--log tensorboard: the tensorboard package is not installed (pip install "
                               "tensorboard); metrics.jsonl records the run without it")
    assert "\n" not in error and not (tmp_path / "run" / "checkpoints").exists()


def test_log_sends_every_metrics_record_to_the_tracker(tmp_path, monkeypatch, capsys):
    logged, started, finished = [], [], []

    class FakeRun:
        def log(self, values, step):
            logged.append((step, values))

        def finish(self):
            finished.append(True)

    def init(**kwargs):
        started.append(kwargs)
        return FakeRun()

    fake = types.ModuleType("wandb")
    fake.init = init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    from recipes import tinystories

    stories = tmp_path / "stories.txt"
    stories.write_text("".join(f"{s}\n<|endoftext|>\n" for s in STORIES), encoding="utf-8")
    run = tmp_path / "run"
    tinystories.main(["--data", str(stories), "--out", str(run), "--log", "wandb", "--max-steps", "2",
                      "--eval-every", "2", "--log-every", "1", "--preset", "tiny", "--dims", "32,16", "--layers",
                      "1,1", "--heads", "2,1", "--max-seq-len", "64", "--batch-size", "2", "--eval-windows", "2",
                      "--sample-bytes", "8", "--no-progress", "--no-compile", "--val-fraction", "0.1"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], {f"train/{k}": v for k, v in r.items() if k != "step"}) for r in records if "loss" in r]
    val = [(r["step"], {"val/bpb": r["val_bpb"]}) for r in records if "val_bpb" in r]
    assert train and val
    assert [entry for entry in logged if "val/bpb" not in entry[1]] == train
    assert [entry for entry in logged if "val/bpb" in entry[1]] == val
    assert started[0]["name"] == "run" and started[0]["config"]["model"]["dims"] == [32, 16] and finished == [True]


def test_a_failing_tracker_is_dropped_with_one_warning(tmp_path, monkeypatch, capsys):
    fake = types.ModuleType("wandb")

    def init(**kwargs):
        raise ConnectionError("no network")

    fake.init = init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    from bytemodels.tracking import open_loggers

    [logger] = open_loggers(["wandb"], tmp_path)
    logger.log({"step": 1, "loss": 1.0})
    logger.log({"step": 2, "loss": 1.0})
    assert capsys.readouterr().err.count("warning: --log wandb stopped (ConnectionError: no network)") == 1
