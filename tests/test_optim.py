"""TableAdamW: AdamW for the network, lookup tables updated by the rows a batch used."""

import pytest
import torch

from bytemodels.config import MegabyteConfig
from bytemodels.model import Megabyte, lookup_tables
from bytemodels.optim import (NEWTON_SCHULZ_COEFFICIENTS, NEWTON_SCHULZ_STEPS, NORMUON_BETA2, MuonTableAdamW,
                              TableAdamW, build_optimizer, orthogonalize)


def table_and_weight(seed: int = 0) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.nn.Parameter(torch.randn(12, 4, generator=generator)),
            torch.nn.Parameter(torch.randn(3, 4, generator=generator)))


def run(optimizer_class, rows_per_step: list[list[int]], steps_seed: int = 1, **options):
    """Train a table and a dense weight for len(rows_per_step) steps, each step's table gradient non-zero on the
    rows given; returns both parameters and the optimizer."""
    table, weight = table_and_weight()
    extra = {"tables": [table]} if optimizer_class is TableAdamW else {}
    optimizer = optimizer_class([table, weight], lr=0.1, betas=(0.9, 0.95), weight_decay=0.0, **extra, **options)
    generator = torch.Generator().manual_seed(steps_seed)
    for rows in rows_per_step:
        grad = torch.zeros_like(table)
        grad[rows] = torch.randn(len(rows), 4, generator=generator)
        table.grad, weight.grad = grad, torch.randn(3, 4, generator=generator)
        optimizer.step()
    return table, weight, optimizer


def test_equals_adamw_when_every_row_is_used():
    every_row = [list(range(12))] * 5
    lazy_table, lazy_weight, _ = run(TableAdamW, every_row)
    dense_table, dense_weight, _ = run(torch.optim.AdamW, every_row)
    torch.testing.assert_close(lazy_table, dense_table)
    torch.testing.assert_close(lazy_weight, dense_weight)


def test_unused_rows_stand_still_and_used_rows_move():
    initial, _ = table_and_weight()
    table, _, optimizer = run(TableAdamW, [[0, 1, 2], [3, 4], [0, 5]])
    moved = (table.detach() != initial).any(dim=1)
    assert moved[:6].all() and not moved[6:].any()
    # Dense AdamW keeps moving rows 1-4 at the third step on their momentum; rows 1-4 here moved only when used.
    dense, _, _ = run(torch.optim.AdamW, [[0, 1, 2], [3, 4], [0, 5]])
    assert not torch.equal(dense[1], table[1])
    assert float(optimizer.state[table]["step"]) == 3


def test_state_dict_round_trip_continues_exactly():
    steps = [[0, 1], [2, 3, 4], [1, 7], [9], [0, 11]]
    straight, _, _ = run(TableAdamW, steps)
    table, weight, optimizer = run(TableAdamW, steps[:3])
    saved = optimizer.state_dict()
    resumed = TableAdamW([table, weight], tables=[table], lr=0.1, betas=(0.9, 0.95), weight_decay=0.0)
    resumed.load_state_dict(saved)
    generator = torch.Generator().manual_seed(1)
    for rows in steps[:3]:  # the same gradients as the straight run: replay the generator to where it was
        torch.randn(len(rows), 4, generator=generator), torch.randn(3, 4, generator=generator)
    for rows in steps[3:]:
        grad = torch.zeros_like(table)
        grad[rows] = torch.randn(len(rows), 4, generator=generator)
        table.grad, weight.grad = grad, torch.randn(3, 4, generator=generator)
        resumed.step()
    torch.testing.assert_close(table, straight)


def test_refuses_what_it_cannot_do():
    table, weight = table_and_weight()
    with pytest.raises(ValueError, match="one of the optimizer's parameters"):
        TableAdamW([weight], tables=[table])
    with pytest.raises(ValueError, match="2-D"):
        flat = torch.nn.Parameter(torch.zeros(3))
        TableAdamW([table, flat], tables=[flat])
    with pytest.raises(ValueError, match="amsgrad"):
        TableAdamW([table], tables=[table], amsgrad=True)
    with pytest.raises(ValueError, match="closure"):
        TableAdamW([table], tables=[table]).step(lambda: 0.0)


def test_model_tables_are_found_and_trained_by_rows():
    config = MegabyteConfig.preset("tiny", dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=32,
                                   hash_ngrams=(2, 3), hash_buckets=64)
    model = Megabyte(config)
    tables = lookup_tables(model)
    assert len(tables) == 2 and all(t.shape[0] == 2 * 64 for t in tables)
    assert lookup_tables(Megabyte(MegabyteConfig.preset("tiny", max_seq_len=32))) == []
    optimizer = build_optimizer(model, 1e-2, weight_decay=0.1)
    before = [t.detach().clone() for t in tables]
    ids = torch.full((1, 32), 65)  # one repeated byte: a few n-gram rows only
    model(ids, ids).loss.backward()
    optimizer.step()
    for table, old in zip(tables, before):
        moved = (table.detach() != old).any(dim=1)
        # 2-grams "AA" and PAD A; 3-grams "AAA", PAD A A and PAD PAD A: five rows of 128 at most.
        assert 0 < int(moved.sum()) <= 5


