"""Faults around the run folder and the byte cache: a second process, a killed writer, a full or read-only disk,
a seed too large. Each failure must be one line naming the folder, file or flag, and leave nothing half-written."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import SafetensorError

from bytemodels import checkpoint as ckpt
from bytemodels.data import ByteDataset
from bytemodels.runfolder import RunFolderError
from bytemodels.train import Trainer
from test_train import text_dataset, tiny_config, train_config

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # recipes/ runs from the checkout
    sys.path.insert(0, str(REPO))

from recipes import tinystories  # noqa: E402

TINY_FLAGS = ["--dims", "32,32", "--layers", "1,1", "--heads", "2,2", "--max-seq-len", "64", "--batch-size", "4",
              "--eval-windows", "4", "--sample-bytes", "8", "--warmup-steps", "1", "--no-progress", "--no-compile"]

# Holds the lock of the folder argv[1] (or, with argv[2], the lock file argv[2] in it) until killed.
HOLD_LOCK = ("import sys, time\n"
             "from bytemodels.runfolder import lock_folder\n"
             "lock_folder(*sys.argv[1:])\n"
             "print('held', flush=True)\n"
             "time.sleep(600)\n")


@pytest.fixture
def holder():
    """``holder(folder, [lock file name])``: a child process that holds the folder's lock; killed at the end."""
    children = []

    def start(*args: Path | str) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, *map(str, args)], cwd=REPO, text=True,
                                 stdout=subprocess.PIPE)
        children.append(child)
        assert child.stdout.readline().strip() == "held"
        return child

    yield start
    for child in children:
        child.kill()
        child.wait()


def sigkill(child: subprocess.Popen) -> None:
    child.kill()  # SIGKILL: no handler runs, the kernel alone releases the lock
    assert child.wait() == -9


def story_file(tmp_path: Path) -> Path:
    """A train.txt / valid.txt folder of short generated stories."""
    folder = tmp_path / "stories"
    folder.mkdir()
    for name, count in (("train.txt", 40), ("valid.txt", 8)):
        stories = [f"Once upon a time, story {i} had a cat.\nThey played all day." for i in range(count)]
        (folder / name).write_text("".join(story + "\n<|endoftext|>\n" for story in stories), encoding="utf-8")
    return folder


def recipe_error(*argv: object) -> str:
    """The one line a recipe run ends with (``SystemExit``'s message)."""
    with pytest.raises(SystemExit) as stopped:
        tinystories.main([str(arg) for arg in argv])
    message = str(stopped.value.code)
    assert "\n" not in message and "Traceback" not in message
    return message


def train_two_steps(run: Path, data: ByteDataset, **overrides) -> Trainer:
    trainer = Trainer(tiny_config(), train_config(run, max_steps=2, eval_every=0, checkpoint_every=2, **overrides),
                      data.train, data.val)
    trainer.fit()
    return trainer


# -- 1. a run folder belongs to one process -------------------------------------------------------------------
def test_a_second_run_into_a_busy_folder_fails_at_once_until_the_owner_is_killed(tmp_path, holder, capsys):
    stories, run = story_file(tmp_path), tmp_path / "run"
    owner = holder(run)
    message = recipe_error("--data", tmp_path / "absent.txt", "--out", run, "--max-steps", 2, *TINY_FLAGS)
    assert str(run) in message and f"process {owner.pid}" in message  # before the (absent) data is read
    sigkill(owner)

    tinystories.main([str(a) for a in ("--data", stories, "--out", run, "--max-steps", 2, *TINY_FLAGS)])
    assert ckpt.latest_checkpoint(run).name == "step_000002"

    owner = holder(run)  # --resume is refused too, and the recipe above released the folder when it ended
    message = recipe_error("--resume", "--out", run, "--max-steps", 3, "--no-progress")
    assert f"process {owner.pid}" in message and str(run) in message
    sigkill(owner)


