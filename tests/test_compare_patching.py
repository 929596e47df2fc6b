"""compare.py's patching peers: SpaceByte's space patches, BLT's entropy patches and the model over either."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import compare
from benchmarks.baselines import (SpaceByteConfig, SpaceByteModel, entropy_boundaries, entropy_threshold, is_spacelike,
                                  mean_patch_size, next_byte_entropy, ngram_entropy_table, space_boundaries,
                                  spacebyte_config_matching, spacebyte_parameter_count)
from bytemodels import Megabyte, MegabyteConfig, tokens
from story_helpers import stories, write_story_data

TINY = SpaceByteConfig(local_dim=16, local_layers_before=1, local_layers_after=1, local_heads=2, global_dim=32,
                       global_layers=2, global_heads=2, max_seq_len=64)


def ids_of(data: bytes) -> torch.Tensor:
    return torch.tensor([list(data)])


def starts_of(data: bytes) -> list[int]:
    return torch.nonzero(space_boundaries(ids_of(data))[0]).flatten().tolist()


def test_space_patches_start_after_the_first_of_each_run_of_spacelike_bytes() -> None:
    # "hi, you": the global blocks run at "," (spacelike after a letter), which predicts the byte after it; the
    # space after "," follows a spacelike byte and starts nothing.
    assert starts_of(b"hi, you") == [0, 3]
    assert starts_of(b"a  b\n\nc") == [0, 2, 5]
    assert starts_of(b"x1y2Z9") == [0]  # letters and digits never start a patch


def test_utf8_lead_bytes_are_spacelike_and_continuation_bytes_are_not() -> None:
    # caf\xc3\xa9 au: the lead byte 0xC3 is spacelike (a start after it), the continuation 0xA9 is not, so the space
    # after it (preceded by a non-spacelike byte) starts a patch too.
    assert starts_of("café au".encode()) == [0, 4, 6]
    # Three continuation bytes after a 4-byte lead (an emoji): one start, after the lead byte.
    assert starts_of("a🙂b".encode()) == [0, 2]
    assert starts_of(bytes([0x80, 0xBF, 0x41])) == [0]


def test_special_ids_always_start_the_next_patch() -> None:
    ids = torch.tensor([[tokens.BOS_ID, tokens.FIRST_TAG_ID, ord("a"), ord(" "), tokens.EOS_ID, tokens.BOS_ID, ord("b")]])
    # BOS, the tag and EOS start a patch after them even when they follow another spacelike id (SpaceByte: BOS).
    assert torch.nonzero(space_boundaries(ids)[0]).flatten().tolist() == [0, 1, 2, 4, 5, 6]


def text_windows(count: int, seq_len: int, seed: int) -> np.ndarray:
    stream = " ".join(stories(count, seed)).encode()
    usable = len(stream) // seq_len * seq_len
    return np.frombuffer(stream[:usable], dtype=np.uint8).astype(np.int64).reshape(-1, seq_len)


@pytest.fixture(scope="module")
def entropy_table() -> torch.Tensor:
    return ngram_entropy_table(text_windows(200, 64, 0), order=3)


def test_entropy_is_high_where_the_next_byte_is_hard_to_guess(entropy_table: torch.Tensor) -> None:
    entropy = next_byte_entropy(ids_of(b"once upon a time"), entropy_table)[0]
    # Only "once" has "nc" (the next byte is all but sure; add-k smoothing keeps some bits); after "e " and "a "
    # any word may follow.
    assert entropy[3] < 2.0 and entropy[5] > 3.5 and entropy[12] > 3.5  # "e" after "nc"; "u" after "e ", "t" after "a "
    assert entropy.shape == (16,) and entropy_table.shape == (257 ** 2,)


def test_entropy_patches_are_causal(entropy_table: torch.Tensor) -> None:
    ids = torch.from_numpy(text_windows(40, 64, 1)[:4])
    starts = entropy_boundaries(ids, entropy_table, 2.0)
    for position in (0, 10, 37, 63):
        changed = ids.clone()
        changed[:, position:] = (changed[:, position:] + 7) % 256
        assert torch.equal(entropy_boundaries(changed, entropy_table, 2.0)[:, :position + 1], starts[:, :position + 1])
    assert starts[:, 0].all()


@pytest.mark.parametrize("target", [2.0, 4.0, 6.0])
def test_the_entropy_threshold_reaches_the_target_mean_patch(entropy_table: torch.Tensor, target: float) -> None:
    train = text_windows(200, 64, 0)
    held_out = torch.from_numpy(text_windows(60, 64, 5))
    threshold = entropy_threshold(train, entropy_table, target)
    assert mean_patch_size(entropy_boundaries(torch.from_numpy(train), entropy_table, threshold)) == \
        pytest.approx(target, rel=0.15)
    assert mean_patch_size(entropy_boundaries(held_out, entropy_table, threshold)) == pytest.approx(target, rel=0.25)


def test_the_entropy_threshold_copes_with_constant_data() -> None:
    # Black images: one context, one entropy value; the nearest mean is then one patch per window, or every byte.
    windows = np.zeros((8, 32), dtype=np.int64)
    table = ngram_entropy_table(windows, order=2)
    threshold = entropy_threshold(windows, table, 6.0)
    assert mean_patch_size(entropy_boundaries(torch.from_numpy(windows), table, threshold)) in (32.0, 1.0)


def model_and_ids(boundaries, seed: int = 0) -> tuple[SpaceByteModel, torch.Tensor]:
    torch.manual_seed(seed)
    model = SpaceByteModel(TINY, boundaries).eval()
    ids = torch.from_numpy(text_windows(30, 64, seed)[:3])
    ids[1, 5:20] = ord("x")  # rows with different numbers of patches
    ids[2, 30] = tokens.EOS_ID
    return model, ids


@pytest.mark.parametrize("patcher", ["space", "entropy"])
def test_the_model_is_causal_and_rows_do_not_see_each_others_padding(entropy_table, patcher: str) -> None:
    rule = space_boundaries if patcher == "space" else (lambda ids: entropy_boundaries(ids, entropy_table, 2.5))
    model, ids = model_and_ids(rule)
    counts = rule(ids).sum(dim=1)
    assert len(set(counts.tolist())) > 1  # the batch pads rows to the largest patch count
    with torch.no_grad():
        logits = model(ids).logits
        for position in (0, 17, 40, 63):
            assert compare.is_causal(model, ids, position)
            # Also with the later bytes' spacelike-ness flipped (a shift by one mostly keeps it).
            changed = ids.clone()
            changed[:, position:] = torch.where(is_spacelike(ids[:, position:]), ord("a"), ord(" "))
            assert torch.allclose(model(changed).logits[:, :position + 1], logits[:, :position + 1], atol=1e-5)
        # Each row alone (no padding at all) gives the same logits as in the padded batch.
        alone = torch.cat([model(ids[row:row + 1]).logits for row in range(len(ids))])
    assert torch.allclose(logits, alone, atol=1e-5)


def test_the_model_is_sized_to_bytemodels_parameters() -> None:
    config = MegabyteConfig.preset("tiny")
    ours = Megabyte(config).num_parameters()
    shape = spacebyte_config_matching(config, ours)
    assert (shape.local_dim, shape.global_dim, shape.local_heads, shape.global_heads) == (64, 128, 2, 4)
    assert abs(spacebyte_parameter_count(shape) - ours) < 0.1 * ours
    # FLOPs per byte fall as patches grow (global blocks run once per patch) but never below the local blocks'.
    assert shape.flops_per_byte(8.0) < shape.flops_per_byte(4.0) < shape.flops_per_byte(1.0)


def test_patching_peer_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert "spacebyte" not in compare.peers_for("text", None)  # measured only when named
    args = compare.parse_args(["--modality", "mnist", "--peers", "bytemodels,entropybyte", "--mean-patch", "28"])
    assert args.mean_patch == 28.0 and args.ngram_order == 3
    for argv, message in ((["--modality", "mnist", "--peers", "spacebyte"], "--peers spacebyte: space patches are "
                           "measured on --modality text only, not mnist"),
                          (["--mean-patch", "0.5"], "--mean-patch 0.5: give a mean patch size of 1 byte or more"),
                          (["--ngram-order", "4"], "--ngram-order 4: give 1, 2 or 3")):
        with pytest.raises(SystemExit):
            compare.parse_args(argv)
        assert message in capsys.readouterr().err


def test_quick_run_measures_the_patching_peers_beside_bytemodels(tmp_path: Path) -> None:
    write_story_data(tmp_path / "data")
    # Dropout on: the causality checks must hold the peers still (eval mode), not compare two random draws.
    record = compare.main(["--quick", "--peers", "bytemodels,spacebyte,entropybyte", "--skip-compressors",
                           "--dropout", "0.1", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                           "--cache-dir", str(tmp_path / "cache"), "--threads", "1"])
    peers = record["results"]["text"]["models"]["peers"]
    assert set(peers) == {"bytemodels", "spacebyte", "entropybyte"}
    space, entropy = peers["spacebyte"], peers["entropybyte"]
    for peer in (space, entropy):
        assert peer["steps"] == 5 and 0 < peer["bits_per_byte"] < 10 and peer["checks"]["causal"]
        assert peer["bytemodels_parameters"] == peers["bytemodels"]["parameters"]
        assert peer["flops_per_byte"] > 0 and peer["val_mean_patch"] > 1
    # On text the entropy threshold aims at the space patcher's mean on the training windows.
    assert entropy["target_mean_patch"] == pytest.approx(space["train_mean_patch"])
    assert entropy["train_mean_patch"] == pytest.approx(space["train_mean_patch"], rel=0.2)
    assert peers["bytemodels"]["flops_per_byte"] > 0
    assert any(line.startswith("text: entropybyte") and "rule: at least 3% lower" in line for line in record["targets"])
    [written] = (tmp_path / "out").glob("compare-*.json")
    assert json.loads(written.read_text())["results"]["text"]["models"]["peers"]["spacebyte"]["val_mean_patch"] \
        == space["val_mean_patch"]