# -- Muon for the hidden matrices --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (3, 16, 16)])
def test_orthogonalize_brings_every_singular_value_near_one(shape):
    matrices = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    singular = torch.linalg.svdvals(orthogonalize(matrices))
    # Jordan's coefficients trade exactness for speed: the values land in about (0.7, 1.2), never near 0
    assert singular.min() > 0.6 and singular.max() < 1.25
    assert torch.linalg.svdvals(matrices).max() > 2  # the input was far from orthogonal


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (2, 3, 16, 24)])
def test_orthogonalize_is_the_quintic_iteration_written_plainly(shape):
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    matrices = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = matrices.mT if shape[-2] > shape[-1] else matrices
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(NEWTON_SCHULZ_STEPS):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    expected = x.mT if shape[-2] > shape[-1] else x
    result = orthogonalize(matrices)
    assert result.shape == matrices.shape
    torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-10)


def test_muon_steps_follow_torch_muon_with_adamw_matched_scale():
    # The same rule as torch.optim.Muon(adjust_lr_fn="match_rms_adamw"), which runs Newton-Schulz in bf16: ours
    # runs it in fp32 here, so the two agree to bf16's precision.
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(24, 40, generator=generator) * 0.1
    ours, reference = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    mine = MuonTableAdamW([{"params": [ours], "weight_decay": 0.1, "muon": True}], lr=0.02,
                          orthogonalize_dtype=torch.float32)
    theirs = torch.optim.Muon([reference], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        grad = torch.randn(24, 40, generator=generator)
        for param, optimizer in ((ours, mine), (reference, theirs)):
            param.grad = grad.clone()
            optimizer.step()
    moved = (reference.detach() - start).norm()
    assert moved > 0.1
    assert (ours.detach() - reference.detach()).norm() < 0.02 * moved


def test_muon_orthogonalises_fused_queries_keys_and_values_each_on_its_own():
    generator = torch.Generator().manual_seed(1)
    weight = torch.nn.Parameter(torch.zeros(3 * 8, 8))
    grad = torch.randn(3 * 8, 8, generator=generator)
    weight.grad = grad.clone()
    MuonTableAdamW([{"params": [weight], "weight_decay": 0.0, "muon": True, "fused_matrices": 3}], lr=1.0,
                   orthogonalize_dtype=torch.float32).step()
    scale = 0.2 * 8 ** 0.5  # an (8 x 8) matrix's RMS scale at lr 1; the first update is the gradient's direction
    expected = -scale * orthogonalize(grad.view(3, 8, 8)).view(24, 8)
    torch.testing.assert_close(weight.detach(), expected, rtol=1e-4, atol=1e-5)


def _muon_matrices(seed: int) -> list[tuple[torch.nn.Parameter, int]]:
    """Weights of several shapes (wide, tall, square, fused) with gradients, and their fused counts."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [((24, 8), 3), ((8, 8), 1), ((32, 8), 1), ((8, 32), 1), ((24, 8), 3), ((32, 8), 1), ((6, 10), 1)]
    weights = []
    for shape, fused in shapes:
        weight = torch.nn.Parameter(torch.randn(*shape, generator=generator) * 0.1)
        weight.grad = torch.randn(*shape, generator=generator)
        weights.append((weight, fused))
    return weights


def test_muon_orthogonalises_matrices_of_one_shape_together_as_each_alone():
    # One batched Newton-Schulz per shape (tall matrices as their wide transposes) gives each matrix the update
    # it gets in a step of its own.
    together, alone = _muon_matrices(2), _muon_matrices(2)
    MuonTableAdamW([{"params": [w], "weight_decay": 0.1, "muon": True, "fused_matrices": fused}
                    for w, fused in together], lr=0.05, orthogonalize_dtype=torch.float32).step()
    for weight, fused in alone:
        MuonTableAdamW([{"params": [weight], "weight_decay": 0.1, "muon": True, "fused_matrices": fused}], lr=0.05,
                       orthogonalize_dtype=torch.float32).step()
    for (batched, _), (single, _) in zip(together, alone):
        torch.testing.assert_close(batched.detach(), single.detach(), rtol=1e-5, atol=1e-6)
    start = _muon_matrices(2)
    assert all(not torch.equal(w.detach(), s.detach()) for (w, _), (s, _) in zip(together, start))


def test_muon_orthogonalises_in_bf16_where_bf16_products_are_fast(monkeypatch):
    import bytemodels.optim as optim

    def step(dtype: torch.dtype | None) -> list[torch.Tensor]:
        weights = _muon_matrices(3)
        MuonTableAdamW([{"params": [w], "weight_decay": 0.0, "muon": True, "fused_matrices": fused}
                        for w, fused in weights], lr=0.05, orthogonalize_dtype=dtype).step()
        return [w.detach() for w, _ in weights]

    fp32, bf16 = step(torch.float32), step(torch.bfloat16)
    for fast in (True, False):
        monkeypatch.setattr(optim, "bf16_is_fast", lambda device, fast=fast: fast)
        chosen = step(None)
        for auto, expected in zip(chosen, bf16 if fast else fp32):
            assert torch.equal(auto, expected)
    start = [w.detach() for w, _ in _muon_matrices(3)]
    for low, high, first in zip(bf16, fp32, start):
        moved = (high - first).norm()
        assert not torch.equal(low, high) and (low - high).norm() < 0.05 * moved  # bf16's precision, no more
    with pytest.raises(ValueError, match="orthogonalize_dtype=torch.float16"):
        MuonTableAdamW([{"params": [torch.nn.Parameter(torch.zeros(2, 2))], "muon": True}], lr=1.0,
                       orthogonalize_dtype=torch.float16)


def test_normuon_divides_each_output_row_by_its_running_rms():
    # NorMuon, written plainly for one tall (32 x 8) and one fused (3 x 8 x 8) weight over three steps: Muon's
    # orthogonalised update, each output row divided by the running RMS of that row, the matrix scaled to RMS 0.2.
    generator = torch.Generator().manual_seed(4)
    shapes = [((32, 8), 1), ((24, 8), 3)]
    start = [torch.randn(*shape, generator=generator) * 0.1 for shape, _ in shapes]
    grads = [[torch.randn(*shape, generator=generator) for shape, _ in shapes] for _ in range(3)]
    weights = [torch.nn.Parameter(w.clone()) for w in start]
    optimizer = MuonTableAdamW([{"params": [w], "weight_decay": 0.0, "muon": True, "fused_matrices": fused}
                                for w, (_, fused) in zip(weights, shapes)], lr=0.05, momentum=0.0,
                               orthogonalize_dtype=torch.float32, normalize_rows=True)
    expected = [w.clone() for w in start]
    running = [torch.zeros(fused, shape[0] // fused, 1) for shape, fused in shapes]
    for step_grads in grads:
        for weight, grad in zip(weights, step_grads):
            weight.grad = grad.clone()
        optimizer.step()
        for index, ((shape, fused), grad) in enumerate(zip(shapes, step_grads)):
            update = orthogonalize(grad.view(fused, shape[0] // fused, shape[1]))
            running[index] = NORMUON_BETA2 * running[index] + (1 - NORMUON_BETA2) * update.square().mean(-1, True)
            normalized = update / running[index].sqrt()
            normalized = normalized / normalized.square().mean(dim=(-2, -1), keepdim=True).sqrt()
            expected[index] = expected[index] - 0.05 * 0.2 * normalized.view(shape)
    for weight, want in zip(weights, expected):
        torch.testing.assert_close(weight.detach(), want, rtol=1e-4, atol=1e-6)
    # After one step every row of the tall matrix moved by the same RMS, where Muon's own rows are uneven.
    first = torch.nn.Parameter(start[0].clone())
    first.grad = grads[0][0].clone()
    MuonTableAdamW([{"params": [first], "weight_decay": 0.0, "muon": True}], lr=0.05,
                   orthogonalize_dtype=torch.float32, normalize_rows=True).step()
    row_rms = (first.detach() - start[0]).square().mean(dim=1).sqrt()
    torch.testing.assert_close(row_rms, torch.full_like(row_rms, 0.05 * 0.2), rtol=1e-4, atol=0)
    muon_rows = orthogonalize(grads[0][0]).square().mean(dim=1).sqrt()
    assert muon_rows.std() / muon_rows.mean() > 0.1
    state = optimizer.state[weights[1]]["row_mean_square"]
    assert state.shape == (3, 8, 1) and torch.all(state > 0)


def test_build_optimizer_gives_muon_the_hidden_matrices_and_adamw_the_rest():
    config = MegabyteConfig.preset("tiny", dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=32,
                                   hash_ngrams=(2, 3), hash_buckets=64)
    model = Megabyte(config)
    optimizer = build_optimizer(model, 1e-2, weight_decay=0.1, optimizer="muon")
    assert isinstance(optimizer, MuonTableAdamW)
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each parameter once
    muon = {id(p): group.get("fused_matrices") for group in optimizer.param_groups if group.get("muon")
            for p in group["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in muon}
    linear = {name + ".weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert names == linear - {"head.weight"} and any(name.endswith("qkv.weight") for name in names)
    assert all(muon[id(p)] == (3 if name.endswith("qkv.weight") else 1) for name, p in model.named_parameters()
               if id(p) in muon)
    assert not {id(t) for t in lookup_tables(model)} & muon.keys()  # the tables stay with the row updates
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model(ids, ids).loss.backward()
    optimizer.step()
    assert all(not torch.equal(before[name], p.detach()) for name, p in model.named_parameters() if id(p) in muon)
    assert "exp_avg" in optimizer.state[model.head.weight]
    with pytest.raises(ValueError, match="optimizer='sgd'; choose one of: adamw, muon, normuon"):
        build_optimizer(model, 1e-2, weight_decay=0.1, optimizer="sgd")
    with pytest.raises(ValueError, match="2-D matrices only"):
        MuonTableAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))], "muon": True}], lr=1.0)