def test_the_trainer_locks_its_run_folder_for_library_users(tmp_path, holder):
    data, run = text_dataset(tmp_path / "cache"), tmp_path / "run"
    owner = holder(run)
    with pytest.raises(RunFolderError, match=f"{run}: .*process {owner.pid}"):
        Trainer(tiny_config(), train_config(run, max_steps=2), data.train, data.val)
    sigkill(owner)

    train_two_steps(run, data)
    holder(run)  # fit() returned: another process can take the folder


# -- 2. a byte cache being built belongs to one process ---------------------------------------------------------
BUILD_IN_CHILD = ("import sys\n"
                  "from pathlib import Path\n"
                  "from bytemodels.data import ByteDataset\n"
                  "def documents():\n"
                  "    Path(sys.argv[2]).touch()  # this process read the documents: it built the cache itself\n"
                  "    yield b'the child builds'\n"
                  "dataset = ByteDataset.build(documents(), sys.argv[1], key={'k': 1}, progress=False)\n"
                  "print(len(dataset), dataset.document(0)[0].decode(), flush=True)\n")


def test_a_second_builder_of_one_cache_waits_and_opens_it_instead_of_building_twice(tmp_path):
    from bytemodels.runfolder import lock_folder

    cache, marker = tmp_path / "cache", tmp_path / "child-read-its-documents"
    final = ByteDataset.cache_path(cache, {"k": 1})
    with lock_folder(cache, f".{final.name}.lock"):  # this process is the builder
        child = subprocess.Popen([sys.executable, "-c", BUILD_IN_CHILD, str(cache), str(marker)], cwd=REPO, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            said = ""
            for said in child.stderr:  # the child is now waiting for us (or, unlocked, built and exited)
                if "waiting" in said:
                    break
            assert f"waiting for process {os.getpid()}" in said and final.name in said
            built = ByteDataset.build([b"one", b"two", b"three"], cache, key={"k": 1}, progress=False)
        except BaseException:
            child.kill()
            raise
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0 and out.split() == ["3", "one"]  # the child opened our cache
    assert not marker.exists() and len(built) == 3


# -- 3. nothing left behind ----------------------------------------------------------------------------------------
def test_the_next_owner_removes_what_a_killed_checkpoint_write_left(tmp_path, capsys):
    data, run = text_dataset(tmp_path / "cache"), tmp_path / "run"
    root = run / ckpt.CHECKPOINTS_DIR
    leftovers = [root / ".step_000010.tmp-k1ll3d", root / ".best.tmp-x", root / ".step_000010.old-y" / "step_000010"]
    for folder in leftovers:
        folder.mkdir(parents=True)
        (folder / ckpt.WEIGHTS_FILE).write_bytes(b"half a file")
    (root / ".latest.abc123").write_text("step_0000")
    (root / "notes.txt").write_text("mine")  # not a leftover: stays
    (run / ".metrics.jsonl.x1y2z3").write_text("{}")  # the temporary file of a metrics rewrite

    train_two_steps(run, data)
    assert sorted(p.name for p in root.iterdir() if p.name != "best") == ["latest", "notes.txt", "step_000002"]
    assert not list(run.glob(".metrics.jsonl.*"))
    assert "removed 5 unfinished write(s) of an earlier process" in capsys.readouterr().out


def test_the_next_builder_removes_what_a_killed_cache_build_left(tmp_path):
    cache = tmp_path / "cache"
    ours, other = ByteDataset.cache_path(cache, {"k": 1}), ByteDataset.cache_path(cache, {"k": 2})
    for name in (f".{ours.name}.building-k1ll3d", f".{other.name}.building-busy"):
        (cache / name).mkdir(parents=True)
        (cache / name / "data.bin").write_bytes(b"half")

    ByteDataset.build([b"one", b"two"], cache, key={"k": 1}, progress=False)
    # Ours is gone; another key's may be a build in progress in another process: it stays.
    assert sorted(p.name for p in cache.iterdir()) == sorted([ours.name, f".{other.name}.building-busy"])


# -- 4. a fresh run after one that died before its first checkpoint -----------------------------------------------
def test_a_fresh_run_moves_aside_the_metrics_of_a_run_that_saved_no_checkpoint(tmp_path, capsys):
    data, run = text_dataset(tmp_path / "cache"), tmp_path / "run"
    run.mkdir()
    dead = json.dumps({"step": 50, "loss": 9.0}) + "\n"
    (run / "metrics.jsonl").write_text(dead)

    train_two_steps(run, data, log_every=1)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]  # this run's lines only
    aside = list(run.glob("metrics.jsonl.old-*"))
    assert len(aside) == 1 and aside[0].read_text() == dead
    assert f"moved to {aside[0].name}" in capsys.readouterr().out


