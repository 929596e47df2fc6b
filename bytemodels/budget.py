"""A training run's budgets: how many steps the step and byte limits allow, a wall-clock budget that keeps
room for the end of the run and estimates at which step it will run out (the learning-rate schedule's horizon),
and whether compiling pays within what is left."""

from __future__ import annotations

import re

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``10m``, ``1.5h`` or ``1h30m`` (a bare number is seconds)."""
    cleaned = str(text).strip().lower()
    if not re.fullmatch(r"(\d+(\.\d+)?\s*[smhd]?\s*)+", cleaned):
        raise ValueError(f"time={text!r} is not a duration; write it like 90s, 10m, 1.5h or 1h30m")
    return sum(float(number) * _UNITS[unit] for number, _, unit in re.findall(r"(\d+(\.\d+)?)\s*([smhd]?)", cleaned))


def step_limit(max_steps: int | None, max_bytes: int | None, bytes_per_step: int) -> int | None:
    """Steps the step and byte budgets allow (None when neither is set)."""
    limits = [max_steps] if max_steps else []
    if max_bytes:
        limits.append(-(-max_bytes // bytes_per_step))
    return min(limits) if limits else None


class StepPace:
    """Mean seconds of an optimizer step since the last ``reset``, the first step after it left out (it warms
    caches or compiles); until a second step, that first step's time."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.first: float | None = None
        self.last: float | None = None  # the latest step's seconds, whichever it was
        self.count, self.total = 0, 0.0

    def add(self, seconds: float) -> None:
        self.last = seconds
        if self.first is None:
            self.first = seconds
        else:
            self.count, self.total = self.count + 1, self.total + seconds

    @property
    def seconds(self) -> float | None:
        """The pace (None before any step)."""
        return self.total / self.count if self.count else self.first


class TimeBudget:
    """A wall-clock budget in ``seconds`` for the whole of a run (summed over resumes): compiling, every evaluation
    and the end of the run (its evaluation, checkpoint and samples: the ``reserve``) all come out of it.

    ``time_up`` says whether another step still leaves room for what is due and for the reserve; ``horizon``
    is the step at which the budget runs out at the current pace, capped by the step and byte budgets' ``limit``."""

    def __init__(self, seconds: float, limit: int | None) -> None:
        self.seconds, self.limit = seconds, limit

    def time_up(self, elapsed_s: float, next_s: float, reserve_s: float) -> bool:
        """Whether ``next_s`` more seconds (the next step and the work due before it) would leave less than
        ``reserve_s`` of the budget for the end of the run."""
        return elapsed_s + next_s + reserve_s > self.seconds

    def horizon(self, step: int, elapsed_s: float, per_step_s: float, reserve_s: float) -> int:
        """The last step: ``step`` plus the steps of ``per_step_s`` (evaluations amortised) that fit in what is left
        once the reserve is set aside (at least one)."""
        estimate = step + max(int((self.seconds - reserve_s - elapsed_s) / max(per_step_s, 1e-9)), 1)
        return min(self.limit, estimate) if self.limit else estimate


def compile_pays(step_s: float, compile_s: float, speedup: float, *, time_left_s: float | None,
                 steps_left: int | None) -> tuple[bool, int, int]:
    """Whether compiling now pays: ``(pays, steps compiled, steps eager)``.

    Eager steps take ``step_s``; compiling costs ``compile_s`` once, then steps take ``step_s / speedup``.
    Within ``time_left_s`` (None: no time budget) and ``steps_left`` (None: no step budget) it pays when it trains
    more steps, or the same steps sooner."""
    if time_left_s is None and steps_left is None:
        raise ValueError("compile_pays needs time_left_s or steps_left")
    compiled_step = step_s / max(speedup, 1e-9)
    if time_left_s is None:
        eager_s, compiled_s = steps_left * step_s, compile_s + steps_left * compiled_step
        return compiled_s < eager_s, steps_left, steps_left
    eager = int(time_left_s / step_s)
    compiled = int(max(time_left_s - compile_s, 0.0) / compiled_step)
    if steps_left is not None:
        eager, compiled = min(eager, steps_left), min(compiled, steps_left)
        if eager == compiled == steps_left:
            return compile_s + steps_left * compiled_step < steps_left * step_s, compiled, eager
    return compiled > eager, compiled, eager
