"""Checkpoint files: atomic folders, verification, pruning, best/, and no unpickling."""

from __future__ import annotations

import json

import pytest
import torch

from bytemodels import checkpoint as ckpt
from bytemodels.config import MegabyteConfig
from bytemodels.model import Megabyte


def tiny_model() -> Megabyte:
    torch.manual_seed(0)
    return Megabyte(MegabyteConfig.preset("tiny", dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=32))


def write(root, step, model, optimizer, **state):
    return ckpt.save_checkpoint(root, step, write_model=model.save_pretrained,
                                optimizer_state=optimizer.state_dict(),
                                rng_tensors={"torch_cpu": torch.get_rng_state()}, state={"note": "x", **state},
                                train_config={"lr": 0.1}, metadata={"codec": {"name": "text"}})


def trained_pair():
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 256, (2, 32))
    model(ids, ids).loss.backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_restores_weights_optimizer_and_configs(tmp_path):
    model, optimizer = trained_pair()
    path = write(tmp_path, 7, model, optimizer)
    assert path.name == "step_000007"
    assert (tmp_path / ckpt.LATEST_FILE).read_text().strip() == "step_000007"
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded.step == 7 and loaded.metadata == {"codec": {"name": "text"}} and loaded.train_config == {"lr": 0.1}
    state = loaded.model_state()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    restored = torch.optim.AdamW(tiny_model().parameters(), lr=1e-3)
    restored.load_state_dict(loaded.optimizer_state())
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    # A checkpoint folder is a model folder.
    again = Megabyte.from_pretrained(path)
    assert torch.equal(again.head.weight, model.head.weight)


def test_a_truncated_file_names_itself_and_the_intact_previous_checkpoint(tmp_path):
    model, optimizer = trained_pair()
    first = write(tmp_path, 1, model, optimizer)
    second = write(tmp_path, 2, model, optimizer)
    weights = second / ckpt.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match=r"step_000002/model\.safetensors.*truncated.*step_000001.*intact"):
        ckpt.load_checkpoint(tmp_path)
    assert ckpt.load_checkpoint(first).step == 1


def test_a_flipped_byte_is_caught_by_the_checksum(tmp_path):
    model, optimizer = trained_pair()
    path = write(tmp_path, 3, model, optimizer)
    data = bytearray((path / ckpt.OPTIMIZER_FILE).read_bytes())
    data[-20] ^= 0xFF
    (path / ckpt.OPTIMIZER_FILE).write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=r"optimizer\.pt.*checksum"):
        ckpt.load_checkpoint(path)


def test_a_damaged_state_file_is_a_clear_error(tmp_path):
    model, optimizer = trained_pair()
    path = write(tmp_path, 3, model, optimizer)
    (path / ckpt.STATE_FILE).write_text('{"format": 1, "st')
    with pytest.raises(ckpt.CheckpointError, match=r"trainer_state\.json"):
        ckpt.load_checkpoint(path)


def test_a_checkpoint_of_an_older_format_is_refused_in_one_line(tmp_path):
    model, optimizer = trained_pair()
    path = write(tmp_path, 3, model, optimizer)
    state = json.loads((path / ckpt.STATE_FILE).read_text())
    assert state["format"] == ckpt.FORMAT_VERSION == 2
    (path / ckpt.STATE_FILE).write_text(json.dumps({**state, "format": 1}))
    with pytest.raises(ckpt.CheckpointError) as error:
        ckpt.load_checkpoint(path)
    assert str(error.value) == (f"{path / ckpt.STATE_FILE}: written by an older bytemodels (checkpoint format 1; "
                                "this release reads format 2): retrain, or use the bytemodels release that wrote it")
    with pytest.raises(ckpt.CheckpointError, match="older bytemodels"):
        Megabyte.from_pretrained(path)  # a checkpoint folder read as a model folder says the same


def test_unfinished_folders_are_ignored_and_pruning_keeps_the_newest(tmp_path):
    model, optimizer = trained_pair()
    for step in (1, 2, 3, 4):
        write(tmp_path, step, model, optimizer)
    ckpt.update_best(tmp_path, tmp_path / "step_000002")
    (tmp_path / ".step_000005.tmp-abc").mkdir()  # what a kill during a save leaves behind
    (tmp_path / "step_000009").mkdir()  # no trainer_state.json: not a checkpoint
    ckpt.prune_checkpoints(tmp_path, keep_last=2)
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000004"
    best = ckpt.load_checkpoint(tmp_path / ckpt.BEST_DIR)  # best/ survives pruning of its step folder
    assert best.step == 2


def test_saving_a_step_again_replaces_it_whole(tmp_path):
    model, optimizer = trained_pair()
    write(tmp_path, 5, model, optimizer, note="first")
    write(tmp_path, 5, model, optimizer, note="second")
    assert ckpt.load_checkpoint(tmp_path).state["note"] == "second"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


class Payload:
    """Any class: a pickle of it must never be loaded."""


def test_optimizer_state_is_loaded_without_unpickling_objects(tmp_path):
    model, optimizer = trained_pair()
    path = write(tmp_path, 1, model, optimizer)
    torch.save({"state": {}, "param_groups": [], "evil": Payload()}, path / ckpt.OPTIMIZER_FILE)
    loaded = ckpt.Checkpoint(path, {}, {}, {}, None)
    with pytest.raises(ckpt.CheckpointError, match="optimizer.pt.*unsafe"):
        loaded.optimizer_state()


def test_nothing_but_json_and_tensors_in_the_folder(tmp_path):
    model, optimizer = trained_pair()
    path = write(tmp_path, 1, model, optimizer)
    names = sorted(p.name for p in path.iterdir())
    assert names == sorted([ckpt.MODEL_CONFIG_FILE, ckpt.WEIGHTS_FILE, ckpt.OPTIMIZER_FILE, ckpt.RNG_FILE,
                            ckpt.TRAIN_CONFIG_FILE, ckpt.METADATA_FILE, ckpt.STATE_FILE])
    state = json.loads((path / ckpt.STATE_FILE).read_text())
    assert set(state["files"]) == set(names) - {ckpt.STATE_FILE}


# -- the one atomic-write helper (checkpoints, model folders, plots) -------------------------------------------
@pytest.mark.parametrize("data", ["new text\n", b"\x00new bytes"])
def test_atomic_write_replaces_whole_or_keeps_the_old_file(tmp_path, monkeypatch, data):
    import errno
    import os

    from bytemodels.runfolder import atomic_write

    path = tmp_path / "file"
    path.write_text("old\n")
    atomic_write(path, data)
    assert path.read_bytes() == (data.encode() if isinstance(data, str) else data)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]

    def full_disk(fd):  # the data reached the page cache; the disk refuses it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        atomic_write(path, "never seen")
    assert path.read_bytes() == (data.encode() if isinstance(data, str) else data)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # no temporary file left behind
