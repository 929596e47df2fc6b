import math

import pytest
import torch

from bytemodels import Megabyte, MegabyteConfig, tokens
from model_helpers import use_input_skip

TWO_STAGE = dict(patch_sizes=(4,), dims=(32, 16), layers=(2, 1), heads=(2, 1), max_seq_len=64)
THREE_STAGE = dict(patch_sizes=(8, 2), dims=(32, 16, 16), layers=(1, 1, 1), heads=(2, 1, 1), max_seq_len=64)


def tiny_model(**overrides) -> Megabyte:
    torch.manual_seed(0)
    return use_input_skip(Megabyte(MegabyteConfig.preset("tiny", **overrides)).eval())


def test_the_mlp_applies_squared_relu():
    mlp = tiny_model(**TWO_STAGE).stages[-1].transformer.blocks[0].mlp
    x = torch.randn(3, mlp.up.in_features)
    assert torch.equal(mlp(x), mlp.down(torch.relu(mlp.up(x)) ** 2))


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(3))
    normed, plain = tiny_model(**TWO_STAGE), tiny_model(**TWO_STAGE, qk_norm=False)
    assert sum(p.numel() for p in normed.parameters()) > sum(p.numel() for p in plain.parameters())
    for model in (normed, plain):
        reference = model(ids).logits
        with torch.no_grad():
            for stage in model.stages:
                for block in stage.transformer.blocks:
                    dim = block.attn.out.in_features
                    block.attn.qkv.weight[: 2 * dim] *= 3.0  # the query and key rows
        scaled = model(ids).logits
        if model is normed:
            torch.testing.assert_close(scaled, reference, rtol=1e-4, atol=1e-4)
        else:
            assert not torch.allclose(scaled, reference, atol=1e-3)


def test_gained_layers_give_the_same_numbers_whether_they_scale_the_weights_or_the_rows():
    from bytemodels.layers import ScaledEmbedding, ScaledLinear

    torch.manual_seed(0)
    embedding, linear = ScaledEmbedding(272, 16, gain=30.0), ScaledLinear(16, 272, gain=8.0)
    few, many = torch.tensor([[3, 0, 256]]), torch.randint(0, 272, (4, 100))  # fewer / more rows than the table
    for ids in (few, many):
        out = embedding(ids)
        out.sum().backward()
        assert torch.equal(out, torch.nn.functional.embedding(ids, embedding.weight * 30.0))
        grad, embedding.weight.grad = embedding.weight.grad, None
        torch.nn.functional.embedding(ids, embedding.weight * 30.0).sum().backward()
        torch.testing.assert_close(grad, embedding.weight.grad)
        embedding.weight.grad = None
    for rows in (1, 40):  # fewer / more rows than the layer has inputs
        x = torch.randn(rows, 16)
        out = linear(x)
        out.square().sum().backward()
        torch.testing.assert_close(out, x @ (linear.weight * 8.0).T, rtol=1e-6, atol=1e-6)
        grad, linear.weight.grad = linear.weight.grad, None
        (x @ (linear.weight * 8.0).T).square().sum().backward()
        torch.testing.assert_close(grad, linear.weight.grad, rtol=1e-5, atol=1e-5)
        linear.weight.grad = None


def test_gains_change_how_fast_adam_moves_the_embeddings_and_the_head_not_the_function():
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    gained = Megabyte(MegabyteConfig.preset("tiny", **TWO_STAGE))
    assert (gained.stages[0].embed.bytes.gain, gained.stages[-1].embed.bytes.gain, gained.head.gain) == (30, 30, 8)
    plain = tiny_model(**TWO_STAGE).train()
    for module in plain.modules():  # the same layers without their gains
        if hasattr(module, "gain"):
            module.gain = 1.0
    assert gained.num_parameters() == plain.num_parameters()
    # The same function: the plain model gets the gained model's stored weights times their gains.
    weights = gained.state_dict()
    for name in weights:
        if name.endswith("embed.bytes.weight"):
            weights[name] = weights[name] * 30.0
        elif name == "head.weight":
            weights[name] = weights[name] * 8.0
    plain.load_state_dict(weights)
    torch.testing.assert_close(gained(ids).logits, plain(ids).logits, rtol=1e-5, atol=1e-5)

    def effective(model):  # what the forward pass uses: stored weights times their gains
        return {"embed": model.stages[-1].embed.bytes.weight * model.stages[-1].embed.bytes.gain,
                "head": model.head.weight * model.head.gain}

    moved = {}
    for model in (gained, plain):
        before = {k: v.detach().clone() for k, v in effective(model).items()}
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model(ids, ids).loss.backward()
        optimizer.step()
        moved[model is gained] = {k: (v.detach() - before[k]).abs().max().item() for k, v in effective(model).items()}
    # Adam's first step moves every weight with a gradient by about the learning rate: the gained ones by
    # the learning rate times their gain.
    assert moved[False]["embed"] == pytest.approx(1e-3, rel=0.01)
    assert moved[True]["embed"] == pytest.approx(30e-3, rel=0.01)
    assert moved[False]["head"] == pytest.approx(1e-3, rel=0.01)
    assert moved[True]["head"] == pytest.approx(8e-3, rel=0.01)


