"""compare.py's tokenized peer (``gpt-bpe``): the byte-level BPE, the GPT and its bits-per-byte accounting."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("tokenizers")

from benchmarks import compare  # noqa: E402
from benchmarks.baselines import ModelOutput, TokenGpt, token_gpt_config_matching  # noqa: E402
from bytemodels import Megabyte, MegabyteConfig  # noqa: E402
from story_helpers import stories, write_story_data  # noqa: E402

#: Text the training stories never show: control bytes, CRLF, tabs, a NUL, accents, CJK, emoji, combining marks,
#: bidirectional marks, a line separator, the EOS token's own spelling, and spaces at both ends.
ODD_TEXTS = ["\x00\x01\x7f ÿ\r\n\t end", "日本語のテキスト 🙂👍🏽 e\u0301 \u202eabc\u202c \u2028x",
             f"a {compare.BPE_EOS} b", "  leading and trailing  ", "", "Ünïcödé ß ſ ﬁ", "\ufeffBOM"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    items = [story.encode() for story in stories(60, 0)]
    tokenizer, path = compare.bpe_tokenizer(items, 300, tmp_path_factory.mktemp("bpe"))
    return tokenizer


def split_on_eos(stream: compare.TokenStream, eos_id: int) -> list[list[int]]:
    """The stories' token lists of a stream (each ends with EOS)."""
    ends = np.flatnonzero(stream.ids == eos_id)
    return [stream.ids[start:end].tolist() for start, end in zip(np.concatenate(([0], ends[:-1] + 1)), ends)]


def test_bpe_round_trip_is_exact_on_odd_text(tokenizer) -> None:
    eos_id = tokenizer.token_to_id(compare.BPE_EOS)
    items = [text.encode("utf-8") for text in ODD_TEXTS]
    stream = compare.tokenize_stories(tokenizer, items, eos_id, "validation")
    pieces = split_on_eos(stream, eos_id)
    assert len(pieces) == len(items)  # EOS ends each story and nothing else, even "<|eos|>" written in one
    assert [tokenizer.decode(ids, skip_special_tokens=False).encode("utf-8") for ids in pieces] == items
    assert stream.num_bytes == sum(map(len, items)) and stream.scored.tolist() == (stream.ids != eos_id).tolist()
    assert tokenizer.get_vocab_size() == 300


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=40), min_size=1, max_size=4))
def test_bpe_round_trip_is_exact_on_any_text(tokenizer, texts: list[str]) -> None:
    eos_id = tokenizer.token_to_id(compare.BPE_EOS)
    items = [text.encode("utf-8") for text in texts]
    stream = compare.tokenize_stories(tokenizer, items, eos_id, "validation")
    assert [tokenizer.decode(ids, skip_special_tokens=False).encode("utf-8")
            for ids in split_on_eos(stream, eos_id)] == items


def test_a_tokenizer_that_loses_bytes_is_refused(tmp_path: Path) -> None:
    # Without the 256 byte symbols in its alphabet a BPE drops what training never showed: the scores would be of
    # other bytes than the byte peers', so tokenizing fails loudly instead.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    lossy = Tokenizer(models.BPE())
    lossy.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    lossy.decoder = decoders.ByteLevel()
    lossy.train_from_iterator(stories(20, 1), trainers.BpeTrainer(vocab_size=200, special_tokens=[compare.BPE_EOS],
                                                                  show_progress=False))
    with pytest.raises(ValueError, match=r"BPE round trip failed on validation story 1 \(first difference at byte 4"):
        compare.tokenize_stories(lossy, [b"once", "once\u00ff".encode()], 0, "validation")


