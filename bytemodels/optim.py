"""The optimizer: AdamW, with lookup tables updated lazily (only the rows a batch looked up), or Muon for the
hidden matrices beside it.

A hashed n-gram table holds tens of thousands of rows, of which a batch looks up a fraction; dense AdamW reads and
writes every row's weight and both moments at every step, which on a CPU costs more than the network's update.
:class:`TableAdamW` updates a table's looked-up rows only (the rows whose gradient is not zero), as TensorFlow's
LazyAdam does: a row's moments and weight move when the row is used, and stand still otherwise. Every other
parameter gets torch's AdamW unchanged.

:class:`MuonTableAdamW` (``optimizer="muon"``) updates the hidden matrices, the weights of every ``nn.Linear``
but the output head, by Muon (Jordan et al. 2024): the momentum of the gradient, orthogonalised by a
Newton-Schulz iteration, the rule of ``torch.optim.Muon`` with Moonshot's scale (``adjust_lr_fn=
"match_rms_adamw"``: the update's RMS is AdamW's, so the same learning rate, schedule and weight decay apply).
``optimizer="normuon"`` is Muon with NorMuon's row normalisation (Li et al. 2025): each output neuron's row of the
orthogonalised update divided by a running RMS of that row, the whole then scaled to the same RMS, so that no
neuron's weights move much more than another's (an orthogonal tall matrix's rows have uneven norms).
One optimizer holds both, so the trainer's schedule, checkpoints and resume treat it as any other."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from bytemodels.distributed import bf16_is_fast
from bytemodels.layers import ScaledLinear
from bytemodels.model import Megabyte, lookup_tables

#: The optimizers a training run can use (``TrainConfig.optimizer``).
OPTIMIZERS = ("adamw", "muon", "normuon")
#: Muon's momentum and Newton-Schulz steps (``torch.optim.Muon``'s defaults) and the RMS its update is scaled to.
MUON_MOMENTUM = 0.95
NEWTON_SCHULZ_STEPS = 5
#: The quintic iteration's coefficients (Jordan's, as ``torch.optim.Muon`` uses them): x <- a x + (b G + c G^2) x.
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
MUON_RMS = 0.2
#: NorMuon's decay of each row's running mean square (its paper's beta2).
NORMUON_BETA2 = 0.95


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
                    if param.grad is not None and self._own_step(param, group):
                        hidden.append((param, param.grad))
                        param.grad = None
            return super().step()
        finally:
            for param, grad in hidden:
                param.grad = grad

    def _own_step(self, param: Tensor, group: dict[str, Any]) -> bool:
        """Update ``param`` here and return True, or leave it to AdamW (False)."""
        if id(param) in self._table_ids:
            self._row_step(param, group)
            return True
        return False

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


def orthogonalize(matrices: Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> Tensor:
    """The nearest semi-orthogonal matrix (``U V^T`` of the SVD ``U S V^T``, approximately) of each matrix of
    ``(..., rows, cols)``: Newton-Schulz's quintic iteration with Jordan's coefficients, as ``torch.optim.Muon``
    runs it (its singular values land between about 0.7 and 1.2, which trains as well as exact ones)."""
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    tall = matrices.size(-2) > matrices.size(-1)
    x = matrices.mT if tall else matrices  # the smaller Gram matrix
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    shape = x.shape
    x = x.reshape(-1, *shape[-2:])  # one batch of matrices, as baddbmm takes them
    for _ in range(steps):
        gram = x @ x.mT
        # a x + (b G + c G^2) x with the scaled sums inside the products: no passes over the matrices between them
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    x = x.reshape(shape)
    return x.mT if tall else x


class MuonTableAdamW(TableAdamW):
    """:class:`TableAdamW` whose groups marked ``muon=True`` are updated by Muon instead (each of their weights a
    2-D matrix; in a group with ``fused_matrices=n``, each weight is ``n`` matrices stacked by rows, such as
    attention's queries, keys and values, orthogonalised each on its own). ``momentum`` is Muon's, Nesterov style;
    Muon's state is a ``momentum_buffer`` and a ``step`` count per matrix.

    A step orthogonalises all matrices of one shape together, one batched Newton-Schulz iteration per shape
    (dozens of small matrix products per matrix would otherwise each pay a call's overhead), in
    ``orthogonalize_dtype``: by default bf16 where bf16 matrix products are fast (CUDA, CPUs with AMX or AVX-512
    BF16), as ``torch.optim.Muon`` runs it, and fp32 elsewhere.

    ``normalize_rows`` (NorMuon): each matrix's orthogonalised update has each output row divided by the running
    RMS of that row (state ``row_mean_square``, one value per row), and is then scaled to the RMS Muon's update has."""

    def __init__(self, params: Iterable[Any], *, momentum: float = MUON_MOMENTUM,
                 orthogonalize_dtype: torch.dtype | None = None, normalize_rows: bool = False,
                 **options: Any) -> None:
        super().__init__(params, **options)
        if not 0 <= momentum < 1:
            raise ValueError(f"MuonTableAdamW: momentum={momentum} must be in [0, 1)")
        if orthogonalize_dtype not in (None, torch.float32, torch.bfloat16):
            raise ValueError(f"MuonTableAdamW: orthogonalize_dtype={orthogonalize_dtype}; choose float32, bfloat16 "
                             "or None (bf16 where bf16 matrix products are fast)")
        self.momentum = momentum
        self.orthogonalize_dtype = orthogonalize_dtype
        self.normalize_rows = normalize_rows
        self._pending: list[_MuonUpdate] = []
        for group in self.param_groups:
            if group.get("muon") and any(param.dim() != 2 for param in group["params"]):
                raise ValueError("MuonTableAdamW: a Muon group holds 2-D matrices only")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One update: Muon's matrices (gathered while :class:`TableAdamW` hands out the parameters, then
        orthogonalised by shape), the tables' rows and AdamW's parameters."""
        self._pending.clear()
        try:
            result = super().step(closure)
            self._apply_muon()
        finally:
            self._pending.clear()
        return result

    def _own_step(self, param: Tensor, group: dict[str, Any]) -> bool:
        if not group.get("muon"):
            return super()._own_step(param, group)
        state = self.state[param]
        if not state:  # a step count as AdamW keeps one (its load_state_dict reads it); Muon itself needs none
            state["step"] = torch.tensor(0.0)
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        buffer = state["momentum_buffer"].lerp_(param.grad, 1 - self.momentum)
        update = param.grad.lerp(buffer, self.momentum)  # Nesterov: the gradient pulled towards the momentum
        fused = group.get("fused_matrices", 1)
        self._pending.append(_MuonUpdate(param, float(group["lr"]), group["weight_decay"],
                                         update.view(fused, param.shape[0] // fused, param.shape[1])))
        return True

    def _apply_muon(self) -> None:
        """Orthogonalise the gathered updates, all matrices of a shape in one batch (a tall matrix as its wide
        transpose, as :func:`orthogonalize` would), and apply them."""
        by_shape: dict[tuple[Any, ...], list[_MuonUpdate]] = {}
        for pending in self._pending:
            by_shape.setdefault((pending.param.device, *pending.wide.shape[1:]), []).append(pending)
        for (device, rows, cols), group in by_shape.items():
            dtype = self.orthogonalize_dtype or (torch.bfloat16 if bf16_is_fast(device) else torch.float32)
            orthogonal = orthogonalize(torch.cat([pending.wide for pending in group]).to(dtype))
            # An orthogonal (r x c) matrix has RMS 1/sqrt(max(r, c)): scaled to AdamW's typical 0.2 x lr per weight
            scale = MUON_RMS * max(rows, cols) ** 0.5
            for pending, matrices in zip(group, orthogonal.split([pending.wide.shape[0] for pending in group])):
                param, lr = pending.param, pending.lr
                if pending.weight_decay:
                    param.mul_(1 - lr * pending.weight_decay)
                matrices = matrices.mT if pending.tall else matrices
                if self.normalize_rows:
                    matrices, scale = self._normalized_rows(param, matrices), MUON_RMS
                param.add_(matrices.reshape(param.shape).to(param.dtype), alpha=-lr * scale)

    def _normalized_rows(self, param: Tensor, matrices: Tensor) -> Tensor:
        """NorMuon: ``matrices`` (fused, rows, cols), ``param``'s orthogonalised update, with each row divided by
        its running RMS and each matrix scaled to RMS 1 (the caller scales it to Muon's RMS)."""
        matrices = matrices.float()
        mean_square = matrices.square().mean(dim=-1, keepdim=True)
        state = self.state[param]
        if "row_mean_square" not in state:
            state["row_mean_square"] = torch.zeros_like(mean_square)
        # No bias correction: it scales every row alike, and the matrix's RMS is set below anyway.
        running = state["row_mean_square"].lerp_(mean_square, 1 - NORMUON_BETA2)
        normalized = matrices / (running.sqrt() + 1e-8)
        return normalized / (normalized.square().mean(dim=(-2, -1), keepdim=True).sqrt() + 1e-12)


class _MuonUpdate(NamedTuple):
    """A Muon weight's update gathered during a step, before it is orthogonalised."""

    param: Tensor
    lr: float
    weight_decay: float
    matrices: Tensor
    """The momentum update as (fused matrices, rows, cols)."""

    @property
    def tall(self) -> bool:
        return self.matrices.shape[-2] > self.matrices.shape[-1]

    @property
    def wide(self) -> Tensor:
        """The matrices, transposed where tall: the orientation :func:`orthogonalize` iterates in."""
        return self.matrices.mT if self.tall else self.matrices


def hidden_matrices(model: nn.Module) -> list[nn.Linear]:
    """The layers whose weights Muon updates: every ``nn.Linear`` but the output head (a :class:`ScaledLinear`,
    which, like the embeddings, reads or writes one row per symbol and stays with AdamW). A layer's
    ``fused_matrices`` attribute says how many matrices its weight stacks (1 if it has none)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear) and not isinstance(m, ScaledLinear)]


def build_optimizer(model: nn.Module, lr: float, *, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95),
                    optimizer: str = "adamw", fused: bool = False) -> TableAdamW:
    """The optimizer every training loop uses: AdamW with decay on Linear weights only (``Megabyte.param_groups``,
    which reads any module), and the n-gram tables updated by rows; with ``optimizer="muon"``, the hidden
    matrices (:func:`hidden_matrices`, decayed alike) updated by Muon; with ``optimizer="normuon"``, by Muon with
    NorMuon's row normalisation."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    groups = Megabyte.param_groups(model, weight_decay)
    options: dict[str, Any] = dict(tables=lookup_tables(model), lr=lr, betas=betas,
                                   **({"fused": True} if fused else {}))
    if optimizer == "adamw":
        return TableAdamW(groups, **options)
    by_fused: dict[int, list[Tensor]] = {}  # one Muon group per number of stacked matrices
    for layer in hidden_matrices(model):
        by_fused.setdefault(getattr(layer, "fused_matrices", 1), []).append(layer.weight)
    matrices = {id(weight) for weights in by_fused.values() for weight in weights}
    groups = [{**group, "params": [p for p in group["params"] if id(p) not in matrices]} for group in groups]
    groups += [{"params": weights, "weight_decay": weight_decay, "muon": True, "fused_matrices": fused}
               for fused, weights in sorted(by_fused.items())]
    return MuonTableAdamW([group for group in groups if group["params"]], normalize_rows=optimizer == "normuon",
                          **options)
