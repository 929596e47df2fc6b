"""One decoding step of a stage over key/value slots of a fixed shape.

After the prompt, the local stage runs one byte at a time and the global stage one patch at a time, each
through a few blocks for a single position: about a hundred small operations per step, where PyTorch's
cost per operation is larger than the arithmetic of the narrow local stage. Here each block keeps its
keys and values in fixed slots (the local stage: the previous group's, for cross-patch attention, then
the current group's; the global stage: one per patch, room for the whole generation), so every step has
the same shapes: the step is one function of tensors that ``torch.compile`` fuses once and reuses
(``compile=True`` in ``Megabyte.generate``); without compiling it runs the same operations eagerly. The
local stage's step (:class:`ByteStep`) also embeds the byte before and draws the next one, so a byte is one
call.
"""

from __future__ import annotations

import itertools
import types
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bytemodels.layers import KVCache, apply_rotary, token_shift
from bytemodels.sampling import draw_or_greedy


class StageStep(nn.Module):
    """One new position of every row through a stage's transformer.

    Not a submodule of the model (it holds references to the model's own layers): ``forward`` reads and
    updates the tensors of a :class:`StageSlots`."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, x: Tensor, keys: list[Tensor], values: list[Tensor], last_attn: list[Tensor],
                last_mlp: list[Tensor], slot: Tensor, readable: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """``x`` (batch, 1, dim) the new position's input; per layer, ``keys``/``values`` (batch, heads, slots,
        head_dim) and ``last_attn``/``last_mlp`` (batch, dim) are updated in place; ``slot`` (1,) where its
        keys go; ``readable`` (batch, slots) the slots each row may attend to (up to ``slot``);
        ``cos``/``sin`` its rotary angles.
        Returns the (batch, 1, dim) output, normalised.

        The buffers are separate tensors per layer, not views of one: compiled, an in-place write into a
        view of an input copies the whole input twice per call, into a whole input it writes one slot."""
        batch = x.shape[0]
        allowed = (readable & (torch.arange(readable.shape[1], device=x.device) <= slot))[:, None, None, :]
        inputs = x
        for layer, block in enumerate(self.transformer.blocks):
            x = self.transformer.mix_input(layer, x, inputs)
            attn_input = x
            if block.shift:
                attn_input = token_shift(x, last_attn[layer], None)
                last_attn[layer].copy_(x[:, 0])
            attn = block.attn
            q, k, v = attn.project(block.attn_norm(attn_input))
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            keys[layer].index_copy_(2, slot, k)
            values[layer].index_copy_(2, slot, v)
            y = F.scaled_dot_product_attention(q, keys[layer], values[layer], attn_mask=allowed)
            x = x + attn.out(y.transpose(1, 2).reshape(batch, 1, -1))
            mlp_input = x
            if block.shift:
                mlp_input = token_shift(x, last_mlp[layer], None)
                last_mlp[layer].copy_(x[:, 0])
            x = x + block.mlp(block.mlp_norm(mlp_input))
        return self.transformer.norm(x)


class ByteStep(nn.Module):
    """The local stage's step: from the id before the new byte to the new byte's logits and a draw of it.

    Its input is the embedding of ``previous`` (batch, 1) scaled by ``embed_weight`` (batch, 1, 1), plus the
    stage's start vector scaled by ``start_weight`` (0-d), plus its context: inside a group the
    weights are 1 and 0, at a group's first byte 1 for the start vector and, for the byte before, 1 where the
    byte is real (see ``Stage.first_input``).
    ``contexts`` (batch, group, dim) are the whole group's, ``unit`` (1,) the new byte's index in it."""

    def __init__(self, stage: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.stage = stage
        self.blocks = StageStep(stage.transformer)
        self.head = head

    def forward(self, previous: Tensor, embed_weight: Tensor, start_weight: Tensor, contexts: Tensor, unit: Tensor,
                keys: list[Tensor], values: list[Tensor], last_attn: list[Tensor], last_mlp: list[Tensor],
                slot: Tensor, readable: Tensor, cos: Tensor, sin: Tensor, producible: Tensor | None = None,
                temperature: Tensor | None = None, uniform: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Returns (batch, vocab) float logits and (batch,) the id drawn from them by ``draw_or_greedy`` at
        ``temperature`` (0-d; 0 is greedy) with ``uniform`` (batch, 1) float64 among the ids ``producible``
        allows (``bytemodels.sampling.producible_mask``), or None without them; see :meth:`StageStep.forward`
        for the slots."""
        embedded = self.stage.embed.bytes(previous)
        x = embedded * embed_weight + self.stage.start.to(embedded.dtype) * start_weight
        x = x + contexts.index_select(1, unit)
        hidden = self.blocks(x, keys, values, last_attn, last_mlp, slot, readable, cos, sin)
        logits = self.head(hidden[:, 0]).float()
        if temperature is None:
            return logits, None
        return logits, draw_or_greedy(logits + producible, temperature, uniform)