# -- 5. disk full and read-only: one line naming the file ----------------------------------------------------------
def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def safetensors_no_space(*args, **kwargs):
    raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")


class FullDisk:
    """A file on a full disk: its writes fail, or (``buffered``) are taken into the buffer and fail when it is
    flushed, closing included."""

    def __init__(self, file, buffered: bool = False) -> None:
        self.file, self.buffered = file, buffered

    def write(self, data) -> int:
        if self.buffered:
            return len(data)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self) -> None:
        self.file.close()
        if self.buffered:
            self.flush()

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def full_disk_open(path, mode="r", *args, **kwargs):
    """``open`` where files opened for writing fail as on a full disk (torch.save then raises a RuntimeError
    while handling the OSError, as it does on a real full disk)."""
    file = open(path, mode, *args, **kwargs)
    return FullDisk(file) if "w" in mode else file


def torch_save_on_full_disk(*args, **kwargs):
    """What torch.save raised on a real full tmpfs: a RuntimeError while handling the OSError."""
    try:
        no_space()
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 237824 vs 237716")


@pytest.mark.parametrize("target, writer, file", [
    ("bytemodels.pretrained.save_file", safetensors_no_space, ckpt.WEIGHTS_FILE),  # what safetensors raises
    ("bytemodels.checkpoint.open", full_disk_open, ckpt.OPTIMIZER_FILE),
    ("torch.save", torch_save_on_full_disk, ckpt.OPTIMIZER_FILE),
    ("bytemodels.checkpoint.save_file", no_space, ckpt.RNG_FILE),
])
def test_disk_full_during_a_checkpoint_is_one_line_and_the_previous_one_stays_intact(tmp_path, monkeypatch, target,
                                                                                      writer, file):
    data, run = text_dataset(tmp_path / "cache"), tmp_path / "run"
    root = run / ckpt.CHECKPOINTS_DIR
    train_two_steps(run, data)
    monkeypatch.setattr(target, writer, raising=False)
    trainer = Trainer.resume(run, data.train, data.val, max_steps=4)
    with pytest.raises(RunFolderError) as failed:
        trainer.fit()
    message = str(failed.value)
    assert message.startswith(f"{root}: no space left on device while writing {file} of checkpoint step_000004")
    assert "\n" not in message and failed.value.errno == errno.ENOSPC
    ckpt.verify_checkpoint(root / "step_000002")  # the previous checkpoint: intact, and still the latest
    assert ckpt.latest_checkpoint(run).name == "step_000002"
    assert sorted(p.name for p in root.iterdir() if p.name != "best") == ["latest", "step_000002"]  # no temporary


def test_disk_full_in_a_recipe_is_one_line(tmp_path, monkeypatch):
    stories, run = story_file(tmp_path), tmp_path / "run"
    monkeypatch.setattr("bytemodels.pretrained.save_file", safetensors_no_space)
    message = recipe_error("--data", stories, "--out", run, "--max-steps", 2, *TINY_FLAGS)
    assert f"{run / 'checkpoints'}: no space left on device while writing model.safetensors" in message