def test_input_skip_starts_as_the_plain_stack_and_mixes_the_inputs_in_once_trained():
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    skip = Megabyte(MegabyteConfig.preset("tiny", **TWO_STAGE)).eval()
    assert [tuple(stage.transformer.skip_scales.shape) for stage in skip.stages] == [(2, 2), (2, 1)]  # (a, b) a block
    reference = skip(ids).logits
    plain = Megabyte(skip.config).eval()
    plain.load_state_dict(skip.state_dict())
    for stage in plain.stages:  # the plain stack: every block reads the residual stream as it is
        stage.transformer.mix_input = lambda index, x, inputs: x
    torch.testing.assert_close(reference, plain(ids).logits, rtol=0, atol=0)  # a = 1, b = 0
    use_input_skip(skip)
    assert not torch.allclose(skip(ids).logits, plain(ids).logits, atol=1e-3)
    # b alone (a kept at 1): block inputs gain a multiple of the stage's inputs.
    with torch.no_grad():
        for stage in skip.stages:
            stage.transformer.skip_scales[0].zero_()
    assert not torch.allclose(skip(ids).logits, plain(ids).logits, atol=1e-3)


@pytest.mark.parametrize("shape", [TWO_STAGE, THREE_STAGE, {**TWO_STAGE, "hash_ngrams": (2, 3, 6), "hash_buckets": 64},
                                   {**TWO_STAGE, "hash_ngrams": (2,), "hash_word_bytes": 12, "hash_buckets": 64}],
                         ids=["2-stage", "3-stage", "hashed n-grams", "hashed words"])
def test_changing_a_byte_never_changes_earlier_logits(shape):
    model = tiny_model(**shape)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (1, 27), generator=generator)  # not a multiple of any patch size
    reference = model(ids).logits
    # Every position, so patch boundaries of every stage are crossed.
    for position in range(ids.shape[1]):
        changed = ids.clone()
        changed[0, position] = (changed[0, position] + 1) % 256
        logits = model(changed).logits
        assert torch.equal(logits[:, : position + 1], reference[:, : position + 1]), position
        if position + 1 < ids.shape[1]:
            assert not torch.equal(logits[:, position + 1:], reference[:, position + 1:]), position


@pytest.mark.parametrize("cross_patch", [True, False])
def test_local_model_sees_the_previous_patch_only_with_cross_patch(cross_patch):
    # With the global model's hand-over cut (zero projection) and no token shift, a patch's logits can depend on
    # a byte of the patch before it other than its last (the previous byte every patch sees) only through
    # cross-patch attention, and with one local layer never on older ones.
    model = tiny_model(**TWO_STAGE, token_shift=False, cross_patch=cross_patch)
    with torch.no_grad():
        model.stages[0].to_next.weight.zero_()
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(2))
    reference = model(ids).logits
    changed = ids.clone()
    changed[0, 5] = (changed[0, 5] + 1) % 256  # inside the second patch (bytes 4-7)
    logits = model(changed).logits
    assert not torch.equal(logits[:, 6:8], reference[:, 6:8])  # the same patch, always
    assert torch.equal(logits[:, 12:], reference[:, 12:])  # two patches later: never
    assert torch.equal(logits[:, 8:12], reference[:, 8:12]) != cross_patch  # the next patch: only across