def test_the_bpe_is_cached_by_text_and_vocabulary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = [story.encode() for story in stories(30, 2)]
    first, path = compare.bpe_tokenizer(items, 280, tmp_path)
    again, same = compare.bpe_tokenizer(items, 280, tmp_path)
    assert same == path and again.to_str() == first.to_str()
    assert compare.bpe_tokenizer(items, 290, tmp_path)[1] != path  # another vocabulary, another file
    assert compare.bpe_tokenizer(items[:-1], 280, tmp_path)[1] != path  # other text, another file
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bpe-280-.*\.json: unreadable tokenizer cache .*; delete it"):
        compare.bpe_tokenizer(items, 280, tmp_path)
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # not installed
    with pytest.raises(ValueError, match="needs the tokenizers package: pip install tokenizers"):
        compare.bpe_tokenizer(items, 280, tmp_path)


def test_the_gpt_is_causal_tied_and_sized_like_bytemodels() -> None:
    config = MegabyteConfig.preset("tiny", dims=(64, 32), layers=(2, 1), heads=(2, 1), max_seq_len=64)
    ours = Megabyte(config).num_parameters()
    gpt_config = token_gpt_config_matching(config, ours, vocab_size=500, context=24)
    torch.manual_seed(0)
    gpt = TokenGpt(gpt_config)
    assert (gpt_config.dim, gpt_config.heads, gpt_config.qk_norm) == (64, 2, config.qk_norm)
    assert abs(gpt.num_parameters() - ours) / ours < 0.25  # the nearest whole number of blocks
    ids = torch.randint(0, 500, (2, 24))
    assert gpt(ids).logits.shape == (2, 24, 500)
    assert all(compare.is_causal(gpt, ids, position) for position in (0, 7, 12, 23))
    # Tied: the output layer is the embedding table, so changing one row changes that token's logits.
    with torch.no_grad():
        before = gpt(ids).logits
        gpt.embed.weight[7] += 1.0
        changed = gpt(ids).logits - before
    assert changed[..., 7].abs().max() > 1e-3
    with pytest.raises(ValueError, match="longer than context=24"):
        gpt(torch.zeros(1, 25, dtype=torch.long))


