import warnings

import pytest
import torch

from bytemodels import Megabyte, MegabyteConfig, tokens
from bytemodels.generate import IncrementalDecoder
from bytemodels.sampling import Sampler
from model_helpers import use_input_skip

PATCH = 4
SHAPES = {
    "2-stage": dict(patch_sizes=(PATCH,), dims=(32, 16), layers=(2, 1), heads=(2, 1), max_seq_len=64),
    "3-stage": dict(patch_sizes=(PATCH * 2, 2), dims=(32, 16, 16), layers=(1, 1, 1), heads=(2, 1, 1),
                    max_seq_len=64),
    # Three local layers: with cross-patch attention a patch depends on the three patches before it.
    "deep local": dict(patch_sizes=(PATCH,), dims=(32, 16), layers=(1, 3), heads=(2, 1), max_seq_len=64),
    # N-grams longer than a patch: a unit's rows read ids of the units before it, and before the prompt.
    "hashed n-grams": dict(patch_sizes=(PATCH * 2, 2), dims=(32, 16, 16), layers=(1, 1, 1), heads=(2, 1, 1),
                           max_seq_len=64, hash_ngrams=(2, 3, PATCH * 2 + 3), hash_buckets=61),
    # The word so far reaches further back than any n-gram (prompt_of's bytes hold letters and separators).
    "hashed words": dict(patch_sizes=(PATCH,), dims=(32, 16), layers=(2, 1), heads=(2, 1), max_seq_len=64,
                         hash_ngrams=(2,), hash_word_bytes=PATCH * 3, hash_buckets=67),
    # Word blocks read every word end of the window (16 at most in 64 bytes): longer outputs slide the window. Twice
    # the local width: the word cache holds their width, not the local stage's.
    "word blocks": dict(patch_sizes=(PATCH,), dims=(32, 16), layers=(2, 2), heads=(2, 1), max_seq_len=64,
                        word_layers=1, word_dim=32),
    "word blocks, 3-stage": dict(patch_sizes=(PATCH * 2, 2), dims=(32, 16, 16), layers=(1, 1, 1), heads=(2, 1, 1),
                                 max_seq_len=64, word_layers=2, cross_patch=False, hash_ngrams=(2,),
                                 hash_word_bytes=PATCH, hash_buckets=61),
}


@pytest.fixture(params=list(SHAPES))
def model(request) -> Megabyte:
    torch.manual_seed(0)
    return use_input_skip(Megabyte(MegabyteConfig.preset("tiny", **SHAPES[request.param])).eval())


def prompt_of(length: int) -> bytes:
    return bytes((7 * i + 3) % 256 for i in range(length))


@pytest.mark.parametrize("length", [0, 1, PATCH - 1, PATCH, PATCH + 1, 2 * PATCH + 3])
def test_greedy_bytes_are_identical_with_and_without_cache(model, length):
    prompt = prompt_of(length)
    cached = model.generate(prompt, 24, temperature=0, prefix_ids=())
    reference = model.generate(prompt, 24, temperature=0, prefix_ids=(), use_cache=False)
    assert cached == reference and len(cached) > 0


@pytest.mark.parametrize("length", [0, 1, PATCH - 1, PATCH, PATCH + 1, 5 * PATCH + 2])
def test_cached_logits_match_full_recompute_every_step(model, length):
    ids = torch.tensor([list(prompt_of(length))], dtype=torch.long).view(1, length)
    decoder = IncrementalDecoder(model, ids)
    for _ in range(3 * model.config.patch_size):
        step_logits = decoder.logits()
        position = decoder.ids.shape[1]
        full = model(torch.cat((decoder.ids, torch.full((1, 1), tokens.PAD_ID)), dim=1)).logits[:, position]
        assert torch.allclose(step_logits, full, atol=1e-4), position
        decoder.append(step_logits.argmax(-1))


def test_ragged_batch_matches_one_by_one(model):
    prompts = [b"", b"a", prompt_of(PATCH - 1), prompt_of(PATCH), prompt_of(PATCH + 1), prompt_of(3 * PATCH + 2),
               prompt_of(6 * PATCH + 1)]
    batched = model.generate(prompts, 20, temperature=0)
    assert batched == model.generate(prompts, 20, temperature=0, use_cache=False)
    assert batched == [model.generate(p, 20, temperature=0) for p in prompts]


def test_seeded_sampling_is_reproducible(model):
    first = model.generate(b"abc", 30, seed=5, top_k=20, top_p=0.9, temperature=0.8)
    assert first == model.generate(b"abc", 30, seed=5, top_k=20, top_p=0.9, temperature=0.8)
    assert 0 < len(first) <= 30  # an untrained model may sample EOS early
    assert first != model.generate(b"abc", 30, seed=6, top_k=20, top_p=0.9, temperature=0.8)


def test_stream_yields_what_generate_returns(model):
    streamed = list(model.generate_stream(b"hello", 25, temperature=0, stop=b"\x00\x01"))
    assert b"".join(streamed) == model.generate(b"hello", 25, temperature=0, stop=b"\x00\x01")
    assert len(streamed) > 1


