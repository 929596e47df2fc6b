"""Word blocks (``MegabyteConfig.word_layers``): blocks of the local width run at word ends only, in training,
cached decoding, compression and files; and compare.py's ``bytemodels-words`` peer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from benchmarks import compare
from bytemodels import Megabyte, MegabyteConfig, tokens
from bytemodels.words import word_ends
from model_helpers import use_input_skip
from story_helpers import stories, write_story_data

CONFIG = MegabyteConfig.preset("tiny", dims=(32, 32), layers=(1, 2), heads=(2, 2), max_seq_len=64,
                               hash_ngrams=(2, 3), hash_word_bytes=6, hash_buckets=64, word_layers=1)
PLAIN = dataclasses.replace(CONFIG, word_layers=0)


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
    # A left-padded row's first real position is one (PAD is "before the sequence"), the one after it is not.
    pad = tokens.PAD_ID
    ids = torch.tensor([[pad, pad, ord("a"), ord(" "), ord("b")], [pad, pad, tokens.BOS_ID, ord("a"), ord(" ")]])
    assert word_ends(ids)[:, 2:].tolist() == [[True, False, True], [True, False, False]]


def windows(rows: int, seed: int = 0) -> torch.Tensor:
    stream = " ".join(stories(20, seed)).encode()[:rows * CONFIG.max_seq_len]
    return torch.tensor(list(stream)).view(rows, CONFIG.max_seq_len)


def test_the_word_blocks_are_causal_and_rows_do_not_see_each_others_padding() -> None:
    torch.manual_seed(0)
    model = Megabyte(CONFIG).eval()
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
    plain = Megabyte(PLAIN).eval()
    words = Megabyte(CONFIG).eval()
    assert set(words.state_dict()) - set(plain.state_dict()) == {
        name for name in words.state_dict() if name.startswith("words.")}
    words.load_state_dict(plain.state_dict(), strict=False)
    ids = windows(2)
    with torch.no_grad():
        assert not torch.allclose(words(ids).logits, plain(ids).logits, atol=1e-4)  # the word blocks act
        words.words.project_out.weight.zero_()
        assert torch.allclose(words(ids).logits, plain(ids).logits, atol=1e-5)
    # and they learn: a training step reaches their weights
    words.train()
    words.words.project_out.weight.data.normal_()
    words(ids, ids).loss.backward()
    blocks = words.words.transformer.blocks
    assert words.words.project_in.weight.grad.abs().sum() > 0 and blocks[0].mlp.up.weight.grad.abs().sum() > 0


def test_the_words_peer_counts_its_flops_and_is_measured_on_text_only(capsys: pytest.CaptureFixture[str]) -> None:
    words = CONFIG.flops_per_byte() - PLAIN.flops_per_byte()
    # a quarter of the window's positions through one block of width 32 and two projections, fwd + bwd
    block = 2 * (4 * 32 * 32 + 2 * 32 * 128) + 2 * 2 * 32 * 16 / 2
    assert words == pytest.approx(3 * (block + 4 * 32 * 32) * 16 / 64)
    # 64 wide: the block at width 64, the projections 32 -> 64 -> 32
    wide = dataclasses.replace(CONFIG, word_dim=64)
    block = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 2 * 2 * 64 * 16 / 2
    assert wide.flops_per_byte() - PLAIN.flops_per_byte() == pytest.approx(3 * (block + 4 * 32 * 64) * 16 / 64)
    model = compare.build_peer(compare.WORD_PEER, PLAIN, seed=0)
    assert model.config == CONFIG
    assert compare.peer_flops_per_byte(compare.WORD_PEER, model, PLAIN) == pytest.approx(CONFIG.flops_per_byte())
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


# -- cached decoding: a slot per byte position, readable at word ends ------------------------------------------
TEXT = ("Once upon a time, a cat and a dog sat in the sun. The dog said: \"hi, cat!\" and ran off... "
        "x y z 1 2 3 \u00e9t\u00e9 caf\u00e9.").encode()


def small_model(**fields) -> Megabyte:
    torch.manual_seed(0)
    shape = dict(patch_sizes=(4,), dims=(32, 16), layers=(1, 2), heads=(2, 1), max_seq_len=64, word_layers=1)
    return use_input_skip(Megabyte(MegabyteConfig.preset("tiny", **{**shape, **fields})).eval())


@pytest.mark.parametrize("fields", [{}, dict(word_layers=2, cross_patch=False), dict(hash_ngrams=(2,),
                                    hash_word_bytes=5, hash_buckets=31), dict(word_dim=48)],
                         ids=["one", "two, no cross-patch", "hashed", "wider than the local stage"])
def test_cached_greedy_decoding_matches_the_uncached_forward_past_the_capacity_and_the_window(fields) -> None:
    model = small_model(**fields)
    prompts = [b"", TEXT[:3], TEXT[:30], TEXT[:61], TEXT]  # left padding, a window's worth of words, a crop
    assert int(word_ends(torch.tensor([list(TEXT[:64])])).sum()) > model.config.word_capacity
    cached = model.generate(prompts, 150, temperature=0)
    assert cached == model.generate(prompts, 150, temperature=0, use_cache=False)
    # rows that share a patch alignment decode together and are cut to the window together: one by one, within it
    assert [out[:20] for out in cached] == [model.generate(prompt, 20, temperature=0) for prompt in prompts[:4]] + [
        model.generate(TEXT, 20, temperature=0, use_cache=False)]
    # past the window's cut, twice (an untrained model may also write EOS early)
    assert max(len(prompt) + len(out) for prompt, out in zip(prompts, cached)) > 2 * model.config.max_seq_len
    # the word blocks act in decoding: without their output the model writes something else
    model.words.project_out.weight.data.zero_()
    assert model.generate(prompts, 150, temperature=0) != cached


def test_a_wider_word_block_projects_to_its_width_with_heads_of_the_local_width() -> None:
    model = small_model(word_dim=48)  # the local stage: 16 wide, one head of 16
    words = model.words
    assert (words.project_in.in_features, words.project_in.out_features) == (16, 48)
    assert (words.project_out.in_features, words.project_out.out_features) == (48, 16)
    assert words.transformer.blocks[0].attn.heads == 3 == model.config.word_heads
    assert model.config.word_width == 48 and small_model().config.word_width == 16  # 0: the local width


def test_cached_logits_match_the_forward_at_every_position() -> None:
    from bytemodels.generate import IncrementalDecoder

    model = small_model()
    ids = torch.tensor([list(TEXT[:9])])
    decoder = IncrementalDecoder(model, ids)
    for position in range(9, 64):  # to the end of the window
        logits = decoder.logits()
        full = model(torch.cat((decoder.ids, torch.full((1, 1), tokens.PAD_ID)), dim=1)).logits[:, position]
        assert torch.allclose(logits, full, atol=1e-4), position
        decoder.append(torch.tensor([TEXT[position]]))
    assert int(decoder.word_count) > model.config.word_capacity  # later word ends found, and left out


def test_the_prefill_runs_the_prompt_at_once_and_matches_the_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """The prompt's first local block runs in one pass and the word blocks in chunks; then only the groups that
    cross-patch attention reaches run one by one, and every later position's logits are the forward's."""
    from bytemodels import generate
    from bytemodels.generate import IncrementalDecoder

    monkeypatch.setattr(generate, "WORD_PREFILL_CHUNK", 11)  # the word blocks' pass in chunks, across patches
    restarts = []
    prefill = IncrementalDecoder._prefill_words
    monkeypatch.setattr(IncrementalDecoder, "_prefill_words",
                        lambda decoder, end: restarts.append(prefill(decoder, end)) or restarts[-1])
    for fields in ({}, dict(cross_patch=False, word_dim=32)):
        model = small_model(**fields)
        decoder = IncrementalDecoder(model, torch.tensor([list(TEXT[:50]), list(TEXT[5:55])]))
        for position in range(50, 64):
            logits = decoder.logits()
            full = model(torch.cat((decoder.ids, torch.full((2, 1), tokens.PAD_ID)), dim=1)).logits[:, position]
            assert torch.allclose(logits, full, atol=1e-4), (fields, position)
            decoder.append(torch.tensor([TEXT[position], TEXT[position + 5]]))
    # patches of 4: the current group starts at byte 48; two blocks with token shift reach 6 groups back
    assert restarts == [48 - 6 * 4, 48]


def test_compiled_word_steps_match_the_uncompiled_ones() -> None:
    from torch._dynamo.utils import counters

    model = small_model()
    prompts = [TEXT[:2], TEXT[:26]]  # one alignment: one batch, left padding included
    torch._dynamo.reset()
    counters.clear()
    eager = model.generate(prompts, 40, temperature=0)
    assert model.generate(prompts, 40, temperature=0, compile=True) == eager
    sampled = model.generate(prompts, 40, temperature=0.8, seed=3)
    assert model.generate(prompts, 40, temperature=0.8, seed=3, compile=True) == sampled != eager
    assert counters["stats"]["unique_graphs"] == 2  # one global and one local step, whether a byte ends a word or not


def test_bf16_decoding_matches_the_uncached_forward() -> None:
    from bytemodels.generate import IncrementalDecoder

    model = small_model()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        decoder = IncrementalDecoder(model, torch.tensor([list(TEXT[:7])]))
        for position in range(7, 64):  # bf16's rounding apart (greedy bytes may differ at a near-tie)
            logits = decoder.logits()
            full = model(torch.cat((decoder.ids, torch.full((1, 1), tokens.PAD_ID)), dim=1)).logits[:, position]
            assert torch.allclose(logits, full.float(), atol=0.05), position
            decoder.append(torch.tensor([TEXT[position]]))


def test_files_record_the_word_blocks(tmp_path: Path) -> None:
    model = small_model()
    model.save_pretrained(tmp_path / "words")
    loaded = Megabyte.from_pretrained(tmp_path / "words")
    assert loaded.config.word_layers == 1 and loaded.words is not None
    ids = torch.tensor([list(TEXT[:50])])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_compression_round_trips_through_the_word_steps() -> None:
    from bytemodels import compress, decompress

    model = small_model()
    data = TEXT * 3
    blob = compress(model, data, batch_size=2)
    assert decompress(model, blob) == data
    documents = TEXT + b"\n\n" + TEXT[:40]
    assert decompress(model, compress(model, documents, separator=b"\n\n")) == documents


def test_config_refuses_word_blocks_without_a_local_block() -> None:
    with pytest.raises(ValueError, match="word_layers=1 needs a local block"):
        MegabyteConfig(layers=(4, 0), word_layers=1)
    with pytest.raises(ValueError, match="word_layers=-1"):
        MegabyteConfig(word_layers=-1)
    assert MegabyteConfig(max_seq_len=1024).word_capacity == 256


def test_a_chunk_through_the_word_cache_equals_its_positions_one_by_one() -> None:
    """The prefill's chunks and the byte step's single positions agree: token shift reads the newest word end
    before each position, in the chunk or (``SparseShift``'s -1) in the cache."""
    from bytemodels.layers import StaticCache

    model = small_model(word_layers=2)
    words = model.words
    ids = torch.tensor([list(TEXT[:40]), list(TEXT[50:90])])
    stream = torch.randn(2, 40, 16)

    def run(chunks: list[int]) -> torch.Tensor:
        cache = StaticCache(2, 1, 16, 40, 0, torch.zeros(2, 40, dtype=torch.bool), torch.float32, torch.float32)
        count, outputs, first = torch.zeros(2, dtype=torch.long), [], 0
        for time in chunks:
            view = cache.view(time)
            cache.advance(time)
            window = torch.nn.functional.pad(ids, (2, 0), value=tokens.PAD_ID)[:, first:first + time + 2]
            tracked = words.track(window, count, view.readable, view.slots, words.rope_table(ids.device))
            outputs.append(words.adder(*view, *tracked)(stream[:, first:first + time]))
            first += time
        return torch.cat(outputs, dim=1)

    with torch.no_grad():
        whole, single, mixed = run([40]), run([1] * 40), run([3, 8, 1, 1, 13, 14])
        # and what training computes from the same stream
        trained = words(stream.reshape(2 * 10, 4, 16), ids).reshape(2, 40, 16)
    assert torch.allclose(whole, single, atol=1e-5) and torch.allclose(whole, mixed, atol=1e-5)
    assert torch.allclose(whole, trained, atol=1e-5)
    assert not torch.allclose(whole, stream)  # the word blocks added something