def test_any_length_is_padded_internally():
    model = tiny_model(**TWO_STAGE)
    for length in (1, 3, 4, 5, 63, 64, 65):
        ids = torch.randint(0, 256, (2, length))
        assert model(ids).logits.shape == (2, length, model.config.vocab_size)


def test_untrained_loss_is_near_uniform():
    model = tiny_model()
    ids = torch.randint(0, 256, (4, 256))
    loss = model(ids, ids).loss.item()
    # Logits start with a spread of about 1/sqrt(3) (unit-RMS features, head std 1/sqrt(3 * fan_in)),
    # which costs about var/2 = 0.17 nats over the uniform ln(vocab) on random bytes.
    assert 0 < loss - math.log(model.config.vocab_size) < 0.25


def test_pad_targets_are_ignored_but_zero_bytes_count():
    model = tiny_model(**TWO_STAGE)
    ids = torch.randint(0, 256, (1, 16))
    full = model(ids, ids).loss
    targets = ids.clone()
    targets[0, 8:] = tokens.PAD_ID
    logits = model(ids).logits
    expected = torch.nn.functional.cross_entropy(logits[0, :8], ids[0, :8])
    assert torch.allclose(model(ids, targets).loss, expected)
    assert not torch.allclose(full, expected)
    zeros = torch.zeros(1, 16, dtype=torch.long)
    assert torch.isfinite(model(zeros, zeros).loss)


def train_steps(model: Megabyte, ids: torch.Tensor, steps: int, lr: float) -> list[float]:
    model.train()
    optimizer = torch.optim.AdamW(model.param_groups(0.0), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(ids, ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_all_zero_sequence_is_learned():
    model = tiny_model(**TWO_STAGE)
    zeros = torch.zeros(2, 64, dtype=torch.long)
    losses = train_steps(model, zeros, 60, 1e-2)
    assert math.isfinite(losses[0]) and losses[-1] < 0.1 * losses[0]


def test_tiny_model_memorises_a_2kb_string():
    text = (b"The quick brown fox jumps over the lazy dog; 0123456789. " * 40)[:1024]
    noise = bytes(torch.randint(0, 256, (1024,), generator=torch.Generator().manual_seed(3)).tolist())
    data = text + noise  # 2 KB: half structured, half random bytes
    ids = torch.tensor(list(data)).view(4, 512)
    model = tiny_model(dims=(128, 64), layers=(2, 2), heads=(4, 2))
    losses = train_steps(model, ids, 250, 3e-3)
    bits_per_byte = losses[-1] / math.log(2)
    assert bits_per_byte < 0.1, bits_per_byte


@pytest.mark.parametrize("shape", [TWO_STAGE, {**TWO_STAGE, "hash_ngrams": (2, 4), "hash_word_bytes": 6}],
                         ids=["plain", "hashed n-grams"])
def test_forward_has_no_graph_breaks(shape):
    model = tiny_model(**shape)
    ids = torch.randint(0, 256, (2, 32))
    explanation = torch._dynamo.explain(model)(ids, ids)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_param_groups_exempt_norms_and_embeddings():
    model = tiny_model(**TWO_STAGE)
    decay, no_decay = model.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    assert embeddings and embeddings <= {id(p) for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_bf16_autocast_runs_without_warnings_and_keeps_float32_gains():
    import warnings

    model = tiny_model(**TWO_STAGE).train()
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the norms' float32 gains used to warn on every call under bf16 autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, ids).loss
        loss.backward()
    norm = model.stages[0].transformer.norm
    assert torch.isfinite(loss) and norm.weight.dtype == torch.float32 and norm.weight.grad.abs().sum() > 0


def test_integer_ids_and_targets_of_any_width_give_the_same_loss():
    model = tiny_model(**TWO_STAGE)
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(6))
    reference = model(ids, ids).loss
    for dtype in (torch.int32, torch.int16, torch.uint8):  # int32 targets used to fail in cross_entropy
        assert torch.equal(model(ids.to(dtype), ids.to(dtype)).loss, reference)
    with pytest.raises(TypeError, match="integer ids"):
        model(ids.float())


@pytest.mark.parametrize("shift", [True, False])
def test_a_static_cache_written_in_chunks_gives_the_whole_sequence_outputs(shift):
    # One Block code: a whole causal sequence (training), a prompt's chunk written into the static cache at an
    # offset (prefill) and one position at a time (decoding) give the same outputs.
    from bytemodels.layers import StaticCache, Transformer

    torch.manual_seed(0)
    transformer = use_input_skip(Transformer(16, 2, 2, 4.0, 0.0, 10000.0, 1e-5, shift, True)).eval()
    x = torch.randn(2, 11, 16)
    with torch.no_grad():
        whole = transformer(x)
        readable = torch.ones(2, 12, dtype=torch.bool)
        cache = StaticCache(2, 2, 16, 12, 0, readable, torch.float32, torch.float32)
        outputs = []
        for start, end in ((0, 5), (5, 6), (6, 7), (7, 11)):
            rope = transformer.rotary(torch.arange(start, end))
            outputs.append(transformer(x[:, start:end], cache.view(end - start), rope=rope))
            cache.advance(end - start)
    torch.testing.assert_close(torch.cat(outputs, dim=1), whole, rtol=1e-5, atol=1e-5)
    assert cache.length == 11 and not cache.keys[0][:, :, 11].any()  # the last slot never written


@pytest.mark.parametrize("mask", ["given", "causal"])
def test_cpu_bf16_attention_is_written_out_and_matches_the_fp32_kernel(mask: str, monkeypatch):
    from bytemodels import layers
    from bytemodels.layers import causal_attention, masked_attention

    written_out = []  # the dtypes of the queries the written-out path was called with
    original = layers.cpu_bf16_attention
    monkeypatch.setattr(layers, "cpu_bf16_attention",
                        lambda q, *args: written_out.append(q.dtype) or original(q, *args))
    generator = torch.Generator().manual_seed(8)
    q, keys, values = (torch.randn(2, 2, 6, 8, generator=generator).to(torch.bfloat16).requires_grad_()
                       for _ in range(3))
    allowed = torch.rand(6, 6, generator=generator) > 0.3
    allowed[:, 0] = True  # every query sees a key
    if mask == "causal":
        allowed = torch.ones(6, 6, dtype=torch.bool).tril()

    def attend(q, keys, values):
        if mask == "causal":
            return causal_attention(q, keys, values, 0.0)
        return masked_attention(q, keys, values, allowed, 0.0)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attend(q, keys, values)
    exact = torch.nn.functional.scaled_dot_product_attention(q.float(), keys.float(), values.float(),
                                                             attn_mask=allowed)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), exact, rtol=2e-2, atol=2e-2)  # bf16 rounding only
    y.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, keys, values))
    plain = attend(q.float(), keys.float(), values.float())  # fp32: PyTorch's kernel
    assert plain.dtype == torch.float32 and written_out == [torch.bfloat16]
    torch.testing.assert_close(plain, exact, rtol=1e-6, atol=1e-6)


