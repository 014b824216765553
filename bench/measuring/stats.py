"""One statistics object for a throughput, derived on demand from the raw timed windows (images and seconds of
each), and used alike by the worker (a Case's Result), the data-parallel ranks and repeats (a Case over several
processes): the median over windows (the figure runs and Cases are compared by), its quartiles and spread, its 95%
interval (bench/measuring/precision.py), and the mean rate, total images over total time, stalls included (the
rate time predictions use)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from bench.measuring import precision

SPREAD_WARN_PCT = 10.0


@dataclass(frozen=True)
class WindowStats:
    """Images/s over timed windows; a window of no time is none."""

    windows_s: tuple[float, ...]
    windows_images: tuple[int, ...]

    @classmethod
    def of(cls, windows_s, windows_images) -> WindowStats:
        return cls(tuple(windows_s), tuple(windows_images))

    @cached_property
    def rates(self) -> np.ndarray:
        return np.array([n / s for n, s in zip(self.windows_images, self.windows_s) if s > 0])

    @cached_property
    def quartiles(self) -> tuple[float, float, float] | None:
        """(p25, median, p75), or None without a window."""
        if len(self.rates) == 0:
            return None
        p25, median, p75 = np.percentile(self.rates, [25, 50, 75])
        return float(p25), float(median), float(p75)

    @property
    def median(self) -> float | None:
        return self.quartiles[1] if self.quartiles else None

    @property
    def spread_pct(self) -> float | None:
        """The interquartile range, % of the median."""
        if not self.quartiles:
            return None
        p25, median, p75 = self.quartiles
        return 100.0 * (p75 - p25) / median

    @cached_property
    def interval(self) -> tuple[float, float] | None:
        """The 95% confidence interval of the median (order statistics); None with too few windows."""
        return precision.median_interval(self.rates) if len(self.rates) else None

    @property
    def half_width_pct(self) -> float | None:
        """The interval's half-width, % of the median (as precision.half_width_pct, from the interval above)."""
        if self.interval is None or not self.median or self.median <= 0:
            return None
        return 100.0 * (self.interval[1] - self.interval[0]) / 2 / self.median

    @property
    def mean(self) -> float | None:
        """Total images over total time of the windows."""
        total = sum(self.windows_s)
        return sum(self.windows_images) / total if total > 0 else None

    @property
    def warnings(self) -> list[str]:
        n = len(self.rates)
        if n == 0:
            return ["no timed window after the warm-up: give the Case more steps or time"]
        out = []
        if self.spread_pct > SPREAD_WARN_PCT:
            out.append(f"throughput varied: IQR is {self.spread_pct:.0f}% of the median over {n} windows")
        if n < 3:
            out.append(f"only {n} timed window(s): the spread is not meaningful")
        return out


@dataclass
class Throughput:
    """Images per second over timed windows: median and spread, plus step-time percentiles."""

    images_per_s: float | None
    p25: float | None
    p75: float | None
    spread_pct: float | None
    step_ms: tuple[float | None, float | None, float | None]
    warnings: list[str]
    interval: tuple[float, float] | None = None  # 95% confidence interval of the median
    half_width_pct: float | None = None
    mean: float | None = None  # total images over total time


def summarise(windows_s: list[float], windows_images: list[int], step_s: list[float]) -> Throughput:
    """Derives the summary from the raw windows; the raw samples stay in the Result."""
    stats = WindowStats.of(windows_s, windows_images)
    if stats.quartiles is None:
        return Throughput(None, None, None, None, (None, None, None), stats.warnings)
    p25, median, p75 = stats.quartiles
    step_ms = tuple(float(np.percentile(np.array(step_s) * 1000.0, q)) for q in (50, 90, 99)) if step_s else (None,) * 3
    return Throughput(median, p25, p75, stats.spread_pct, step_ms, stats.warnings, stats.interval,
                      stats.half_width_pct, stats.mean)
