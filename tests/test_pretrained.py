import pytest
import torch

from bytemodels import Megabyte, MegabyteConfig, ModelFileError
from bytemodels.pretrained import CONFIG_FILE, WEIGHTS_FILE

SHAPE = dict(patch_sizes=(4,), dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=64)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = Megabyte(MegabyteConfig.preset("tiny", **SHAPE)).eval()
    model.save_pretrained(tmp_path / "model")
    return model, tmp_path / "model"


def test_round_trip_gives_identical_logits(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    loaded = Megabyte.from_pretrained(folder).eval()
    ids = torch.randint(0, 256, (2, 19))
    assert loaded.config == model.config
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_a_loaded_model_is_in_eval_mode_and_a_bad_device_is_not_blamed_on_the_file(saved):
    _, folder = saved
    assert not Megabyte.from_pretrained(folder).training  # dropout off, as after Hugging Face's from_pretrained
    with pytest.raises(ValueError, match="'bogus' is not a device name"):
        Megabyte.from_pretrained(folder, map_location="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' is not available"):  # it said "unreadable or truncated weights"
            Megabyte.from_pretrained(folder, map_location="cuda")


def test_truncated_weights_name_the_file(saved):
    _, folder = saved
    weights = folder / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelFileError, match=WEIGHTS_FILE):
        Megabyte.from_pretrained(folder)


def test_missing_file_names_it(saved):
    _, folder = saved
    (folder / CONFIG_FILE).unlink()
    with pytest.raises(ModelFileError, match=f"{CONFIG_FILE}: file is missing"):
        Megabyte.from_pretrained(folder)


def test_weights_that_do_not_match_the_config_name_both_files(saved):
    _, folder = saved
    MegabyteConfig.preset("tiny", **{**SHAPE, "dims": (64, 16), "heads": (2, 1)}).save(folder / CONFIG_FILE)
    with pytest.raises(ModelFileError, match="do not match"):
        Megabyte.from_pretrained(folder)


@pytest.mark.parametrize("recorded", [None, 1])
def test_a_config_of_an_older_model_format_is_refused_in_one_line(saved, recorded):
    import json

    _, folder = saved
    path = folder / CONFIG_FILE
    values = json.loads(path.read_text(encoding="utf-8"))
    assert values["format"] == 2
    del values["format"]
    if recorded is not None:
        values["format"] = recorded
    # A first-format config had switches this release no longer has; with the same weights it computed another
    # function, so it must not load as if it were today's.
    path.write_text(json.dumps({**values, "value_embeds": True}), encoding="utf-8")
    with pytest.raises(ModelFileError) as error:
        Megabyte.from_pretrained(folder)
    message = str(error.value)
    assert message.startswith(f"{path}: written by an older bytemodels (")
    assert "retrain the model, or load it with the bytemodels release that wrote it" in message
    assert "\n" not in message
