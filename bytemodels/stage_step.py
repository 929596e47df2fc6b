"""Compiled decoding steps: one new position of a stage through the model's own code, over a static cache.

After the prompt, the local stage runs one byte at a time and the global stage one patch at a time, each
through a few blocks for a single position: about a hundred small operations per step, where PyTorch's
cost per operation is larger than the arithmetic of the narrow local stage. Every block keeps its keys and
values in the fixed slots of a :class:`bytemodels.layers.StaticCache`, so every step has the same shapes:
a step is one function of tensors (the stage's own ``inputs``, ``Transformer`` and ``Block`` code, called with
the cache's buffers) that ``torch.compile`` fuses once and reuses (``compile=True`` in ``Megabyte.generate``).
The local stage's step (:class:`ByteStep`) also embeds the byte before and draws the next one, so a byte is
one call.
"""

from __future__ import annotations

import itertools
import types
import warnings
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bytemodels import tokens
from bytemodels.layers import CacheView
from bytemodels.ngrams import hash_windows
from bytemodels.sampling import draw_or_greedy
from bytemodels.words import after_first_block


class StageStep(nn.Module):
    """One new position of every row through a stage's transformer: ``Transformer.forward`` with a cache
    view made of its tensor arguments (what a compiled function can take).

    Not a submodule of the model (it holds references to the model's own layers)."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, x: Tensor, keys: list[Tensor], values: list[Tensor], last_attn: list[Tensor],
                last_mlp: list[Tensor], slot: Tensor, readable: Tensor, cos: Tensor, sin: Tensor,
                after_block: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
        """``x`` (batch, 1, dim) the new position's input; the cache's buffers (see :class:`CacheView`) are
        updated in place; ``slot`` (1,) where its keys go; ``cos``/``sin`` its rotary angles; ``after_block`` as
        in ``Transformer.forward``. Returns the (batch, 1, dim) output, normalised."""
        view = CacheView(keys, values, last_attn, last_mlp, slot, readable)
        return self.transformer(x, view, rope=(cos, sin), after_block=after_block)


class ByteStep(nn.Module):
    """The local stage's step: from the id before the new byte to the new byte's logits and a draw of it.

    ``previous`` (batch, reach) are the ids up to the one before the new byte (at a group's first byte the byte
    before the group; PAD before the sequence), the last one alone without hashed n-grams, as many as the hashes
    reach with them (their rows are hashed here, in the step), two at least with word blocks; ``contexts`` (batch,
    group, dim) the whole group's, ``unit`` (1,) the new byte's index in it: the input is ``Stage.inputs`` of them,
    as in training."""

    def __init__(self, stage: nn.Module, head: nn.Module, ngram_powers: Tensor | None = None,
                 buckets: int = 0, word_table: bool = False, word_blocks: nn.Module | None = None) -> None:
        super().__init__()
        self.stage = stage
        self.blocks = StageStep(stage.transformer)
        self.head = head
        self.ngram_powers = ngram_powers
        self.buckets = buckets
        self.word_table = word_table
        self.word_blocks = word_blocks

    def forward(self, previous: Tensor, contexts: Tensor, unit: Tensor, keys: list[Tensor], values: list[Tensor],
                last_attn: list[Tensor], last_mlp: list[Tensor], slot: Tensor, readable: Tensor, cos: Tensor,
                sin: Tensor, producible: Tensor | None = None, temperature: Tensor | None = None,
                uniform: Tensor | None = None, words: tuple = ()) -> tuple[Tensor, Tensor | None]:
        """Returns (batch, vocab) float logits and (batch,) the id drawn from them by ``draw_or_greedy`` at
        ``temperature`` (0-d; 0 is greedy) with ``uniform`` (batch, 1) float64 among the ids ``producible``
        allows (``bytemodels.sampling.producible_mask``), or None without them; see :meth:`StageStep.forward`
        for the cache. A model with word blocks takes as ``words`` their cache's tensors (a :class:`CacheView`'s
        fields), the (batch,) count of word ends before the byte (advanced here) and their rotary table (cos, sin):
        ``previous`` then holds at least the two ids before the byte, which say whether it ends a word."""
        ngrams = None
        if self.ngram_powers is not None:  # (batch, 1 position, 1 id, lengths)
            reach = self.ngram_powers.shape[0]
            ngrams = hash_windows(previous[:, -reach:], self.ngram_powers, self.buckets, self.word_table)[:, None, None]
        x = self.stage.inputs(previous[:, -1:, None], (unit == 0)[None], contexts.index_select(1, unit), ngrams)
        after_block = None
        if words:  # whether the byte ends a word, found here from the two ids before it
            *fields, count, cos_table, sin_table = words
            word_cache = CacheView(*fields)
            window = F.pad(previous[:, -2:], (0, 1), value=tokens.PAD_ID)
            tracked = self.word_blocks.track(window, count, word_cache.readable, word_cache.slots,
                                             (cos_table, sin_table))
            after_block = after_first_block(self.word_blocks.adder(*word_cache, *tracked))
        hidden = self.blocks(x, keys, values, last_attn, last_mlp, slot, readable, cos, sin, after_block)
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
        # between them was a third of a small model's step (docs/experiments.md, "Generation speed").
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
    if stage.is_local:
        step = ByteStep(stage, model.head, model.ngram_powers, model.config.hash_buckets,
                        bool(model.config.hash_word_bytes), model.words)
    else:
        step = StageStep(stage.transformer)
    if not compile:
        return step
    compiled = _COMPILED.setdefault(model, {})
    if index not in compiled:
        compiled[index] = CompiledStep(step, next(model.parameters()).device.type)
    return compiled[index]