class ScriptedHead(torch.nn.Module):
    """Replaces the output head: emits the bytes of ``script`` in order, then EOS."""

    def __init__(self, script: list[int], vocab: int) -> None:
        super().__init__()
        self.script, self.vocab, self.calls = script, vocab, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*hidden.shape[:-1], self.vocab)
        token = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        logits[..., token] = 50.0
        return logits


def test_eos_and_stop_strings_end_generation_early():
    torch.manual_seed(0)
    model = Megabyte(MegabyteConfig.preset("tiny", **SHAPES["2-stage"])).eval()
    model.head = ScriptedHead(list(b"abcXYZdef") + [tokens.EOS_ID], model.config.vocab_size)
    assert model.generate(b"", 50, temperature=0) == b"abcXYZdef"
    model.head.calls = 0
    assert model.generate(b"", 50, temperature=0, stop=[b"XY", b"zz"]) == b"abc"
    model.head.calls = 0
    assert b"".join(model.generate_stream(b"", 50, temperature=0, stop=b"XYZ")) == b"abc"


def test_special_ids_other_than_eos_are_never_generated(model):
    out = model.generate([b"x", b"yy"], 40, temperature=2.0, seed=0)
    assert all(isinstance(b, bytes) and len(b) <= 40 for b in out)


def test_str_prompts_and_stops_are_utf8(model):
    """A str prompt or stop string is its UTF-8 bytes; the output is bytes either way."""
    text = "Café ☕"
    assert model.generate(text, 12, temperature=0) == model.generate(text.encode(), 12, temperature=0)
    assert model.generate([text, "a"], 6, temperature=0) == model.generate([text.encode(), b"a"], 6, temperature=0)
    assert b"".join(model.generate_stream(text, 8, temperature=0)) == model.generate(text, 8, temperature=0)
    for stop in ("é", ["\n", "é"]):
        as_bytes = stop.encode() if isinstance(stop, str) else [s.encode() for s in stop]
        assert model.generate(b"x", 40, temperature=0, stop=stop) == model.generate(b"x", 40, temperature=0,
                                                                                   stop=as_bytes)
    with pytest.raises(ValueError, match="non-empty"):
        model.generate("x", 3, stop="")


