"""TableAdamW: AdamW for the network, lookup tables updated by the rows a batch used."""

import pytest
import torch

from bytemodels.config import MegabyteConfig
from bytemodels.model import Megabyte, lookup_tables
from bytemodels.optim import TableAdamW, adamw


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
    optimizer = adamw(model, 1e-2, weight_decay=0.1)
    before = [t.detach().clone() for t in tables]
    ids = torch.full((1, 32), 65)  # one repeated byte: a few n-gram rows only
    model(ids, ids).loss.backward()
    optimizer.step()
    for table, old in zip(tables, before):
        moved = (table.detach() != old).any(dim=1)
        # 2-grams "AA" and PAD A; 3-grams "AAA", PAD A A and PAD PAD A: five rows of 128 at most.
        assert 0 < int(moved.sum()) <= 5
