"""Recipe plumbing in the app layer (``bytemodels.app.recipe``) and the data-layer helpers recipes share: the run folder
and ``--resume``, recorded data flags, configs from flags, the records cache of one codec, one-line errors."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bytemodels import checkpoint as ckpt
from bytemodels.config import MegabyteConfig
from bytemodels.data import covered_documents, file_key, folder_key, record_ids, whole_document_windows
from bytemodels.app.flags import COUNT, FRACTION, number
from bytemodels.app.recipe import (DataFlags, RecipeError, check_resume_flags, compared_documents, defaults_epilog,
                               device_kind, new_train_config, open_run, preset_config, records_dataset,
                               resolve_device, run_command, save_comparison, training_flags)
from bytemodels.train import TrainSummary

DEFAULTS = {"cpu": dict(preset="tiny", time="10m", eval_every=200, batch_size=8, max_seq_len=1024),
            "gpu": dict(preset="small", time="1h", eval_every=1000, batch_size=32, max_seq_len=8192)}


def fake_checkpoint(run: Path, metadata: dict, step: int = 3) -> Path:
    """A complete, verifiable checkpoint folder in ``run`` (no real weights: the helpers only read its JSON)."""
    return ckpt.save_checkpoint(run / ckpt.CHECKPOINTS_DIR, step,
                                write_model=lambda folder: (folder / ckpt.MODEL_CONFIG_FILE).write_text("{}"),
                                optimizer_state={}, rng_tensors={}, state={}, train_config={"seed": 0},
                                metadata=metadata)


@dataclass(frozen=True)
class Codec:
    """Just what the core reads of a codec: a tag, a configuration, and its options as dataclass fields (flags)."""

    rate: int = 8000
    tag = 1
    name = "toy"

    def config(self) -> dict:
        return {"name": "toy", "rate": self.rate}


# -- the run folder and --resume ------------------------------------------------------------------------------
def test_a_new_run_needs_a_free_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # open_run creates (and locks) the default runs/<recipe> folder
    args = argparse.Namespace(out=str(tmp_path / "run"), resume=None)
    assert open_run(args, "toy") == (tmp_path / "run", None, None)
    assert open_run(argparse.Namespace(out=None, resume=None), "toy")[0] == Path("runs") / "toy"
    assert open_run(argparse.Namespace(out=None, resume=None), "toy", Path("runs/other"))[0] == Path("runs/other")
    fake_checkpoint(tmp_path / "run", {"recipe": "toy"})
    with pytest.raises(RecipeError, match="already holds a run; pass --resume"):
        open_run(args, "toy")


def test_resume_continues_in_the_run_folder_of_its_checkpoint(tmp_path):
    checkpoint = fake_checkpoint(tmp_path / "run", {"recipe": "toy", "data": {"path": "x"}})
    out, resume_from, recorded = open_run(argparse.Namespace(out=None, resume=str(checkpoint)), "toy")
    assert out == tmp_path / "run" and resume_from == checkpoint and recorded.metadata["data"] == {"path": "x"}
    out, resume_from, _ = open_run(argparse.Namespace(out=str(tmp_path / "run"), resume="auto"), "toy")
    assert out == tmp_path / "run" and resume_from == checkpoint
    with pytest.raises(RecipeError, match="not a checkpoint of recipes.other"):
        open_run(argparse.Namespace(out=str(tmp_path / "run"), resume="auto"), "other")


@pytest.mark.parametrize("codec_classes, what", [((), "model"), ((Codec,), "model and codec"),
                                                 ((Codec, Codec), "model and codecs")])
def test_resume_accepts_the_flags_it_was_started_with_and_names_those_that_differ(codec_classes, what):
    from bytemodels.checkpoint import Checkpoint

    config = MegabyteConfig.preset("tiny").to_dict()
    recorded = Checkpoint(Path("run"), {}, config, {}, {"preset": "tiny", "codec": Codec().config()})
    # The command line the run was started with (and training flags, which may change) is fine.
    check_resume_flags(argparse.Namespace(preset="tiny", lr=0.1, dims=(128, 64), rate=8000), recorded,
                       codec_classes)
    with pytest.raises(RecipeError) as refused:
        check_resume_flags(argparse.Namespace(preset="small", dims=(64, 32), rate=4000, layers=(4, 2)), recorded,
                           codec_classes)
    message = str(refused.value)
    assert message.startswith(f"--resume keeps the {what} of the checkpoint; these flags differ from it: "
                              "--preset small (the checkpoint's: tiny); --dims 64,32 (the checkpoint's: 128,64)")
    assert "--layers" not in message and ("--rate 4000 (the checkpoint's: 8000)" in message) == bool(codec_classes)


def test_data_flags_are_recorded_and_restored(tmp_path):
    flags = DataFlags(names={"path": "data", "hub": "hub_dataset", "hub_split": "hub_split", "limit": "limit"},
                      sources=("data", "hub_dataset"), paths=("data",), defaults={"hub_split": "train"})
    args = argparse.Namespace(data=str(tmp_path / "clips"), hub_dataset=None, hub_split="test", limit=5,
                              val_fraction=0.2)
    recorded = flags.record(args)
    assert recorded == {"path": str((tmp_path / "clips").resolve()), "hub": None, "hub_split": "test", "limit": 5,
                        "val_fraction": 0.2}

    resumed = argparse.Namespace(data=None, hub_dataset=None, hub_split="train", limit=None, val_fraction=0.05)
    flags.restore(resumed, recorded)
    assert (resumed.data, resumed.hub_split, resumed.limit, resumed.val_fraction) == (recorded["path"], "test", 5, 0.2)
    older = argparse.Namespace(data=None, hub_dataset=None, hub_split="x", limit=None, val_fraction=0.05)
    flags.restore(older, {"path": "old"})  # a checkpoint without hub_split gets the flag's default
    assert older.hub_split == "train" and older.val_fraction == 0.05

    named = argparse.Namespace(data="other", hub_dataset=None, hub_split="train", limit=None, val_fraction=0.05)
    flags.restore(named, recorded)  # a source flag given: the data it names is read, the split stays the run's
    assert (named.data, named.limit, named.val_fraction) == ("other", None, 0.2)


def test_device_kind_picks_the_column_of_the_defaults():
    assert device_kind("cpu") == "cpu"
    with pytest.raises(RecipeError, match="device .nonsense. is not a device name"):
        device_kind("nonsense")


def test_a_device_this_machine_lacks_is_a_recipe_error():
    import torch

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(RecipeError, match="^device .nodevice. is not a device name"):
        resolve_device("nodevice")
    if not torch.cuda.is_available():  # it used to pass, and training failed deep in PyTorch
        with pytest.raises(RecipeError, match="^device .cuda. is not available"):
            device_kind("cuda")


# -- configs from flags -------------------------------------------------------------------------------------
def test_train_config_takes_device_defaults_then_settings_then_flags(tmp_path):
    config = new_train_config(DEFAULTS["cpu"], {"lr": 0.01}, tmp_path, eval_windows=7)
    assert (config.time, config.batch_size, config.lr, config.eval_windows) == ("10m", 8, 0.01, 7)
    assert config.sample_every == 200 and config.out_dir == str(tmp_path)
    config = new_train_config(DEFAULTS["cpu"], {"max_steps": 5, "eval_every": 2, "eval_windows": 3}, tmp_path,
                              eval_windows=7)
    assert config.time is None and config.max_steps == 5  # a step budget replaces the default time budget
    assert config.sample_every == 2 and config.eval_windows == 3
    assert new_train_config(DEFAULTS["cpu"], {"max_steps": 5, "time": "1m"}, tmp_path).time == "1m"


def test_training_flags_include_time_only_when_given():
    assert training_flags(argparse.Namespace(lr=0.1, time="5m", data="x")) == {"lr": 0.1, "time": "5m"}
    assert training_flags(argparse.Namespace(time=None, max_steps=3)) == {"max_steps": 3}  # the default time applies


def test_training_flags_are_checked_as_they_are_read():
    with pytest.raises(RecipeError, match="^batch_size=0 must be at least 1$"):
        training_flags(argparse.Namespace(batch_size=0))
    with pytest.raises(RecipeError, match="^time='soon' is not a duration"):
        training_flags(argparse.Namespace(time="soon"))


def test_the_default_time_applies_when_no_budget_is_given(tmp_path):
    # --time left out is None in the namespace; it must not erase the recipe's default time budget.
    config = new_train_config(DEFAULTS["cpu"], training_flags(argparse.Namespace(time=None)), tmp_path)
    assert config.time == "10m"


def test_preset_errors_name_the_field():
    assert preset_config("tiny", max_seq_len=64).max_seq_len == 64
    with pytest.raises(RecipeError, match="max_seq_len"):
        preset_config("tiny", max_seq_len=7)


def test_epilog_lists_the_defaults_of_each_device_kind():
    epilog = defaults_epilog(DEFAULTS, ["  a note on the shape."])
    assert "  cpu: preset=tiny, time=10m" in epilog and "  gpu: preset=small" in epilog
    assert epilog.endswith("a note on the shape.") and max(map(len, epilog.splitlines())) <= 110


# -- one-line errors --------------------------------------------------------------------------------------------
def test_errors_a_user_can_fix_are_one_line(capsys):
    parser = argparse.ArgumentParser(prog="python -m recipes.toy")
    parser.add_argument("--fail", choices=("recipe", "extra", "bug"))

    def command(args: argparse.Namespace) -> None:
        raise {"recipe": RecipeError("--data x: no such folder"), "extra": KeyError("k"),
               "bug": ZeroDivisionError("oops")}[args.fail]

    with pytest.raises(SystemExit, match=r"^python -m recipes.toy: error: --data x: no such folder$"):
        run_command(parser, command, ["--fail", "recipe"])
    with pytest.raises(SystemExit, match="error: 'k'"):
        run_command(parser, command, ["--fail", "extra"], errors=(KeyError,))
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_command(parser, command, ["--fail", "bug"])


def test_an_interrupted_run_says_how_to_continue_and_exits_with_the_signal(tmp_path, capsys):
    import signal

    from bytemodels.app.recipe import stop_if_interrupted
    from bytemodels.train import TrainSummary

    parser = argparse.ArgumentParser(prog="python -m recipes.toy")
    parser.add_argument("--how", choices=("sigterm", "ctrl-c", "finished"))

    def command(args: argparse.Namespace) -> None:
        if args.how == "ctrl-c":  # before training: nothing to continue
            raise KeyboardInterrupt
        stop, signum = ("interrupted", signal.SIGTERM) if args.how == "sigterm" else ("max_steps", None)
        stop_if_interrupted(TrainSummary(tmp_path, 5, 100, 3.0, 3.0, stop, tmp_path / "step_000005", signum),
                            tmp_path)

    with pytest.raises(SystemExit) as failure:
        run_command(parser, command, ["--how", "sigterm"])
    assert failure.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err == (f"python -m recipes.toy: interrupted; continue with: python -m recipes.toy "
                                       f"--out {tmp_path} --resume\n")
    with pytest.raises(SystemExit) as failure:
        run_command(parser, command, ["--how", "ctrl-c"])
    assert failure.value.code == 130 and capsys.readouterr().err == "python -m recipes.toy: interrupted\n"
    run_command(parser, command, ["--how", "finished"])  # a finished run returns


def test_numbers_out_of_their_bounds_are_one_argparse_line(capsys):
    parser = argparse.ArgumentParser(prog="python -m recipes.toy")
    parser.add_argument("--limit", type=COUNT)
    parser.add_argument("--val-fraction", type=FRACTION)
    parser.add_argument("--top-p", type=number(float, above=0, at_most=1))
    assert vars(parser.parse_args(["--limit", "3", "--val-fraction", "0", "--top-p", "1"])) == {
        "limit": 3, "val_fraction": 0.0, "top_p": 1.0}

    def refused(*argv: str) -> str:
        with pytest.raises(SystemExit) as failure:
            run_command(parser, lambda args: None, argv)
        assert failure.value.code == 2
        return capsys.readouterr().err

    assert refused("--limit", "-5") == "python -m recipes.toy: error: argument --limit: must be at least 1, not -5\n"
    assert refused("--limit", "0").endswith("argument --limit: must be at least 1, not 0\n")
    assert refused("--val-fraction", "1").endswith("argument --val-fraction: must be at least 0 and below 1, not 1\n")
    assert refused("--top-p", "0").endswith("argument --top-p: must be above 0 and at most 1, not 0\n")
    assert refused("--top-p", "inf").endswith("argument --top-p: must be a finite number, not inf\n")
    # argparse's own errors are one line too (no usage block of dozens of lines)
    assert refused("--limit", "many") == "python -m recipes.toy: error: argument --limit: invalid int value: 'many'\n"
    assert refused("--unknown").count("\n") == 1


# -- the records cache of one codec, and what the comparison is measured on -----------------------------------
def test_records_dataset_is_built_once_without_empty_documents(tmp_path):
    reads = []

    def read():
        reads.append(1)
        yield from (b"abc", b"", b"defg", b"hi")

    dataset = records_dataset(read, Codec(), tmp_path, recipe="toy", source={"folder": "x"}, val_fraction=0.0)
    assert [document for document in dataset] == [(b"abc", 1), (b"defg", 1), (b"hi", 1)]
    assert dataset.layout == "records" and dataset.name == "toy"
    assert dataset.manifest["key"] == {"recipe": "toy", "source": {"folder": "x"}, "codec": Codec().config()}
    records_dataset(read, Codec(), tmp_path, recipe="toy", source={"folder": "x"}, val_fraction=0.0)
    assert len(reads) == 1  # the second build opens the cache without reading


def test_comparison_uses_the_documents_validation_covers_whole(tmp_path):
    def read():
        yield from (bytes(10), bytes(30), bytes(5))

    val = records_dataset(read, Codec(), tmp_path, recipe="toy", source={}, val_fraction=0.0).train
    # patch 8: records of 24, 40 and 16 ids; windows of 16 ids: 2, 3 and 1 of them
    assert [len(d) for d in compared_documents(val, 8, 16, eval_windows=5)] == [10, 30]
    assert [len(d) for d in compared_documents(val, 8, 16, eval_windows=1)] == [10]  # at least one
    summary = TrainSummary(run_dir=tmp_path, step=4, bytes_seen=100, val_bpb=2.5, best_val_bpb=2.5,
                           stop_reason="max_steps", checkpoint=None)
    path = save_comparison(tmp_path, {"model_bits_per_byte": 2.5}, summary, elapsed_s=1.234)
    assert json.loads(path.read_text()) == {"model_bits_per_byte": 2.5, "step": 4, "elapsed_s": 1.2,
                                            "stop_reason": "max_steps", "no_result": None}


# -- data-layer helpers: cache keys and records-layout arithmetic ---------------------------------------------
def test_cache_keys_follow_the_content_of_the_source_files(tmp_path):
    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    files = [folder / "a.wav", folder / "sub" / "b.wav"]
    for file in files:
        file.write_bytes(b"1234")
    key = folder_key(folder, files)
    assert key["files"] == 2 and str(tmp_path) not in json.dumps(key)  # no path: a moved folder keeps its cache
    assert file_key(files[0]) == {"sha256": hashlib.sha256(b"1234").hexdigest()}
    os.utime(files[1], ns=(0, 10**18))
    assert folder_key(folder, files) == key  # touched, not changed
    files[1].write_bytes(b"1235")
    assert folder_key(folder, files) != key


def test_records_layout_arithmetic():
    assert record_ids(64, 8) == 8 + 72  # header patch, then 64 bytes and EOS in 9 patches
    assert list(record_ids(np.array([10, 30, 5]), 8)) == [24, 40, 16]
    lengths = np.array([10, 30, 5])
    assert whole_document_windows(lengths, 8, 16, cap=5) == 5 and covered_documents(lengths, 8, 16, 5) == 2
    assert whole_document_windows(np.array([], dtype=np.int64), 8, 16, cap=5) == 1