class UniformModel(torch.nn.Module):
    """Logits all zero (every token equally likely); remembers the windows it was given."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.seen: list[torch.Tensor] = []

    def forward(self, ids: torch.Tensor) -> ModelOutput:
        self.seen.append(ids.clone())
        return ModelOutput(torch.zeros(*ids.shape, self.vocab), None)


def test_uniform_logits_score_log2_vocab_per_token_over_the_bytes() -> None:
    eos, vocab = 0, 300
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab, size=103)
    ids[[9, 40, 41, 102]] = eos  # stories end with EOS (one of them empty)
    stream = compare.TokenStream(ids, ids != eos, num_bytes=377)
    model = UniformModel(vocab)
    result = compare.evaluate_tokens(model, stream, context=10, batch_size=3)
    assert result["scored_tokens"] == 99 and result["scored_bytes"] == 377
    # Exact up to float32 cross-entropy (ln 300 to about 1e-7).
    assert result["bits_per_byte"] == pytest.approx(math.log2(vocab) * 99 / 377, rel=1e-6)
    assert result["bits_per_token"] == pytest.approx(math.log2(vocab), rel=1e-6)
    assert result["bytes_per_token"] == pytest.approx(377 / 99)
    # Every token once: non-overlapping windows of the context, the last one shorter.
    assert [tuple(batch.shape) for batch in model.seen] == [(3, 10), (3, 10), (3, 10), (1, 10), (1, 3)]
    assert torch.cat([batch.flatten() for batch in model.seen]).tolist() == ids.tolist()


def test_token_windows_are_a_pure_function_of_seed_and_step() -> None:
    stream = np.arange(50, dtype=np.int64)
    windows = compare.TokenWindows(stream, 8, bytes_per_id=4.0)
    batch = windows.batch(0, 3, 5)
    assert batch.shape == (5, 8) and (np.diff(batch, axis=1) == 1).all()  # cut from the stream as it is
    assert (windows.batch(0, 3, 5) == batch).all() and not (windows.batch(0, 4, 5) == batch).all()
    with pytest.raises(ValueError, match="shorter than one window of 60; lower --gpt-context"):
        compare.TokenWindows(stream, 60, bytes_per_id=4.0)


def test_gpt_peer_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.peers_for("text", None) == list(compare.PEERS)
    assert "gpt-bpe" not in compare.peers_for("audio", None)
    assert compare.parse_args(["--peers", "bytemodels,gpt-bpe", "--bpe-vocab", "512"]).bpe_vocab == 512
    for argv, message in ((["--modality", "audio", "--peers", "gpt-bpe"],
                           "--peers gpt-bpe: the tokenized GPT is measured on --modality text only, not audio"),
                          (["--bpe-vocab", "100"], "--bpe-vocab 100: give at least 258"),
                          (["--gpt-context", "-1"], "--gpt-context -1: give a positive number")):
        with pytest.raises(SystemExit):
            compare.parse_args(argv)
        assert message in capsys.readouterr().err


def test_quick_run_measures_bytemodels_and_the_gpt_side_by_side(tmp_path: Path) -> None:
    write_story_data(tmp_path / "data")
    # Dropout on: the causality checks must hold the peers still (eval mode), not compare two random draws.
    record = compare.main(["--quick", "--peers", "bytemodels,gpt-bpe", "--skip-compressors", "--dropout", "0.1",
                           "--bpe-vocab", "300", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                           "--cache-dir", str(tmp_path / "cache"), "--threads", "1"])
    text = record["results"]["text"]
    gpt = text["models"]["peers"]["gpt-bpe"]
    assert set(text["models"]["peers"]) == {"bytemodels", "gpt-bpe"}
    assert gpt["scored_bytes"] == text["val_bytes"]  # the bytes the byte peers are scored on
    assert gpt["steps"] == 5 and 0 < gpt["bits_per_byte"] < 8 and gpt["bytes_per_token"] > 1.5
    assert gpt["bytemodels_parameters"] == text["models"]["peers"]["bytemodels"]["parameters"]
    assert gpt["gpt_config"]["vocab_size"] == 300 and gpt["checks"]["causal"]
    assert f"{gpt['bytes_per_token']:.2f} bytes/token" in record["table"]
    [written] = (tmp_path / "out").glob("compare-*.json")
    assert json.loads(written.read_text())["results"]["text"]["models"]["peers"]["gpt-bpe"]["bits_per_byte"] \
        == gpt["bits_per_byte"]
    assert list((tmp_path / "cache").glob("bpe-300-*.json"))


def test_peers_are_sized_to_the_network_not_to_hashed_n_gram_tables():
    plain = MegabyteConfig.preset("tiny", dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=64)
    hashed = MegabyteConfig.preset("tiny", dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=64,
                                   hash_ngrams=(2, 3), hash_buckets=512)
    assert Megabyte(hashed).num_parameters() > Megabyte(plain).num_parameters() + 2 * 512 * 16
    assert compare.sized_parameters(hashed) == compare.sized_parameters(plain) == Megabyte(plain).num_parameters()


class CopyPreviousModel(torch.nn.Module):
    """Puts nearly all its mass on the token before (uniform at a window's first position): what a window's start
    costs is then plain to see."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, ids: torch.Tensor) -> ModelOutput:
        logits = torch.zeros(*ids.shape, self.vocab)
        logits[:, 1:].scatter_(-1, ids[:, :-1, None], 50.0)
        return ModelOutput(logits, None)


def test_overlapped_token_windows_pay_for_a_missing_context_once() -> None:
    vocab, eos = 40, 0
    ids = np.full(100, 7, dtype=np.int64)
    stream = compare.TokenStream(ids, ids != eos, num_bytes=200)
    model = CopyPreviousModel(vocab)
    # End to end, each of the 10 windows starts blind and pays log2(40) bits; overlapping, only the first does.
    fixed = compare.evaluate_tokens(model, stream, context=10, batch_size=4)
    overlapped = compare.evaluate_tokens_overlapped(model, stream, context=10, batch_size=4, stride=5)
    assert fixed["bits_per_byte"] == pytest.approx(10 * math.log2(vocab) / 200, rel=1e-4)
    assert overlapped["bits_per_byte"] == pytest.approx(math.log2(vocab) / 200, rel=1e-4)
    assert overlapped["scored_tokens"] == fixed["scored_tokens"] == 100
    # A stream shorter than the context is one window, scored whole.
    short = compare.TokenStream(ids[:6], ids[:6] != eos, num_bytes=12)
    assert compare.evaluate_tokens_overlapped(model, short, 10, 4, 5)["scored_tokens"] == 6
    tiny = compare.TokenStream(ids[:3], ids[:3] != eos, num_bytes=6)  # shorter than the stride, too
    assert compare.evaluate_tokens_overlapped(model, tiny, 10, 4, 5)["scored_tokens"] == 3


def test_eval_overlap_flag_scores_every_peer_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_story_data(tmp_path / "data")
    record = compare.main(["--quick", "--peers", "bytemodels,gpt-bpe", "--skip-compressors", "--eval-overlap", "0.5",
                           "--bpe-vocab", "300", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                           "--cache-dir", str(tmp_path / "cache"), "--threads", "1"])
    peers = record["results"]["text"]["models"]["peers"]
    printed = capsys.readouterr().out
    for name, window in (("bytemodels", 64), ("gpt-bpe", peers["gpt-bpe"]["gpt_config"]["context"])):
        assert 0 < peers[name]["bits_per_byte_overlapped"] < 9
        assert peers[name]["eval_stride"] == window // 2
        assert f"{peers[name]['bits_per_byte_overlapped']:.4f} over windows {window // 2} apart" in printed
        assert f"({peers[name]['bits_per_byte_overlapped']:.3f} with context, " in record["table"]
    for bad in ("1", "-0.1"):
        with pytest.raises(SystemExit):
            compare.parse_args(["--eval-overlap", bad])
        assert f"--eval-overlap {bad}: give a fraction from 0 up to (not including) 1" in capsys.readouterr().err


def test_training_sample_is_every_kth_story_about_the_validation_size(tmp_path: Path) -> None:
    write_story_data(tmp_path / "data")
    data = compare.text_data(tmp_path / "data", (None, None))
    train = list(data.train_documents())
    sample = compare.training_sample(data, sum(map(len, train)))
    val_bytes = sum(map(len, data.val_items))
    every = round(sum(map(len, train)) / val_bytes)
    assert every > 1 and sample == train[::every]
    assert 0.75 < sum(map(len, sample)) / val_bytes < 1.35


def test_score_training_flag_scores_every_peer_on_the_training_sample(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    write_story_data(tmp_path / "data")
    record = compare.main(["--quick", "--peers", "bytemodels,gpt-bpe", "--skip-compressors", "--score-training",
                           "--bpe-vocab", "300", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                           "--cache-dir", str(tmp_path / "cache"), "--threads", "1"])
    peers = record["results"]["text"]["models"]["peers"]
    printed = capsys.readouterr().out
    quick = compare.text_data(tmp_path / "data", compare.QUICK_DOCUMENTS)
    sample = compare.training_sample(quick, sum(map(len, quick.train_documents())))
    # The GPT scores every sampled story's bytes; the byte peer (--quick: 4 windows) as many as its windows hold.
    assert peers["gpt-bpe"]["train_sample_bytes"] == sum(map(len, sample))
    assert 0 < peers["bytemodels"]["train_sample_bytes"] <= 4 * 64
    for name in ("bytemodels", "gpt-bpe"):
        score = peers[name]["train_sample_bits_per_byte"]
        assert 0 < score < 9 and score != peers[name]["bits_per_byte"]
        assert f"{score:.4f} on the training sample" in printed
    plain = compare.main(["--quick", "--peers", "bytemodels", "--skip-compressors", "--data-dir",
                          str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                          "--threads", "1"])
    assert "train_sample_bits_per_byte" not in plain["results"]["text"]["models"]["peers"]["bytemodels"]
