"""When a Case's warm-up ends and when the Case stops: the budget (steps, seconds), the precision target, and,
for data-parallel ranks, their agreement (every rank ends the warm-up, closes windows and stops at the same step).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.measuring import precision

WARMUP_CAP_STEPS = 200  # past --warmup-steps, the most steps a warm-up waits for step times to settle
WARMUP_CAP_SHARE = 0.25  # ... and the most of --max-seconds it may take
BUDGET_MIN_WINDOWS = 3  # --max-seconds stops a Case only once it has this many timed windows (a figure)


@dataclass
class Budget:
    """When a Case stops early: after `max_steps` steps or `max_seconds` of training."""

    max_steps: int | None = None
    max_seconds: float | None = None


class WarmUp:
    """At least `steps` steps and, from 4 on, until step times settle (precision.settled), at most
    WARMUP_CAP_STEPS more steps or WARMUP_CAP_SHARE of the budget's seconds; exactly `steps` when `fixed` (ranks
    must end it at the same step). A warm-up of fewer than 4 steps is too short to compare halves of, so it is
    what was asked for."""

    def __init__(self, steps: int, budget: Budget, fixed: bool = False):
        self.steps, self.budget, self.fixed = steps, budget, fixed
        self.seconds = 0.0  # the warm-up's windows so far
        self.step_s: list[float] = []

    def add(self, seconds: float, step_s: list[float]) -> None:
        self.seconds += seconds
        self.step_s += step_s

    def over(self, steps_done: int, elapsed: float) -> bool:
        window = min(5, self.steps // 2)  # the steps compared: the last few against those before
        if self.fixed or window < 2 or precision.settled(self.step_s, window):
            return True
        capped = steps_done >= self.steps + WARMUP_CAP_STEPS
        if self.budget.max_seconds is not None:
            capped = capped or elapsed >= WARMUP_CAP_SHARE * self.budget.max_seconds
        return capped

    def steady_step_s(self) -> float:
        """A steady step time from the warm-up's steps: the median of their later half (the first ones include
        autotuning and lazy initialisation)."""
        later = self.step_s[len(self.step_s) // 2:]
        return float(np.median(later)) if later else 0.0


class StopRule:
    """Why a Case stops: its median is known within +-`precision_pct` ("precise", decided at a window's close),
    its step cap, or its time once it has BUDGET_MIN_WINDOWS windows."""

    def __init__(self, budget: Budget, precision_pct: float | None):
        self.budget, self.precision_pct = budget, precision_pct

    def precise(self, windows_s: list[float], windows_images: list[int]) -> bool:
        if self.precision_pct is None or len(windows_s) < precision.MIN_WINDOWS:
            return False
        rates = [n / s for n, s in zip(windows_images, windows_s) if s > 0]
        return precision.precise(rates, self.precision_pct)

    def out_of_time(self, elapsed: float, windows: int) -> bool:
        """The budget's time is spent and the Case has its few windows."""
        return (self.budget.max_seconds is not None and elapsed >= self.budget.max_seconds
                and windows >= BUDGET_MIN_WINDOWS)

    def after_step(self, stopped_by: str | None, steps: int, out_of_time: bool) -> str | None:
        """Why the Case stops after this step, if it does; `out_of_time` as this process (or the ranks'
        vote) decided it."""
        if stopped_by == "precise":
            return stopped_by  # the figure is sure: the budget did not stop it
        if self.budget.max_steps is not None and steps >= self.budget.max_steps:
            return "max_steps"  # the same step on every rank: no need to agree
        if out_of_time:
            return "max_seconds"
        return stopped_by


class Agreement:
    """Data-parallel ranks must close windows and stop at the same step, so host time cannot decide alone: `agree`
    (e.g. an all-reduce of the maximum) is called on every rank at the same steps. At the warm-up's end the ranks
    agree on the slowest steady step time, and windows last `window_s` worth of such steps; the budget's time
    takes effect at a window's or an epoch's end, once the ranks agree. A rank knows only its own windows, and the
    Case's figure is over global windows (the slowest rank's time), so ranks are not stopped for precision."""

    def __init__(self, agree: Callable[[float], float]):
        self.agree = agree

    def window_steps(self, steady_step_s: float, window_s: float) -> int:
        slowest = self.agree(steady_step_s)
        return max(1, round(window_s / slowest)) if slowest > 0 else 1

    def any_out_of_time(self, mine: bool) -> bool:
        """Whether any rank is out of time: between windows, never inside one (the vote waits for a device
        value)."""
        return self.agree(float(mine)) > 0
