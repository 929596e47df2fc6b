import json

import pytest
import torch

from bytemodels import PRESETS, Megabyte, MegabyteConfig


def test_json_round_trip_keeps_every_field():
    config = MegabyteConfig.preset("small", patch_sizes=(32, 4), dims=(96, 64, 32), layers=(1, 1, 1),
                                   heads=(2, 2, 2), dropout=0.1)
    assert MegabyteConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("name, size", [("tiny", 1e6), ("small", 10e6), ("base", 40e6), ("large", 150e6)])
def test_presets_have_the_promised_sizes(name, size):
    with torch.device("meta"):  # shapes only: the large preset is counted without allocating its weights
        params = Megabyte(MegabyteConfig.preset(name)).num_parameters()
    assert 0.7 * size < params < 1.4 * size


def test_the_presets_are_the_four_documented_sizes():
    assert list(PRESETS) == ["tiny", "small", "base", "large"]


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="tiny, small, base, large"):
        MegabyteConfig.preset("huge")


def test_unknown_override_names_the_field():
    with pytest.raises(ValueError, match="patch_szie"):
        MegabyteConfig.preset("tiny", patch_szie=4)


@pytest.mark.parametrize("overrides, field", [
    (dict(dims=(64,)), "dims"),
    (dict(patch_sizes=(8, 3), dims=(32, 32, 32), layers=(1, 1, 1), heads=(2, 2, 2)), "patch_sizes"),
    (dict(heads=(3, 2)), "heads"),
    (dict(max_seq_len=100), "max_seq_len"),
    (dict(dims=(0, 0)), "dims"),  # used to fail deep inside the model's construction
    (dict(embed_dim=-1), "embed_dim"),
    (dict(mlp_ratio=0.0), "mlp_ratio"),
    (dict(rope_base=-10.0), "rope_base"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(hash_ngrams=(1, 3)), "hash_ngrams"),  # a 1-gram is the byte's own embedding
    (dict(hash_ngrams=(3, 3)), "hash_ngrams"),
    (dict(hash_ngrams=(2, 100)), "hash_ngrams"),
    (dict(hash_ngrams=(2,), hash_buckets=0), "hash_buckets"),
    (dict(hash_word_bytes=1), "hash_word_bytes"),  # a word of one byte is the byte itself
    (dict(hash_word_bytes=65), "hash_word_bytes"),
    (dict(hash_ngrams=(2,), ngram_dropout=1.0), "ngram_dropout"),  # nothing of the tables would be left
    (dict(ngram_dropout=-0.1), "ngram_dropout"),
    (dict(ngram_dropout=float("nan")), "ngram_dropout"),
    (dict(hash_ngrams=(2, 3), ngram_dropout=(0.1, 0.2, 0.3)), "ngram_dropout"),  # a rate per table: two tables
    (dict(hash_ngrams=(2, 3), ngram_dropout=(0.1, 1.0)), "ngram_dropout"),
    (dict(ngram_dropout=()), "ngram_dropout"),
    (dict(word_layers=1, word_dim=48), "word_dim"),  # the tiny preset's local heads are 32 wide
    (dict(word_layers=1, word_dim=-32), "word_dim"),
    (dict(word_layers=1, word_dim=2 ** 20), "word_dim"),  # beyond what a real model needs: memory bounded
])
def test_inconsistent_shapes_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        MegabyteConfig.preset("tiny", **overrides)


def test_flops_per_byte_grows_with_the_model():
    tiny, small = MegabyteConfig.preset("tiny"), MegabyteConfig.preset("small")
    assert 0 < tiny.flops_per_byte() < small.flops_per_byte()
    # Training costs three forward passes' worth (forward + backward).
    assert tiny.flops_per_byte() == pytest.approx(3 * tiny.flops_per_byte(training=False))


def test_a_config_records_its_model_format_and_an_older_one_is_refused_in_one_line(tmp_path):
    from bytemodels.config import MODEL_FORMAT, OlderFormatError

    tiny = MegabyteConfig.preset("tiny")
    saved = tiny.to_dict()
    assert saved["format"] == MODEL_FORMAT == 2
    assert MegabyteConfig.from_dict(saved) == tiny
    assert tiny.token_shift and tiny.cross_patch and tiny.qk_norm  # the ablation switches, on by default
    del saved["format"]  # a config.json of the first format, before formats were recorded
    with pytest.raises(OlderFormatError, match="written by an older bytemodels .no model format; this release reads "
                                               "format 2.: retrain the model, or load it with the bytemodels release"):
        MegabyteConfig.from_dict(saved)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**saved, "format": 1, "value_embeds": True}), encoding="utf-8")
    with pytest.raises(ValueError) as error:
        MegabyteConfig.load(path)
    assert str(error.value).startswith(f"{path}: written by an older bytemodels (model format 1;")
    assert "\n" not in str(error.value)
    with pytest.raises(OlderFormatError, match="written by a newer bytemodels .model format 3"):
        MegabyteConfig.from_dict({**saved, "format": 3})


@pytest.mark.parametrize("name, value", [("activation", "gelu"), ("value_embeds", True), ("input_skip", True),
                                         ("previous_byte", True), ("embed_gain", 30.0), ("head_gain", 8.0)])
def test_the_removed_switches_are_no_fields(name, value):
    with pytest.raises(ValueError, match=f"unknown MegabyteConfig field.*'{name}'"):
        MegabyteConfig.from_dict({**MegabyteConfig.preset("tiny").to_dict(), name: value})
