"""compare.py's ``bytemodels-words`` peer: bytemodels' Megabyte with word blocks run at word ends only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import compare
from benchmarks.baselines import WordBlocksMegabyte, word_ends
from bytemodels import Megabyte, MegabyteConfig, tokens
from story_helpers import stories, write_story_data

CONFIG = MegabyteConfig.preset("tiny", dims=(32, 32), layers=(1, 2), heads=(2, 2), max_seq_len=64,
                               hash_ngrams=(2, 3), hash_word_bytes=6, hash_buckets=64)


def ends_of(data: bytes) -> list[int]:
    return torch.nonzero(word_ends(torch.tensor([list(data)]))[0]).flatten().tolist()


def test_word_ends_are_the_positions_after_the_first_separator_of_each_run() -> None:
    # "hi, you": position 3 predicts the byte after "," (the first separator after "hi"); the space after "," is
    # the second of its run and ends nothing.
    assert ends_of(b"hi, you") == [0, 3]
    assert ends_of(b"a  b\n\nc.") == [0, 2, 5]
    assert ends_of("café au".encode()) == [0, 6]  # bytes of 128 or more stay inside words (the word table's rule)
    ids = torch.tensor([[tokens.BOS_ID, ord("a"), ord(" "), tokens.EOS_ID]])
    assert torch.nonzero(word_ends(ids)[0]).flatten().tolist() == [0, 3]  # special ids separate words


def windows(rows: int, seed: int = 0) -> torch.Tensor:
    stream = " ".join(stories(20, seed)).encode()[:rows * CONFIG.max_seq_len]
    return torch.tensor(list(stream)).view(rows, CONFIG.max_seq_len)


def test_the_word_blocks_are_causal_and_rows_do_not_see_each_others_padding() -> None:
    torch.manual_seed(0)
    model = WordBlocksMegabyte(CONFIG, word_capacity=24).eval()
    ids = windows(3)
    ids[1, 5:30] = ord("x")  # rows with different numbers of word ends
    assert len(set(word_ends(ids).sum(dim=1).tolist())) > 1
    with torch.no_grad():
        logits = model(ids).logits
        for position in (0, 17, 40, 63):
            assert compare.is_causal(model, ids, position)
            changed = ids.clone()  # every later byte a separator: many more word ends after the position
            changed[:, position:] = ord(" ")
            assert torch.allclose(model(changed).logits[:, :position + 1], logits[:, :position + 1], atol=1e-5)
        alone = torch.cat([model(ids[row:row + 1]).logits for row in range(len(ids))])
    assert torch.allclose(logits, alone, atol=1e-5)


def test_without_their_output_the_word_blocks_leave_megabyte_as_it_is() -> None:
    torch.manual_seed(0)
    plain = Megabyte(CONFIG).eval()
    words = WordBlocksMegabyte(CONFIG).eval()
    words.load_state_dict(plain.state_dict(), strict=False)
    ids = windows(2)
    with torch.no_grad():
        assert not torch.allclose(words(ids).logits, plain(ids).logits, atol=1e-4)  # the word blocks act
        words.word_out.weight.zero_()
        assert torch.allclose(words(ids).logits, plain(ids).logits, atol=1e-5)
    # and they learn: a training step reaches their weights
    words.train()
    words.word_out.weight.data.normal_()
    words(ids, ids).loss.backward()
    assert words.word_in.weight.grad.abs().sum() > 0 and words.word_blocks.blocks[0].mlp.up.weight.grad.abs().sum() > 0


def test_the_words_peer_counts_its_flops_and_is_measured_on_text_only(capsys: pytest.CaptureFixture[str]) -> None:
    model = WordBlocksMegabyte(CONFIG)
    assert 0 < model.word_flops_per_byte() < CONFIG.flops_per_byte()
    assert compare.peer_flops_per_byte(compare.WORD_PEER, model, CONFIG) == pytest.approx(
        CONFIG.flops_per_byte() + model.word_flops_per_byte())
    assert compare.WORD_PEER not in compare.peers_for("text", None)  # measured only when named
    with pytest.raises(SystemExit):
        compare.parse_args(["--modality", "mnist", "--peers", "bytemodels-words"])
    assert "word blocks are measured on --modality text only, not mnist" in capsys.readouterr().err


def test_quick_run_measures_the_words_peer_beside_bytemodels(tmp_path: Path) -> None:
    write_story_data(tmp_path / "data")
    record = compare.main(["--quick", "--peers", "bytemodels,bytemodels-words", "--skip-compressors",
                           "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                           "--cache-dir", str(tmp_path / "cache"), "--threads", "1"])
    peers = record["results"]["text"]["models"]["peers"]
    assert set(peers) == {"bytemodels", "bytemodels-words"}
    words = peers["bytemodels-words"]
    assert words["steps"] == 5 and 0 < words["bits_per_byte"] < 10
    assert words["parameters"] > peers["bytemodels"]["parameters"]
    assert words["flops_per_byte"] > peers["bytemodels"]["flops_per_byte"]
    assert "untrained_bytemodels-words" in record["results"]["text"]["models"]["checks"]
    assert any(line.startswith("text: bytemodels-words") for line in record["targets"])