class CompiledStep:
    """``torch.compile`` of a :class:`StageStep`, compiled on the first call (and again for a new batch size
    or number of slots); where compiling fails (no C++ compiler, a broken backend) it warns once and runs
    the step uncompiled."""

    def __init__(self, step: StageStep | ByteStep, device_type: str = "cpu") -> None:
        self.eager = step
        # Default dynamic shapes: a second size of the global stage's slots (or batch size) recompiles once
        # with that size symbolic, and no more. On a CPU the compiled code's wrapper is C++ rather than Python:
        # a step is a few dozen kernel and matrix calls on one position, and the Python wrapper's bookkeeping
        # between them was a third of a small model's step (docs/benchmarks.md, "Generation with compiled steps").
        options: dict = {"cpp_wrapper": True} if device_type == "cpu" else {}
        # Dynamo checks guards before every call, over 500 for a step (every attribute of every layer it
        # read), a tenth of a small model's decoding step. Only the tensors' guards (the inputs' and the
        # parameters' shapes, strides, dtypes and devices) and the global state's (grad mode, autocast) are
        # kept: the layers' other attributes are fixed for a model, and the function compiled here has a code
        # object of its own, so no other model or step (whose attributes may differ) reaches its compiled code.
        options["guard_filter_fn"] = _kept_guards
        self.compiled = torch.compile(_own_code(step), options=options)

    def __call__(self, *args: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except torch._dynamo.exc.BackendCompilerFailed as error:
                cause = getattr(error, "inner_exception", None) or error
                reason = (str(cause).strip().splitlines() or [""])[0]
                warnings.warn(f"torch.compile failed, generation continues uncompiled: {type(cause).__name__}: "
                              f"{reason}", RuntimeWarning, stacklevel=2)
                self.compiled = None
        return self.eager(*args)


_KEPT_GUARDS = frozenset({"TENSOR_MATCH", "GLOBAL_STATE", "TORCH_FUNCTION_MODE_STACK", "DEFAULT_DEVICE"})


def _kept_guards(entries: list) -> list[bool]:
    """Dynamo's ``guard_filter_fn``: which of a compiled step's guards are checked before each call."""
    return [entry.guard_type in _KEPT_GUARDS for entry in entries]


_STEP_NUMBERS = itertools.count()


def _own_code(step: nn.Module):
    """A function that calls ``step``, with a code object made for it alone: dynamo keeps compiled code, and
    its guards, per code object."""
    def call(*args: Tensor):
        return step(*args)

    code = call.__code__.replace(co_name=f"step_{next(_STEP_NUMBERS)}")
    return types.FunctionType(code, call.__globals__, code.co_name, None, call.__closure__)

_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Model → {stage index: compiled step}, kept while the model lives (compiling takes a while)."""


def step_function(model: nn.Module, index: int, compile: bool) -> StageStep | ByteStep | CompiledStep:
    """The one-position step of stage ``index`` of ``model`` (a :class:`ByteStep` for the local stage):
    eager, or compiled once per model and kept for later calls."""
    stage = model.stages[index]
    step = ByteStep(stage, model.head) if stage.is_local else StageStep(stage.transformer)
    if not compile:
        return step
    compiled = _COMPILED.setdefault(model, {})
    if index not in compiled:
        compiled[index] = CompiledStep(step, next(model.parameters()).device.type)
    return compiled[index]


class StageSlots:
    """Keys, values and token-shift inputs of one stage's blocks, in ``size`` fixed slots.

    The current group's units go to slots ``offset, offset + 1, ...``; the slots before ``offset`` hold the
    previous group (the local stage with cross-patch attention). ``readable`` (batch, size) marks the slots
    a row may attend to at all (not its left padding). Built from the variable-length caches of the
    prompt's parallel pass; :meth:`next_group` moves on to the following group (local stage), and a stage
    whose group outgrows the slots (the global stage) gets twice as many."""

    def __init__(self, caches: list[KVCache], size: int, offset: int, readable: Tensor) -> None:
        # readable may be an expanded view; the step reads it every call, so keep it dense.
        readable = readable.contiguous()
        first = caches[0]
        keys, _ = first.stored()
        batch, heads, _, head_dim = keys.shape
        self.offset = offset
        self.length = first.length - first.prefix  # units of the current group in the slots
        if offset + self.length > size or readable.shape[1] != size:
            raise ValueError(f"{size} slots cannot hold {offset} + {self.length} units ({readable.shape[1]} readable)")
        # One tensor per layer and kind (see StageStep.forward).
        self.keys = [keys.new_zeros(batch, heads, size, head_dim) for _ in caches]
        self.values = [keys.new_zeros(batch, heads, size, head_dim) for _ in caches]
        # The token-shift inputs are the residual stream, which may be wider in dtype than keys under autocast.
        stream = first.last_attn_input.dtype if first.last_attn_input is not None else keys.dtype
        self.last_attn = [keys.new_zeros(batch, heads * head_dim, dtype=stream) for _ in caches]
        self.last_mlp = [keys.new_zeros(batch, heads * head_dim, dtype=stream) for _ in caches]
        for layer, cache in enumerate(caches):
            keys, values = cache.stored()
            start = offset - cache.prefix  # a carried prefix fills the slots before the group's
            self.keys[layer][:, :, start:start + keys.shape[2]] = keys
            self.values[layer][:, :, start:start + values.shape[2]] = values
            for stored, last in ((self.last_attn, cache.last_attn_input), (self.last_mlp, cache.last_mlp_input)):
                if last is not None:
                    stored[layer].copy_(last)
        self.readable = readable
        if self.length == 0:  # the next unit starts the group: the token before it only where the prefix is real
            self._keep_shift(self.readable[:, offset - 1] if offset and first.prefix else
                             torch.zeros_like(self.readable[:, 0]))
        self._slot_index: list[Tensor] = []

    def _keep_shift(self, rows: Tensor) -> None:
        """Token shift at a group's first unit reads the unit before the group: forget it in the other rows."""
        keep = rows.to(self.last_attn[0].dtype)[:, None]
        for last in self.last_attn + self.last_mlp:
            last.mul_(keep)

    def next_group(self, follows: bool, prefix_real: Tensor) -> None:
        """Start the next group: with cross-patch slots and ``follows`` (the group just completed precedes
        it), that group becomes the prefix; ``prefix_real`` (batch,) is False where it lies in a row's left
        padding. Otherwise the group starts with no prefix and no unit before it."""
        real = prefix_real if self.offset and follows else torch.zeros_like(prefix_real)
        if self.offset and follows:
            for buffer in self.keys + self.values:
                buffer[:, :, :self.offset] = buffer[:, :, self.offset:]
        self.readable = torch.cat((real[:, None].expand(-1, self.offset), self.readable[:, self.offset:]), dim=1)
        self._keep_shift(real)
        self.length = 0

    def _grow(self) -> None:
        self.keys = [torch.cat((buffer, torch.zeros_like(buffer)), dim=2) for buffer in self.keys]
        self.values = [torch.cat((buffer, torch.zeros_like(buffer)), dim=2) for buffer in self.values]
        self.readable = torch.cat((self.readable, torch.ones_like(self.readable)), dim=1)

    def step(self, function, inputs: tuple, *rest: Tensor | None) -> Tensor | tuple[Tensor, Tensor]:
        """Run one new unit through ``function`` (see :func:`step_function`): ``function(*inputs, <the slots>,
        *rest)``, the slots being the keys, values, token-shift inputs, the new unit's slot and ``readable``."""
        slot = self.offset + self.length
        if slot == self.readable.shape[1]:
            self._grow()
        while len(self._slot_index) <= slot:  # (1,) index tensors made once per slot
            self._slot_index.append(torch.tensor([len(self._slot_index)], device=self.readable.device))
        out = function(*inputs, self.keys, self.values, self.last_attn, self.last_mlp, self._slot_index[slot],
                       self.readable, *rest)
        self.length += 1
        return out
