"""The optimizer: AdamW, with lookup tables updated lazily (only the rows a batch looked up).

A hashed n-gram table holds tens of thousands of rows, of which a batch looks up a fraction; dense AdamW reads and
writes every row's weight and both moments at every step, which on a CPU costs more than the network's update.
:class:`TableAdamW` updates a table's looked-up rows only (the rows whose gradient is not zero), as TensorFlow's
LazyAdam does: a row's moments and weight move when the row is used, and stand still otherwise. Every other
parameter gets torch's AdamW unchanged."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from bytemodels.model import Megabyte, lookup_tables


class TableAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` whose ``tables`` (2-D parameters among ``params``) update only the rows with a non-zero
    gradient. Its state has AdamW's keys (``step``, ``exp_avg``, ``exp_avg_sq``), so its ``state_dict`` loads into
    either class. A table's bias correction counts the table's steps, as AdamW's does."""

    def __init__(self, params: Iterable[Any], *, tables: Iterable[Tensor] = (), **options: Any) -> None:
        super().__init__(params, **options)
        self.tables = list(tables)
        self._table_ids = table_ids = {id(table) for table in self.tables}
        grouped = {id(p) for group in self.param_groups for p in group["params"]}
        if not table_ids <= grouped:
            raise ValueError("TableAdamW: every table must be one of the optimizer's parameters")
        if any(table.dim() != 2 for table in self.tables):
            raise ValueError("TableAdamW: tables are 2-D (rows, width)")
        if any(group["amsgrad"] or group["maximize"] for group in self.param_groups if
               any(id(p) in table_ids for p in group["params"])):
            raise ValueError("TableAdamW: a table's group takes neither amsgrad nor maximize")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One update: the tables' used rows here, everything else by AdamW (which skips parameters without a
        gradient, so the tables' gradients are hidden from it for the call)."""
        if closure is not None:
            raise ValueError("TableAdamW.step takes no closure")
        hidden: list[tuple[Tensor, Tensor]] = []
        try:
            for group in self.param_groups:
                for param in group["params"]:
                    if id(param) in self._table_ids and param.grad is not None:
                        self._row_step(param, group)
                        hidden.append((param, param.grad))
                        param.grad = None
            return super().step()
        finally:
            for param, grad in hidden:
                param.grad = grad

    def _row_step(self, table: Tensor, group: dict[str, Any]) -> None:
        grad = table.grad
        if grad.is_sparse:
            raise ValueError("TableAdamW: tables take dense gradients (an nn.Embedding without sparse=True)")
        state = self.state[table]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(table, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(table, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])
        # A row is used where its gradient has a non-zero entry: its largest or smallest (far cheaper than any()).
        rows = grad.amax(dim=1).ne(0).logical_or_(grad.amin(dim=1).ne(0)).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = float(group["lr"]), group["eps"], group["weight_decay"]
        used = grad.index_select(0, rows)
        exp_avg = state["exp_avg"].index_select(0, rows).lerp_(used, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(used, used, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        denominator = (exp_avg_sq / (1 - beta2 ** step)).sqrt_().add_(eps)
        weights = table.index_select(0, rows)
        if weight_decay:
            weights.mul_(1 - lr * weight_decay)
        weights.addcdiv_(exp_avg, denominator, value=-lr / (1 - beta1 ** step))
        table.index_copy_(0, rows, weights)


def adamw(model: nn.Module, lr: float, *, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95),
          fused: bool = False) -> TableAdamW:
    """The optimizer every training loop uses: AdamW with decay on Linear weights only (``Megabyte.param_groups``,
    which reads any module), and the n-gram tables updated by rows."""
    return TableAdamW(Megabyte.param_groups(model, weight_decay), tables=lookup_tables(model), lr=lr, betas=betas,
                      **({"fused": True} if fused else {}))
