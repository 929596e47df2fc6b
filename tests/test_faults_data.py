"""Fault injection on the data sources: byte caches keyed by content (an edit that keeps a file's size and time is
seen), one cache per split, one story per text file, an empty validation split said out loud, and a checkpoint
naming an image codec too large to build."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import bytecodecs
from bytemodels.data import file_key, folder_key

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # recipes/ runs from the checkout; it is never installed into site-packages
    sys.path.insert(0, str(REPO))

from recipes import mixed_data, tinystories, tinystories_data  # noqa: E402

SEPARATOR = "\n<|endoftext|>\n"
# A model small enough that a step takes well under a second on one CPU core.
TINY_FLAGS = ["--dims", "32,32", "--layers", "1,1", "--heads", "2,2", "--max-seq-len", "64", "--batch-size", "2",
              "--eval-windows", "2", "--sample-bytes", "8", "--warmup-steps", "1", "--no-progress", "--no-compile"]


def stories(count: int, name: str = "Lily") -> list[str]:
    return [f"Once upon a time {name} had a ball number {index}. {name} played with it all day."
            for index in range(count)]


def write_stories(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(text + SEPARATOR for text in texts), encoding="utf-8")
    return path


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
    return path


def edit_keeping_size_and_time(path: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` (as long) in ``path`` and put its modification time back, as an in-place editor
    or a copy with preserved times can."""
    assert len(old) == len(new)
    before = path.stat()
    path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def byte_datasets(data: Path, cache: Path, val_fraction: float = 0.05):
    source = tinystories_data.local_source(data, cache)
    return tinystories_data.byte_datasets(source, bytecodecs.get_codec("text"), cache, instruct_seed=None,
                                     val_fraction=val_fraction, split_seed=0)


def all_bytes(dataset) -> bytes:
    return b"".join(data for data, _ in dataset)


