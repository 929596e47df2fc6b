"""Generation with key/value caches at every stage: one local step per byte, one global step per patch.

``IncrementalDecoder`` keeps, for each stage, a static cache (``bytemodels.layers.StaticCache``) of the group it
is working in (the whole sequence for the global stage, the current patch for the stage below, with the patch
before it for cross-patch attention). Asking it for the logits of the next position runs each stage only on the
units it has not seen yet, through the same ``Stage.inputs`` and ``Block`` code as training: a prompt is written
into the cache in parallel, and afterwards a stage runs once per unit it completes.

The context never outgrows the model's window (``max_seq_len``, the length it was trained on): when the
next position would lie beyond it, the context is cut to its last whole patches, about half a window
(:func:`kept_length`), and decoding continues from a fresh parallel pass over them (nanoGPT's
``idx[:, -block_size:]``, paid once per half window rather than once per byte). The caches are so
bounded by the window, whatever the output's length; the uncached path cuts the same way, so greedy output
is the same with and without the cache however long it is. In a batch, the rows that decode together (those
sharing a patch alignment, left-padded to the longest) are cut together, when the longest reaches the window.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from bytemodels import tokens
from bytemodels.layers import CacheView, GroupLayout, StaticCache
from bytemodels.sampling import Sampler, producible_mask
from bytemodels.stage_step import step_function
from bytemodels.words import after_first_block


WORD_PREFILL_CHUNK = 256
"""Byte positions per call of the word blocks in a prompt's prefill (``IncrementalDecoder._prefill_words``)."""


@dataclass
class _StageState:
    cache: StaticCache
    group_start: int = -1  # byte position where the stage's current group starts
    processed: int = 0  # units of the group already run through the transformer
    context: Tensor | None = None  # (batch, g, d): contexts from the stage above for this group
    logits: Tensor | None = None  # local stage: (batch, vocab) at the newest processed byte
    drawn: Tensor | None = None  # local stage: (batch,) the id its compiled step drew there
    outputs: dict[int, Tensor] = field(default_factory=dict)  # upper stages: unit → (batch, d) output


