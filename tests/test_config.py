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
])
def test_inconsistent_shapes_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        MegabyteConfig.preset("tiny", **overrides)


def test_flops_per_byte_grows_with_the_model():
    tiny, small = MegabyteConfig.preset("tiny"), MegabyteConfig.preset("small")
    assert 0 < tiny.flops_per_byte() < small.flops_per_byte()
    # Training costs three forward passes' worth (forward + backward).
    assert tiny.flops_per_byte() == pytest.approx(3 * tiny.flops_per_byte(training=False))


def test_config_saved_before_the_switches_loads_with_them_off():
    saved = MegabyteConfig.preset("tiny").to_dict()
    switches = ("token_shift", "previous_byte", "cross_patch", "activation", "qk_norm", "input_skip", "value_embeds",
                "embed_gain", "head_gain")
    for name in switches:
        del saved[name]
    old = MegabyteConfig.from_dict(saved)
    assert tuple(getattr(old, name) for name in switches) == (False, False, False, "gelu", False, False, False, 1, 1)
    tiny = MegabyteConfig.preset("tiny")
    assert tiny.token_shift and tiny.previous_byte and tiny.cross_patch and tiny.qk_norm
    assert tiny.input_skip and tiny.value_embeds
    assert tiny.activation == "relu2"
    assert MegabyteConfig.from_dict(tiny.to_dict()) == tiny


@pytest.mark.parametrize("name", ["embed_gain", "head_gain"])
def test_a_gain_must_be_positive(name):
    with pytest.raises(ValueError, match=f"{name}=0.0 must be positive"):
        MegabyteConfig.preset("tiny", **{name: 0.0})


def test_activation_names_match_the_layers_and_bad_ones_are_refused():
    from bytemodels.layers import ACTIVATIONS
    from bytemodels.config import ACTIVATION_NAMES

    assert set(ACTIVATION_NAMES) == set(ACTIVATIONS)
    with pytest.raises(ValueError, match="activation='swish'; choose one of: relu2, gelu"):
        MegabyteConfig.preset("tiny", activation="swish")