# -- caches keyed by content ----------------------------------------------------------------------------------
def test_cache_keys_see_an_edit_that_keeps_size_and_time(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    files = [write_stories(folder / f"{index}.txt", stories(2)) for index in range(3)]
    before = file_key(files[1]), folder_key(folder, files)
    edit_keeping_size_and_time(files[1], "Lily", "Mila")
    assert file_key(files[1]) != before[0]
    assert folder_key(folder, files) != before[1]


def test_a_file_that_cannot_be_read_is_keyed_as_such_not_a_crash(tmp_path, monkeypatch):
    import builtins

    from bytemodels import runfolder  # where a source file is hashed (file_sha256)

    folder = tmp_path / "clips"
    folder.mkdir()
    files = [write_stories(folder / f"{index}.txt", stories(1)) for index in range(2)]
    readable = folder_key(folder, files)

    def refuse(path, *args, **kwargs):  # we run as root, so chmod would not stop the read: patch open instead
        if Path(path) == files[1]:
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(runfolder, "open", refuse, raising=False)
    assert file_key(files[1]) == {"sha256": "unreadable: Permission denied"}  # the folder loader skips it later
    assert folder_key(folder, files) != readable


@pytest.mark.parametrize("writer", [write_stories, write_jsonl], ids=["txt", "jsonl"])
def test_a_story_edited_in_place_is_trained_on_not_the_stale_cache(tmp_path, writer):
    data = tmp_path / "data"
    data.mkdir()
    suffix = ".txt" if writer is write_stories else ".jsonl"
    train_file = writer(data / f"train{suffix}", stories(6))
    writer(data / f"valid{suffix}", stories(2, name="Tom"))
    train, _ = byte_datasets(data, tmp_path / "cache")
    assert b"Lily" in all_bytes(train)

    edit_keeping_size_and_time(train_file, "Lily", "Mila")
    edited, _ = byte_datasets(data, tmp_path / "cache")
    assert b"Mila" in all_bytes(edited) and b"Lily" not in all_bytes(edited)
    assert edited.fingerprint["key_hash"] != train.fingerprint["key_hash"]


def test_editing_the_training_split_leaves_the_validation_fingerprint_as_it_was(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    train_file = write_stories(data / "train.txt", stories(6))
    write_stories(data / "valid.txt", stories(2, name="Tom"))
    train, val = byte_datasets(data, tmp_path / "cache")

    write_stories(train_file, stories(7, name="Sue"))
    edited_train, edited_val = byte_datasets(data, tmp_path / "cache")
    assert edited_train.fingerprint != train.fingerprint
    assert edited_val.fingerprint == val.fingerprint  # a resume does not warn that validation changed


# -- one file is one document ---------------------------------------------------------------------------------
def test_each_text_file_of_a_folder_is_its_own_story(tmp_path):
    data = tmp_path / "many"
    data.mkdir()
    expected = []
    for index in range(200):  # no separators: each file is one story ...
        text = f"Story {index}: a cat sat on mat {index}."
        (data / f"story_{index:03d}.txt").write_text(text, encoding="utf-8")
        expected.append(text)
    write_stories(data / "story_200.txt", ["Two in one file.", "The second one."])  # ... unless separated
    expected += ["Two in one file.", "The second one."]
    train, val = byte_datasets(data, tmp_path / "cache")
    assert len(train) + len(val) == 202 and len(val) == 10  # 5% of the stories held out
    assert sorted(all_texts(train) + all_texts(val)) == sorted(expected)


def all_texts(dataset) -> list[str]:
    return [data.decode("utf-8") for data, _ in dataset]


def test_the_mixed_recipe_reads_each_text_file_as_its_own_story(tmp_path):
    data = tmp_path / "text"
    data.mkdir()
    for index in range(3):
        (data / f"{index}.txt").write_text(f"story {index}", encoding="utf-8")
    _, read = mixed_data.text_documents(data, bytecodecs.get_codec("text"), limit=None)
    assert list(read()) == [b"story 0", b"story 1", b"story 2"]


# -- an empty validation split is said, never a silent "n/a" --------------------------------------------------
def test_a_held_out_split_without_a_story_warns_and_training_goes_on(tmp_path, capsys):
    data = write_stories(tmp_path / "one.txt", stories(1))
    tinystories.main(["--data", str(data), "--out", str(tmp_path / "run"), "--max-steps", "1", *TINY_FLAGS])
    captured = capsys.readouterr()
    assert f"warning: --val-fraction 0.05 holds out none of the 1 stories of {data}" in captured.err
    assert "final validation: none (no validation stories)" in captured.out
    assert "n/a" not in captured.out


def test_a_val_fraction_given_that_holds_out_nothing_is_an_error(tmp_path, capsys):
    data = write_stories(tmp_path / "one.txt", stories(1))
    with pytest.raises(SystemExit) as stopped:
        tinystories.main(["--data", str(data), "--out", str(tmp_path / "run"), "--val-fraction", "0.1",
                          "--max-steps", "1", *TINY_FLAGS])
    assert str(stopped.value.code).startswith("python -m recipes.tinystories: error: --val-fraction 0.1 holds out "
                                              f"none of the 1 stories of {data}")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_validation_file_without_a_story_is_an_error_naming_the_split(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_stories(data / "train.txt", stories(4))
    (data / "valid.txt").write_text("\n<|endoftext|>\n\n", encoding="utf-8")
    with pytest.raises(SystemExit) as stopped:
        tinystories.main(["--data", str(data), "--out", str(tmp_path / "run"), "--max-steps", "1", *TINY_FLAGS])
    assert str(stopped.value.code) == (f"python -m recipes.tinystories: error: --data {data}: the validation split "
                                       "holds no stories (only blank text and <|endoftext|> lines)")


# -- a checkpoint naming a huge image codec ---------------------------------------------------------------------
def test_sampling_a_checkpoint_with_a_huge_image_codec_fails_at_the_codec(tmp_path, capsys, monkeypatch):
    from bytemodels import ByteDataset, MegabyteConfig, TrainConfig, Trainer
    from bytemodels import cli
    from bytemodels.cli import main

    dataset = ByteDataset.build([bytes(range(40))] * 4, tmp_path / "cache", key={"bytes": 1}, layout="records",
                                progress=False)
    model_config = MegabyteConfig.preset("tiny", dims=(16, 16), layers=(1, 1), heads=(1, 1), max_seq_len=64)
    train_config = TrainConfig(out_dir=str(tmp_path / "run"), batch_size=2, max_steps=1, warmup_steps=1,
                               eval_every=1, eval_windows=1, checkpoint_every=1, progress=False)
    huge = {"name": "image", "width": 65535, "height": 65535, "mode": "RGB", "fit": "crop", "header": False,
            "fill": 0}  # a 12.9 GB record: sample's default length
    Trainer(model_config, train_config, dataset, None, metadata={"codec": huge, "layout": "records"}).fit()
    capsys.readouterr()

    def no_model(*args, **kwargs):  # without the codec's limit, sampling went on to generate 12.9 GB
        raise AssertionError("the model was loaded: the codec was not refused first")

    monkeypatch.setattr(cli, "load_model", no_model)
    assert main(["sample", str(tmp_path / "run"), "-o", str(tmp_path / "out.png")]) == 2
    error = capsys.readouterr().err.strip()
    # The line names the checkpoint's metadata file and the codec's own reason.
    assert error.startswith("bytemodels: error: ") and "metadata.json" in error
    assert "image codec: width=65535 x height=65535 x 3 channel(s) (RGB)" in error
    assert len(error.splitlines()) == 1 and not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("options, message", [
    (["-O", "width=65535", "-O", "height=65535"], "image codec: width=65535 x height=65535"),
    (["-O", "sample_rate=1000000000"], "wav codec: sample_rate=1000000000 must be an integer in 100..768000 (Hz)"),
])
def test_decode_with_a_huge_codec_option_is_one_line_before_decoding(tmp_path, capsys, monkeypatch, options, message):
    from bytecodecs.image import ImageCodec
    from bytecodecs.wav import WavCodec
    from bytemodels.cli import main

    def no_decoding(*args, **kwargs):  # without the limits, decoding allocated 12.9 GB (a MemoryError at best)
        raise AssertionError("decoding started: the codec option was not refused first")

    monkeypatch.setattr(ImageCodec, "decode", no_decoding)
    monkeypatch.setattr(WavCodec, "decode", no_decoding)
    (tmp_path / "in.bin").write_bytes(bytes(10))
    codec = "image" if "width" in options[1] else "wav"
    assert main(["decode", "--codec", codec, *options, str(tmp_path / "in.bin"), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"bytemodels: error: {message}") and len(error.splitlines()) == 1