def test_bad_options_are_clear_errors(model):
    with pytest.raises(ValueError, match="temperature"):
        model.generate(b"a", 3, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(b"a", 3, top_p=0)
    with pytest.raises(TypeError, match="bytes or str"):
        model.generate([5], 3)
    with pytest.raises(ValueError, match="no UTF-8 form"):
        model.generate("\ud800", 3)
    for temperature in (float("nan"), float("inf")):  # nan used to sample a tag id and fail in bytearray
        with pytest.raises(ValueError, match="temperature must be finite"):
            model.generate(b"a", 3, temperature=temperature)
    with pytest.raises(TypeError, match="integer ids, got torch.float32"):  # it was silently cast with the cache
        model.generate(torch.tensor([[tokens.BOS_ID, 72.0]]), 3)
    for ids, bad in ((torch.tensor([[tokens.BOS_ID, 300]]), 300), (torch.tensor([[-1, 72]]), -1)):
        with pytest.raises(ValueError, match=f"prompt id {bad} is outside the vocabulary"):
            model.generate(ids, 3)
    with pytest.raises(ValueError, match="prompt id 999"):
        model.generate(b"a", 3, prefix_ids=(999,))


def test_compiled_steps_match_the_uncompiled_ones():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = use_input_skip(Megabyte(MegabyteConfig.preset("tiny", **SHAPES["2-stage"])).eval())
    # One alignment (length + BOS = 2 mod PATCH): one batch of three rows, left padding included.
    prompts = [b"a", prompt_of(PATCH + 1), prompt_of(2 * PATCH + 1)]
    torch._dynamo.reset()
    counters.clear()
    eager = model.generate(prompts, 3 * PATCH + 3, temperature=0)
    compiled = model.generate(prompts, 3 * PATCH + 3, temperature=0, compile=True)
    assert compiled == eager and all(eager)
    # The compiled local step draws the next byte itself (temperature a tensor input: no new graph); seeded,
    # it draws what the sampler draws from the uncompiled step's logits.
    sampled = model.generate(prompts, 3 * PATCH + 3, temperature=0.8, seed=3)
    assert model.generate(prompts, 3 * PATCH + 3, temperature=0.8, seed=3, compile=True) == sampled
    assert sampled != eager
    assert counters["stats"]["unique_graphs"] == 2  # global and local step compiled once, reused for every unit
    # Step by step, the logits agree with the uncompiled decoder's.
    ids = torch.tensor([list(prompt_of(PATCH + 2))])
    decoders = [IncrementalDecoder(model, ids, compile=flag) for flag in (False, True)]
    for _ in range(3 * PATCH):
        logits = [decoder.logits() for decoder in decoders]
        assert torch.allclose(logits[0], logits[1], atol=1e-5)
        for decoder in decoders:
            decoder.append(logits[0].argmax(-1))
    assert counters["stats"]["unique_graphs"] == 4  # two more for the new batch size, none per step


def test_generation_under_bf16_autocast(model):
    # As the Trainer samples on GPU: inside its bf16 autocast. Greedy decoding with and without the cache agrees
    # there too (the untrained model's margins between the top two bytes are far above bf16's rounding).
    prompt = prompt_of(PATCH + 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cached = model.generate(prompt, 3 * PATCH, temperature=0, prefix_ids=())
        uncached = model.generate(prompt, 3 * PATCH, temperature=0, prefix_ids=(), use_cache=False)
        sampled = model.generate([b"x", prompt], 3 * PATCH, seed=0, top_k=50)
    assert isinstance(cached, bytes) and len(cached) > 0
    assert cached == uncached
    assert all(isinstance(out, bytes) and len(out) <= 3 * PATCH for out in sampled)


@pytest.mark.parametrize("options", [dict(top_k=5), dict(top_p=0.8), dict(top_k=20, top_p=0.9)],
                         ids=["top_k", "top_p", "both"])
def test_compiled_sampling_with_top_k_and_top_p_matches_the_uncompiled(options):
    torch.manual_seed(0)
    model = use_input_skip(Megabyte(MegabyteConfig.preset("tiny", **SHAPES["2-stage"])).eval())
    prompts = [b"ab", prompt_of(PATCH + 2)]
    eager = model.generate(prompts, 2 * PATCH + 1, temperature=0.9, seed=7, **options)
    assert model.generate(prompts, 2 * PATCH + 1, temperature=0.9, seed=7, compile=True, **options) == eager
    assert any(eager) and eager != model.generate(prompts, 2 * PATCH + 1, temperature=0.9, seed=8, **options)


def test_compiled_three_stage_decoding_matches_the_uncompiled():
    torch.manual_seed(0)
    model = use_input_skip(Megabyte(MegabyteConfig.preset("tiny", **SHAPES["3-stage"])).eval())
    prompt = prompt_of(PATCH + 1)
    length = 2 * model.config.patch_size + 3  # crosses a global patch and several middle units
    greedy = model.generate(prompt, length, temperature=0)
    sampled = model.generate(prompt, length, seed=3, top_k=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # compiled for real: no fallback to the uncompiled steps
        assert len(greedy) > 0 and model.generate(prompt, length, temperature=0, compile=True) == greedy
        assert model.generate(prompt, length, seed=3, top_k=30, compile=True) == sampled


def test_compiled_steps_are_not_shared_by_models_that_differ_only_in_constants():
    # The compiled steps keep only their tensors' guards: a model whose layers hold another constant (here the
    # head's gain) must not run code compiled for another model of the same shapes.
    torch.manual_seed(0)
    first = Megabyte(MegabyteConfig.preset("tiny", **SHAPES["2-stage"])).eval()
    second = Megabyte(MegabyteConfig.preset("tiny", **SHAPES["2-stage"])).eval()
    second.load_state_dict(first.state_dict())
    second.head.gain = 2.0
    ids = torch.tensor([list(prompt_of(PATCH + 2))])
    for model in (first, second):
        eager, compiled = (IncrementalDecoder(model, ids, compile=flag) for flag in (False, True))
        for _ in range(PATCH + 2):
            expected = eager.logits()
            assert torch.allclose(compiled.logits(), expected, atol=1e-5)
            for decoder in (eager, compiled):
                decoder.append(expected.argmax(-1))


def test_a_failed_compile_of_the_steps_warns_and_generates_uncompiled(monkeypatch):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=broken_backend))
    torch.manual_seed(0)
    model = Megabyte(MegabyteConfig.preset("tiny", **SHAPES["2-stage"])).eval()
    expected = model.generate(b"abc", 10, temperature=0)
    with pytest.warns(RuntimeWarning, match="generation continues uncompiled.*no C\\+\\+"):
        assert model.generate(b"abc", 10, temperature=0, compile=True) == expected


def test_sampling_follows_the_distribution():
    # Four ids carry all the mass (EOS among them); the others, PAD included, have none.
    logits = torch.full((20000, tokens.vocab_size()), float("-inf"))
    chosen = torch.tensor([0, 65, 255, tokens.EOS_ID])
    logits[:, chosen] = torch.tensor([0.5, 0.1, 0.3, 0.1]).log()
    logits[:, tokens.PAD_ID] = 5.0  # never producible, however likely
    picked = Sampler(1.0, seed=0)(logits)
    counts = torch.bincount(picked, minlength=tokens.vocab_size())
    assert counts.sum() == counts[chosen].sum()
    assert torch.allclose(counts[chosen] / 20000, torch.tensor([0.5, 0.1, 0.3, 0.1]), atol=0.015)
    # top_k=2 keeps the two likeliest, renormalised: 5/8 and 3/8.
    counts = torch.bincount(Sampler(1.0, top_k=2, seed=1)(logits), minlength=tokens.vocab_size())
    assert torch.allclose(counts[chosen] / 20000, torch.tensor([0.625, 0.0, 0.375, 0.0]), atol=0.015)