@pytest.mark.parametrize("buffered", [False, True])
def test_disk_full_while_building_the_byte_cache_names_the_cache_file(tmp_path, monkeypatch, buffered):
    import bytemodels.data

    monkeypatch.setattr(bytemodels.data, "open", lambda path, mode="r", *a, **k: FullDisk(open(path, mode, *a, **k),
                                                                                           buffered), raising=False)
    cache = tmp_path / "cache"
    final = ByteDataset.cache_path(cache, {"k": 1})
    with pytest.raises(RunFolderError) as failed:
        ByteDataset.build([b"one", b"two"], cache, key={"k": 1}, progress=False)
    assert str(failed.value).startswith(f"{final / 'data.bin'}: no space left on device while building the byte cache")
    assert list(cache.iterdir()) == []  # no half-built cache, no lock file


def test_disk_full_in_the_datasets_cache_is_not_blamed_on_the_text_files(tmp_path, monkeypatch):
    import datasets

    def full_cache(*args, **kwargs):
        try:
            no_space()
        except OSError as error:  # the datasets library wraps the OSError in its own error
            raise RuntimeError("An error occurred while generating the dataset") from error

    # Text files are read through Dataset.from_generator, JSON and parquet through load_dataset: both write the cache.
    monkeypatch.setattr(datasets, "load_dataset", full_cache)
    monkeypatch.setattr(datasets.Dataset, "from_generator", full_cache)
    message = recipe_error("--data", story_file(tmp_path), "--out", tmp_path / "run", "--max-steps", 2, *TINY_FLAGS)
    assert "no space left on device" in message and "could not read" not in message
    assert str(tmp_path / "cache" / "hf-datasets") in message


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: creating ``folder`` fails as on a read-only file system (we run as root: chmod does
    not stop root)."""
    real_mkdir = Path.mkdir

    def make(folder: Path) -> None:
        def mkdir(self, *args, **kwargs):
            if self == folder:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)

    return make


def test_a_read_only_out_folder_is_one_line(tmp_path, read_only):
    run = tmp_path / "run"
    read_only(run)
    message = recipe_error("--data", story_file(tmp_path), "--out", run, "--max-steps", 2, *TINY_FLAGS)
    assert message.endswith(f"{run}: read-only file system while creating the run folder; choose a writable folder")


def test_a_read_only_run_folder_is_a_run_folder_error_for_library_users(tmp_path, read_only):
    data, run = text_dataset(tmp_path / "cache"), tmp_path / "run"
    read_only(run)
    with pytest.raises(RunFolderError, match="read-only file system") as failed:
        Trainer(tiny_config(), train_config(run, max_steps=2), data.train, data.val)
    assert failed.value.errno == errno.EROFS


# -- 6. a seed too large for torch and numpy ------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["--out", "{run}", "--max-steps", "1"], ["sample", "--checkpoint", "{run}"]])
def test_a_seed_too_large_is_one_line_naming_the_flag(tmp_path, capsys, command):
    with pytest.raises(SystemExit):
        tinystories.main([arg.format(run=tmp_path / "run") for arg in command] + ["--seed", str(2**70)])
    message = capsys.readouterr().err.strip()
    assert "--seed" in message and str(2**70) in message and "\n" not in message


def test_bytemodels_sample_refuses_a_seed_too_large_in_one_line(tmp_path, capsys):
    from bytemodels.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["sample", str(tmp_path), "--seed", str(2**70)])
    assert stopped.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "--seed" in message and str(2**70) in message and "\n" not in message


def test_the_largest_seed_writes_every_story(tmp_path):
    import bytecodecs
    from bytemodels.model import Megabyte

    # The second story's seed is seed + 1, past what torch takes: it wraps around instead.
    sample = tinystories.make_sample_fn(bytecodecs.get_codec("text"), ("Once", "Tom"), 4, seed=2**64 - 1)
    sample(Megabyte(tiny_config()), 1, tmp_path)
    assert len(list(tmp_path.glob("step_000001_*.txt"))) == 2