def test_cpu_bf16_attention_is_written_out_only_up_to_a_length_whose_scores_stay_small():
    from bytemodels.layers import WRITTEN_OUT_KEYS, attention_written_out

    q = torch.zeros(1, 1, 4, 8, dtype=torch.bfloat16)
    assert attention_written_out(q, torch.zeros(1, 1, WRITTEN_OUT_KEYS, 8))
    assert not attention_written_out(q, torch.zeros(1, 1, WRITTEN_OUT_KEYS + 1, 8))  # PyTorch's kernel: no scores
    assert not attention_written_out(q.float(), torch.zeros(1, 1, 16, 8))  # fp32: PyTorch's kernel


def test_rotary_angles_kept_while_generating_serve_training_afterwards():
    # Training reads the rotary table that cached decoding keeps; one built under inference_mode (as generation
    # runs) must still serve a training step's backward, with the angles computed afresh.
    from bytemodels.layers import Rotary

    model = Megabyte(MegabyteConfig.preset("tiny", dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=32))
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    rotaries = [module for module in model.modules() if isinstance(module, Rotary)]
    expected = model(ids, ids).loss.detach()
    for rotary in rotaries:
        del rotary._table
        with torch.inference_mode():
            rotary.at(0, 4, ids.device)
        assert rotary._table[0].is_inference() is False
    loss = model(ids, ids).loss
    loss.backward()
    assert torch.equal(loss.detach(), expected)
    qkv = [module.qkv.weight for module in model.modules() if hasattr(module, "qkv")]
    assert qkv and all(weight.grad is not None and weight.grad.abs().sum() > 0 for weight in qkv)