class IncrementalDecoder:
    """Cached decoding for a batch of sequences that share one patch alignment.

    ``ids`` (batch, time) may be left-padded with whole global patches; ``pad_units`` (batch,) says
    how many, and those units are masked out of the global attention. Call ``logits()`` for the
    distribution of the next id (or ``sample(sampler)`` for the id itself), then ``append(next_ids)``.

    Every stage keeps its keys and values in a :class:`StaticCache`: the prompt is written into it in
    parallel, then the global and the local stage run one unit at a time (``bytemodels.stage_step``, which
    ``compile`` compiles), through the same blocks. ``max_length`` (ids, prompt included), when known, sizes
    the global stage's slots once."""

    def __init__(self, model, ids: Tensor, pad_units: Tensor | None = None, compile: bool = False,
                 max_length: int | None = None) -> None:
        self.model = model
        last = model.config.num_stages - 1
        self.steps = {index: step_function(model, index, compile) for index in {0, last}}
        self.max_length = max_length
        self.ids = ids
        self.unit_sizes = model.config.unit_sizes
        self.pad_units = pad_units if pad_units is not None and bool(pad_units.any()) else None
        with torch.inference_mode():  # as the decoding that writes them (a compiled step checks the dispatch keys)
            self.states = [_StageState(self._new_cache(index, stage)) for index, stage in enumerate(model.stages)]
        self.started = False
        # Cross-patch attention: every local layer of a group reads the group before it, so before the first
        # prediction the local stage runs over as many of the prompt's last whole groups as a group can reach
        # back (exact: what lies further back cannot reach it). A block reaches one group back through
        # attention; with token shift three (the keys of the group before read its own predecessor's last
        # token, and the MLP reads the group before's last token).
        local = model.stages[-1]
        self.reach = sum(3 if block.shift else 1 for block in local.transformer.blocks) if local.cross_patch else 0
        self.local_reach = self.reach
        self.word_cache = None
        self._word_output: tuple[int, Tensor] | None = None  # (first byte position, output): see _prefill_words
        if model.words is not None:
            # The word blocks read every word end of the window before a byte, so the local stage runs over the
            # whole prompt (see _prefill_words), and the word blocks keep a slot per byte position (_word_inputs).
            self.reach = -(-model.config.max_seq_len // self.unit_sizes[-2])
            with torch.inference_mode():
                self.word_cache = self._new_word_cache()
            self.word_count = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
            self.word_rope = model.words.rope_table(ids.device)  # made once: read at every byte
        # Upper stages keep their outputs for that many units back, for the contexts of those groups.
        self.kept_outputs = self.reach + 2
        # The compiled local step also draws the next id: (producible ids, temperature, uniform draws) from
        # sample(); logits() alone draws greedily, to keep one compiled graph. Uncompiled, drawing inside the
        # step gains nothing (the same operations) and logits() alone would pay for it.
        self.draws_in_step = compile
        self._draw_inputs: tuple[Tensor, Tensor, Tensor] | None = None
        self._constants: dict[str, Tensor] = {}

    def append(self, next_ids: Tensor) -> None:
        self.ids = torch.cat((self.ids, next_ids.view(-1, 1).to(self.ids)), dim=1)

    @torch.inference_mode()
    def sample(self, sampler: Sampler) -> Tensor:
        """(batch,) the next id of every row, drawn by ``sampler``: inside the local stage's compiled decoding
        step where the sampler allows it (no top-k or top-p), else from ``logits()``."""
        fused = sampler.fused_inputs(self.ids.shape[0]) if self.draws_in_step else None
        local = self.states[-1]
        local.drawn = None
        self._draw_inputs = None if fused is None else (self._producible(), *fused)
        try:
            logits = self.logits()
        finally:
            self._draw_inputs = None
        if fused is not None and local.drawn is not None:
            return local.drawn
        return sampler(logits, None if fused is None else fused[1])

    def _producible(self) -> Tensor:
        return producible_mask(self.model.config.vocab_size, self.ids.device)

    def _local_draw_inputs(self, batch: int) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """What the local step draws with: sample()'s inputs; without them a greedy draw when compiled (one
        graph for both), none uncompiled."""
        if self._draw_inputs is not None:
            return self._draw_inputs
        if not self.draws_in_step:
            return None, None, None
        return self._producible(), self._constant("greedy", ()), self._constant("no draw", (batch, 1))

    @torch.inference_mode()
    def logits(self) -> Tensor:
        """(batch, vocab) logits for the id at position ``ids.shape[1]``."""
        position = self.ids.shape[1]
        if not self.started and self.reach:
            group_bytes = self.unit_sizes[-2]
            current_start = position // group_bytes * group_bytes
            first = max(current_start - self.reach * group_bytes, 0)
            if self.word_cache is not None:
                first = self._prefill_words(current_start)
            for start in range(first, current_start, group_bytes):
                self._advance(start + group_bytes - 1)
            self._word_output = None
        self.started = True
        return self._advance(position)

    def _advance(self, position: int, upper_only: bool = False) -> Tensor | None:
        """Run every stage up to what the prediction of the id at ``position`` needs; return the
        local stage's logits there (with ``upper_only`` run the stages above the local one only)."""
        above = None  # (stage, state, unit) of the stage above, whose output at that unit feeds this group
        for index, (stage, state) in enumerate(zip(self.model.stages, self.states)):
            if upper_only and stage.is_local:
                return None
            unit = self.unit_sizes[index]
            group_bytes = self.unit_sizes[index - 1] if index else None
            group_start = (position // group_bytes) * group_bytes if index else 0
            if state.group_start != group_start:
                follows = stage.cross_patch and state.group_start == group_start - group_bytes \
                    and state.processed * unit == group_bytes
                state.cache.next_group(follows, self._prefix_real(group_start))
                state.group_start, state.processed, state.outputs = group_start, 0, {}
                if above is not None:
                    above_stage, above_state, above_unit = above
                    state.context = above_stage.contexts(above_state.outputs[above_unit][:, None])[:, 0]
            current = (position - group_start) // unit
            if state.processed <= current:
                # The global stage runs every unit the ids allow at once (a prompt in one pass, even while
                # the local stage warms up on earlier patches).
                self._run_stage(index, stage, state, self.ids.shape[1] // unit if index == 0 else current)
            if stage.is_local:
                return state.logits
            above = (stage, state, current)
        raise AssertionError("the last stage is always local")

    def _prefix_real(self, group_start: int) -> Tensor:
        """(batch,) whether the local group before the one at ``group_start`` lies outside each row's left padding."""
        if self.pad_units is None:
            return torch.ones(self.ids.shape[0], dtype=torch.bool, device=self.ids.device)
        return group_start - self.unit_sizes[-2] >= self.pad_units * self.unit_sizes[0]

    def _run_stage(self, index: int, stage, state: _StageState, current: int) -> None:
        """Run units ``state.processed .. current`` of the stage's group through its transformer."""
        first, unit, start = state.processed, stage.unit, state.group_start
        batch, time, cache = self.ids.shape[0], current + 1 - first, state.cache
        # Cross-patch attention counts rotary positions in bytes across groups (as in training).
        cos, sin = stage.transformer.rotary.at((start if stage.cross_patch else 0) + first, time, self.ids.device)
        view = cache.view(time)
        step = self.steps.get(index) if time == 1 else None  # one new unit: the stage's (compiled) step
        if step is not None and stage.is_local:  # the step embeds the byte before and draws the next one itself
            words = () if self.word_cache is None else self._word_state(start + first)
            state.logits, state.drawn = step(*self._byte_inputs(state), *view, cos, sin,
                                             *self._local_draw_inputs(batch), words)
            cache.advance(time)
            state.processed = current + 1
            return
        add_words = self._word_adder(start + first, time) if stage.is_local and self.word_cache is not None else None
        # The ids of the unit before each position (PAD before the sequence).
        low = start + (first - 1) * unit
        before = self.ids[:, max(low, 0): start + current * unit]
        if low < 0:
            before = F.pad(before, (-low, 0), value=tokens.PAD_ID)
        positions = torch.arange(first, current + 1, device=self.ids.device)
        starts = positions == 0
        if index == 0 and self.pad_units is not None:  # a left-padded row begins at its first real unit
            starts = starts | (positions[None, :] == self.pad_units[:, None])
        context = state.context[:, first: current + 1] if state.context is not None else None
        ngrams = self._ngrams(low, start + current * unit)
        if ngrams is not None:
            ngrams = ngrams.reshape(batch, time, unit, -1)
        x = stage.inputs(before.reshape(batch, time, unit), starts, context, ngrams)
        if step is not None:
            hidden = step(x, *view, cos, sin)
        elif add_words is not None:
            hidden = stage.transformer(x, view, rope=(cos, sin), after_block=after_first_block(add_words))
        else:
            hidden = stage.transformer(x, view, rope=(cos, sin))
        cache.advance(time)
        state.processed = current + 1
        if stage.is_local:
            state.logits = self.model.head(hidden[:, -1]).float()
        else:
            for offset in range(max(first, current + 1 - self.kept_outputs), current + 1):
                state.outputs[offset] = hidden[:, offset - first]
            for stale in [kept for kept in state.outputs if kept <= current - self.kept_outputs]:
                del state.outputs[stale]

    def _prefill_words(self, end: int) -> int:
        """Before the first prediction of a model with word blocks: run the local stage's first block over the
        prompt's whole groups before byte ``end`` at once (as training does) and the word blocks over them through
        their cache, keeping their output at the last groups (``_word_output``). Returns the byte position from
        which the local stage then runs group by group: those last groups, as many as cross-patch attention reaches
        (exact: the word blocks' output there is an input like the contexts). A left-padded batch, a model of more
        than two stages or a prompt of few groups run group by group from the start (returns 0)."""
        group_bytes = self.unit_sizes[-2]
        far = max(end - self.local_reach * group_bytes, 0)
        if far == 0 or group_bytes == 1 or self.pad_units is not None or len(self.model.stages) != 2:
            return 0
        self._advance(end - 1, upper_only=True)  # the global stage, over the whole prompt
        upper, local = self.model.stages
        batch, groups, device = self.ids.shape[0], end // group_bytes, self.ids.device
        outputs = torch.stack([self.states[0].outputs[unit] for unit in range(groups)], dim=1)
        contexts = upper.contexts(outputs).reshape(batch * groups, group_bytes, -1)
        # Each position's input reads the byte before it and the hashed n-grams ending there (PAD before).
        before = F.pad(self.ids[:, :end], (1, -1), value=tokens.PAD_ID).reshape(batch * groups, group_bytes, 1)
        ngrams = self._ngrams(-1, end - 1)
        if ngrams is not None:
            ngrams = ngrams.reshape(batch * groups, group_bytes, 1, -1)
        starts = torch.arange(group_bytes, device=device) == 0
        x = local.inputs(before, starts, contexts, ngrams)
        transformer = local.transformer
        layout, rope = None, transformer.rotary.at(0, group_bytes, device)
        if local.cross_patch:
            layout, rope = GroupLayout.build(x.shape[0], groups, group_bytes, transformer.rotary, device), None
        hidden = transformer.blocks[0](transformer.mix_input(0, x, x), rope, None, layout).reshape(batch, end, -1)
        # The word blocks in chunks: their attention scores (batch, heads, chunk, window) stay small.
        outputs = []
        for first in range(0, end, WORD_PREFILL_CHUNK):
            time = min(WORD_PREFILL_CHUNK, end - first)
            adder = self.model.words.adder(*self._word_inputs(first, time), output_only=True)
            outputs.append(adder(hidden[:, first:first + time]))
        self._word_output = (far, torch.cat(outputs, dim=1)[:, far:])
        return far

    def _word_adder(self, first: int, time: int):
        """The word blocks' part of the local stage at byte positions ``first .. first + time - 1``: the prefill's
        output where it holds them (``_prefill_words``), else through their cache."""
        if self._word_output is not None:
            start, output = self._word_output
            if start <= first and first + time <= start + output.shape[1]:
                part = output[:, first - start:first - start + time]
                return lambda hidden: hidden + part
        return self.model.words.adder(*self._word_inputs(first, time))

    def _word_inputs(self, first: int, time: int) -> tuple:
        """What the word blocks need at byte positions ``first .. first + time - 1``, the local stage's next ones
        (``WordBlocks.adder``'s arguments): the word cache's view of their slots (a slot per byte position), their
        rotary angles and which of them are word ends within the capacity (``WordBlocks.track``)."""
        view = self._word_view(first, time)
        # The two ids before the first position and the ids before the others; the last position's own id (a
        # placeholder here) is never read.
        window = F.pad(self._ids_up_to(first + time - 2, time + 1), (0, 1), value=tokens.PAD_ID)
        real = None
        if self.pad_units is not None:  # no word ends in a row's left padding
            positions = torch.arange(first, first + time, device=window.device)
            real = positions[None, :] >= self.pad_units[:, None] * self.unit_sizes[0]
        return (*view, *self.model.words.track(window, self.word_count, view.readable, view.slots, self.word_rope,
                                               real))

    def _word_state(self, first: int) -> tuple:
        """The word blocks' inputs for the local stage's one-byte step at byte position ``first``, which does their
        bookkeeping itself (``ByteStep``): the cache's view of the slot, the count of word ends, the rotary table."""
        return (*self._word_view(first, 1), self.word_count, *self.word_rope)

    def _word_view(self, first: int, time: int) -> CacheView:
        cache = self.word_cache
        if cache.length != first:
            raise AssertionError(f"the word blocks are at byte {cache.length}, the local stage at {first}")
        view = cache.view(time)
        cache.advance(time)
        return view

    def _new_word_cache(self) -> StaticCache:
        """The word blocks' cache: a slot per byte position of the generation (within the window), none readable
        until the decoder finds a word end there."""
        length = max(self.max_length or 0, self.ids.shape[1] + 1)
        size = -(-length // self.unit_sizes[0]) * self.unit_sizes[0]
        words, device = self.model.words, self.ids.device
        blocks = words.transformer.blocks
        stream = words.project_in.weight.dtype
        kv = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else stream
        readable = torch.zeros(self.ids.shape[0], size, dtype=torch.bool, device=device)
        return StaticCache(len(blocks), blocks[0].attn.heads, words.project_in.out_features, size, 0, readable, kv,
                           stream)

    def _constant(self, name: str, shape: tuple[int, ...], value: float = 0.0, dtype=torch.float64) -> Tensor:
        """A tensor made once per decoder: the local step's inputs that do not change from byte to byte."""
        if name not in self._constants:
            self._constants[name] = torch.full(shape, value, dtype=dtype, device=self.ids.device)
        return self._constants[name]

    def _byte_inputs(self, state: _StageState) -> tuple[Tensor, Tensor, Tensor]:
        """The ids up to the one before the local stage's next byte (at a group's first byte, the byte before the
        group; PAD before the sequence): the last one, or as many as the hashed n-grams and word reach; the group's
        contexts and the byte's index among them: what ``ByteStep`` takes."""
        first, start = state.processed, state.group_start
        # The group's contexts whole and the byte's index: a slice would be a new storage offset every byte.
        unit = self._constant(f"unit {first}", (1,), first, torch.long)
        powers = self.model.ngram_powers
        # The word blocks read the two ids before the byte (whether it ends a word).
        reach = max(1 if powers is None else powers.shape[0], 1 if self.word_cache is None else 2)
        return self._ids_up_to(start + first - 1, reach), state.context, unit

    def _ids_up_to(self, position: int, count: int) -> Tensor:
        """(batch, count) the ids at ``position - count + 1 .. position``, PAD before the sequence, contiguous: a
        compiled step would recompile for every new stride of a slice of the growing ``ids``."""
        low = position - count + 1
        if low >= 0:
            return self.ids[:, low:position + 1].clone(memory_format=torch.contiguous_format)
        if position < 0:
            return self._constant(f"no ids {count}", (self.ids.shape[0], count), tokens.PAD_ID, self.ids.dtype)
        return F.pad(self.ids[:, :position + 1], (-low, 0), value=tokens.PAD_ID)

    def _ngrams(self, low: int, high: int) -> Tensor | None:
        """(batch, high - low, lengths) the table rows of the hashed n-grams ending at positions ``low .. high - 1``
        (``Megabyte.forward``'s, PAD before the sequence); None for a model without them."""
        powers = self.model.ngram_powers
        if powers is None:
            return None
        reach = powers.shape[0] - 1  # the ids before ``low`` that its n-grams read
        return self.model.ngram_rows(self._ids_up_to(high - 1, high - low + reach))[:, reach:]

    def _new_cache(self, index: int, stage) -> StaticCache:
        """A stage's static cache: the global stage holds every patch of the generation (within the window),
        a stage below its group (and with cross-patch attention the group before, in the slots before it)."""
        device, batch = self.ids.device, self.ids.shape[0]
        if index == 0:
            length = max(self.max_length or 0, self.ids.shape[1] + 1)
            size, offset = -(-length // self.unit_sizes[0]) + 1, 0  # one more slot: a last patch's step
        else:
            group = self.unit_sizes[index - 1] // stage.unit
            offset = group if stage.cross_patch else 0
            size = offset + group
        slots = torch.arange(size, device=device)
        low = self.pad_units[:, None] if index == 0 and self.pad_units is not None else 0
        readable = (slots[None, :] >= offset) & (slots[None, :] >= low)
        blocks = stage.transformer.blocks
        heads = blocks[0].attn.heads if len(blocks) else 1
        stream = next(stage.parameters()).dtype
        kv = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else stream
        return StaticCache(len(blocks), heads, stage.start.shape[0], size, offset,
                           readable.expand(batch, -1), kv, stream)


def kept_length(length: int, window: int, patch: int) -> int:
    """How many of a context's last ``length`` ids decoding keeps when the next position (``length``) lies
    outside the ``window``: whole patches are dropped from the front, so the patch grid stays where it was, until
    about half a window is left (``length`` itself while the context fits)."""
    if length < window:
        return length
    half = window // 2 // patch * patch
    if half == 0:
        raise ValueError(f"max_seq_len={window} holds one patch of {patch} bytes: generating past it needs a "
                         "window of at least two patches")
    return length - (length - half) // patch * patch


class FullRecompute:
    """The reference: recomputes the whole prefix of every row for every new id (no cache).

    Its contexts are cut to the window as the cached decoder's are: rows that share a patch alignment (which
    the cached path decodes together, left-padded to the longest) are cut when the longest reaches the window,
    each to its last ``kept_length`` ids."""

    def __init__(self, model, rows: list[list[int]]) -> None:
        self.model = model
        self.rows = [list(row) for row in rows]
        self.device = next(model.parameters()).device
        self.window, self.patch = model.config.max_seq_len, model.config.patch_size

    def sample(self, sampler: Sampler) -> Tensor:
        return sampler(self.logits())

    def _crop(self) -> None:
        longest: dict[int, int] = {}
        for row in self.rows:
            alignment = len(row) % self.patch
            longest[alignment] = max(longest.get(alignment, 0), len(row))
        for row in self.rows:
            longest_here = longest[len(row) % self.patch]
            keep = kept_length(longest_here, self.window, self.patch)
            if len(row) > keep:
                del row[:len(row) - keep]

    def append(self, next_ids: Tensor) -> None:
        for row, token in zip(self.rows, next_ids.tolist()):
            row.append(token)

    @torch.inference_mode()
    def logits(self) -> Tensor:
        self._crop()
        out = []
        for row in self.rows:
            # logits[t] depends on ids before t only, so a PAD placeholder at t is never read.
            ids = torch.tensor([row + [tokens.PAD_ID]], device=self.device)
            out.append(self.model(ids).logits[0, -1].float())
        return torch.stack(out)


class WindowedDecoder:
    """An :class:`IncrementalDecoder` whose context is cut to the model's window (see :func:`kept_length`):
    when the next position would lie beyond it, a fresh decoder runs over the kept ids in parallel."""

    def __init__(self, model, ids: Tensor, pad_units: Tensor, compile: bool, max_length: int) -> None:
        self.model, self.compile = model, compile
        self.window, self.patch = model.config.max_seq_len, model.config.patch_size
        self.decoder = self._fresh(ids, pad_units, min(max_length, self.window))

    def _fresh(self, ids: Tensor, pad_units: Tensor, max_length: int) -> IncrementalDecoder:
        keep = kept_length(ids.shape[1], self.window, self.patch)
        if keep < ids.shape[1]:
            dropped = (ids.shape[1] - keep) // self.patch  # whole patches, padding first
            ids = ids[:, -keep:].clone(memory_format=torch.contiguous_format)
            pad_units = (pad_units - dropped).clamp(min=0)
        return IncrementalDecoder(self.model, ids, pad_units, self.compile, max_length)

    def _within_window(self) -> IncrementalDecoder:
        decoder = self.decoder
        if decoder.ids.shape[1] >= self.window:
            pad_units = decoder.pad_units if decoder.pad_units is not None else \
                torch.zeros(decoder.ids.shape[0], dtype=torch.long, device=decoder.ids.device)
            # The same slot count as before the cut: a compiled step keeps its shapes.
            self.decoder = decoder = self._fresh(decoder.ids, pad_units, self.window)
        return decoder

    def sample(self, sampler: Sampler) -> Tensor:
        return self._within_window().sample(sampler)

    def logits(self) -> Tensor:
        return self._within_window().logits()

    def append(self, next_ids: Tensor) -> None:
        self.decoder.append(next_ids)


def _prompt_rows(prompt, prefix_ids: Sequence[int], vocab_size: int) -> tuple[list[list[int]], bool]:
    """Prompts as lists of ids, and whether a single ``bytes`` prompt was given.

    Ids outside the vocabulary (in a tensor prompt or ``prefix_ids``; bytes are always in it) are refused here:
    the embedding would fail without saying which, and on a GPU with a device assert."""
    if isinstance(prompt, Tensor):
        if prompt.dim() == 1:
            prompt = prompt[None]
        if prompt.dim() != 2:
            raise ValueError(f"a tensor prompt must be (batch, time) ids, got shape {tuple(prompt.shape)}")
        if prompt.is_floating_point() or prompt.is_complex() or prompt.dtype == torch.bool:
            raise TypeError(f"a tensor prompt must hold integer ids, got {prompt.dtype}")
        if prompt.numel():
            _check_ids((int(prompt.min()), int(prompt.max())), vocab_size)
        return prompt.tolist(), False
    _check_ids(prefix_ids, vocab_size)
    if isinstance(prompt, (bytes, bytearray, str)):
        return [list(prefix_ids) + list(_as_bytes(prompt))], True
    rows = []
    for item in prompt:
        if not isinstance(item, (bytes, bytearray, str)):
            raise TypeError(f"prompts must be bytes or str, a list of them, or a tensor of ids; "
                            f"got {type(item).__name__}")
        rows.append(list(prefix_ids) + list(_as_bytes(item)))
    return rows, False


def _as_bytes(text: bytes | bytearray | str) -> bytes:
    """A prompt or stop string as bytes: ``str`` is UTF-8 (what the text codec gives), bytes are used as they are."""
    if not isinstance(text, str):
        return bytes(text)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:  # lone surrogates have no UTF-8 form
        raise ValueError(f"text has no UTF-8 form at character {error.start}: {error.reason}") from None


def _check_ids(ids: Sequence[int], vocab_size: int) -> None:
    for token in ids:
        if not 0 <= token < vocab_size:
            raise ValueError(f"prompt id {token} is outside the vocabulary 0..{vocab_size - 1} "
                             f"(bytes 0-255, then the special ids of bytemodels.tokens)")


def _sources(model, rows: list[list[int]], use_cache: bool, compile: bool = False, max_new_bytes: int | None = None):
    """Yield (row indices, logit source) groups: rows sharing a patch alignment decode together."""
    device = next(model.parameters()).device
    if not use_cache:
        yield list(range(len(rows))), FullRecompute(model, rows)
        return
    patch = model.config.patch_size
    groups: dict[int, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        groups[len(row) % patch].append(index)
    for indices in groups.values():
        longest = max(len(rows[i]) for i in indices)
        padded = [[tokens.PAD_ID] * (longest - len(rows[i])) + rows[i] for i in indices]
        pad_units = torch.tensor([(longest - len(rows[i])) // patch for i in indices], device=device)
        ids = torch.tensor(padded, dtype=torch.long, device=device).view(len(indices), longest)
        max_length = longest + 1 if max_new_bytes is None else longest + max_new_bytes
        yield indices, WindowedDecoder(model, ids, pad_units, compile, max_length)


def _held_back(buffer: bytes, stops: list[bytes]) -> int:
    """How many trailing bytes could still become a stop string (and so must not be shown yet)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
            if buffer.endswith(stop[:size]):
                longest = size
                break
    return longest


def _decode(source, batch: int, max_new_bytes: int, sampler: Sampler, stops: list[bytes]) -> Iterator[list[bytes]]:
    """Drive a logit source; yield, after every step, the newly final bytes of each row.

    Only the bytes not yet yielded are kept (those that could still begin a stop string), so memory does not
    grow with the output."""
    pending = [bytearray() for _ in range(batch)]
    done = [False] * batch
    for _ in range(max_new_bytes):
        next_ids = source.sample(sampler)
        chunks = []
        for row, token in enumerate(next_ids.tolist()):
            buffer = pending[row]
            if not done[row]:
                if token == tokens.EOS_ID:
                    done[row] = True
                else:
                    buffer.append(token)
                    # A stop string ends with this byte: the rest of it was held back, so it is all pending.
                    for stop in stops:
                        if buffer.endswith(stop):
                            del buffer[len(buffer) - len(stop):]
                            done[row] = True
                            break
            final = len(buffer) if done[row] else len(buffer) - _held_back(bytes(buffer), stops)
            chunks.append(bytes(buffer[:final]))
            del buffer[:final]
        yield chunks
        if all(done):
            return
        source.append(next_ids)
    yield [bytes(buffer) for buffer in pending]


def _stop_list(stop) -> list[bytes]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, (bytes, bytearray, str)) else list(stop)
    if any(not isinstance(s, (bytes, bytearray, str)) or not s for s in stops):
        raise ValueError("stop must be a non-empty byte string or str, or a list of them")
    return [_as_bytes(s) for s in stops]


def _check_options(max_new_bytes: int, temperature: float, top_k, top_p) -> None:
    if max_new_bytes < 0:
        raise ValueError(f"max_new_bytes must be >= 0, got {max_new_bytes}")
    if not temperature >= 0 or math.isinf(temperature):  # also refuses nan, whose probabilities are garbage
        raise ValueError(f"temperature must be finite and >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _prepare(model, prompt, max_new_bytes: int, temperature: float, top_k, top_p, stop, seed,
             prefix_ids: Sequence[int]) -> tuple[list[list[int]], bool, list[bytes], Sampler]:
    """The checked options of ``generate`` and ``generate_stream``: the prompt rows, whether one ``bytes``
    prompt was given, the stop strings and the sampler."""
    _check_options(max_new_bytes, temperature, top_k, top_p)
    rows, single = _prompt_rows(prompt, prefix_ids, model.config.vocab_size)
    return rows, single, _stop_list(stop), Sampler(temperature, top_k, top_p, seed, next(model.parameters()).device)


@torch.inference_mode()
def generate(model, prompt, max_new_bytes: int, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, stop=None, seed: int | None = None, use_cache: bool = True,
             prefix_ids: Sequence[int] = (tokens.BOS_ID,), compile: bool = False) -> bytes | list[bytes]:
    """See ``Megabyte.generate``."""
    rows, single, stops, sampler = _prepare(model, prompt, max_new_bytes, temperature, top_k, top_p, stop, seed,
                                            prefix_ids)
    results: list[bytes] = [b""] * len(rows)
    was_training = model.training
    model.eval()
    try:
        for indices, source in _sources(model, rows, use_cache, compile, max_new_bytes):
            collected = [bytearray() for _ in indices]
            for chunks in _decode(source, len(indices), max_new_bytes, sampler, stops):
                for buffer, chunk in zip(collected, chunks):
                    buffer += chunk
            for index, buffer in zip(indices, collected):
                results[index] = bytes(buffer)
    finally:
        model.train(was_training)
    return results[0] if single else results


@torch.inference_mode()
def generate_stream(model, prompt, max_new_bytes: int, *, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, stop=None, seed: int | None = None, use_cache: bool = True,
                    prefix_ids: Sequence[int] = (tokens.BOS_ID,), compile: bool = False) -> Iterator[bytes]:
    """See ``Megabyte.generate_stream``: one prompt, bytes yielded as soon as they are final."""
    rows, _, stops, sampler = _prepare(model, prompt, max_new_bytes, temperature, top_k, top_p, stop, seed,
                                       prefix_ids)
    if len(rows) != 1:
        raise ValueError(f"generate_stream takes one prompt, got {len(rows)}; use generate for a batch")
    was_training = model.training
    model.eval()
    try:
        for _, source in _sources(model, rows, use_cache, compile, max_new_bytes):
            for chunks in _decode(source, 1, max_new_bytes, sampler, stops):
                if chunks[0]:
                    yield chunks[0]
    finally:
        model.train(was_training)
