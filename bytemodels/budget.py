"""A training run's budgets: how many steps the step and byte limits allow, and a wall-clock budget that
estimates from the pace so far at which step it will run out (the learning-rate schedule's horizon)."""

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


class TimeBudget:
    """A wall-clock budget in ``seconds``, summed over resumes, and the step it will end at.

    ``record(step, elapsed_s)`` after every optimizer step returns the horizon: None until two steps of this
    session have passed (compiling, warming caches), then the step at which the budget runs out at the mean
    pace since (evaluations included), capped by the step and byte budgets' ``limit``. Re-estimated every step,
    it converges as the run goes."""

    def __init__(self, seconds: float, limit: int | None, first_step: int) -> None:
        self.seconds, self.limit, self.first_step = seconds, limit, first_step
        self._timing: tuple[int, float] | None = None  # (step, elapsed seconds) where timing began

    def spent(self, elapsed_s: float) -> bool:
        """Whether ``elapsed_s`` seconds of training use the budget up."""
        return elapsed_s >= self.seconds

    def record(self, step: int, elapsed_s: float) -> int | None:
        """The horizon after step ``step`` ended ``elapsed_s`` seconds into the run (None: not known yet)."""
        if self._timing is None:
            if step >= self.first_step + 2:
                self._timing = (step, elapsed_s)
            return None
        per_step = max((elapsed_s - self._timing[1]) / max(step - self._timing[0], 1), 1e-9)
        estimate = step + max(int((self.seconds - elapsed_s) / per_step), 1)
        return min(self.limit, estimate) if self.limit else estimate
