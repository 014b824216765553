"""How sure a throughput is, and when a Case may stop measuring: pure functions over the rates of timed
windows, so the rule is tested on series with known answers (tests/test_precision.py).

The interval is the distribution-free confidence interval of the median (order statistics: the number of
windows below the true median is Binomial(n, 1/2)), so it assumes nothing about how the rates spread; it
needs at least MIN_WINDOWS windows to exist at 95%. A Case is precise when the interval's half-width is
within the target share of the median (pyperf and torch.utils.benchmark's adaptive_autorange stop on a
similar rule: the spread around the median small enough).
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np

CONFIDENCE = 0.95
MIN_WINDOWS = 6  # the fewest windows whose extreme order statistics bound the median at 95% (96.9%)


def median_interval(rates, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The order-statistic confidence interval of the median of `rates`, or None when there are too few
    to bound it at `confidence`. With n sorted rates x(1)..x(n) it is [x(j), x(n+1-j)] for the largest j
    whose coverage, 1 - 2 P(Binomial(n, 1/2) < j), is at least `confidence`."""
    x = np.sort(np.asarray(rates, dtype=float))
    n = len(x)
    if n == 0 or not np.all(np.isfinite(x)):
        return None
    best = _rank(n, confidence)
    if best is None:
        return None
    return float(x[best - 1]), float(x[n - best])


@lru_cache(maxsize=1024)
def _rank(n: int, confidence: float) -> int | None:
    """The j of median_interval for n windows. It depends on n alone, and the same n is asked for more than once
    (the interval and its half-width, for each summary and each precision check). Exact integer arithmetic,
    one pass over j: thousands of windows take milliseconds."""
    alpha = Fraction(1) - Fraction(confidence).limit_denominator(10**6)
    allowed = alpha.numerator * 2 ** n  # coverage >= confidence  <=>  2 * below * denominator <= allowed
    best, term, below = None, 1, 0  # term = C(n, j - 1), below = sum of C(n, i) for i < j
    for j in range(1, n // 2 + 1):
        below += term
        if 2 * below * alpha.denominator > allowed:
            break
        best = j
        term = term * (n - j + 1) // j
    return best


def half_width_pct(rates, confidence: float = CONFIDENCE) -> float | None:
    """The interval's half-width as a share of the median, %; None when there is no interval yet."""
    interval = median_interval(rates, confidence)
    if interval is None:
        return None
    median = float(np.median(rates))
    return 100.0 * (interval[1] - interval[0]) / 2 / median if median > 0 else None


def precise(rates, target_pct: float, confidence: float = CONFIDENCE) -> bool:
    """True when the median of `rates` is known within +-`target_pct`% at `confidence`."""
    width = half_width_pct(rates, confidence)
    return width is not None and width <= target_pct


def settled(step_s, window: int = 5, tolerance_pct: float = 10.0) -> bool:
    """True when step times have settled: the median of the last `window` steps is within `tolerance_pct`%
    of the median of the `window` before (first steps pay for lazy initialisation, allocator growth and
    autotuning, so they are slower, then flat)."""
    if len(step_s) < 2 * window:
        return False
    last = float(np.median(step_s[-window:]))
    before = float(np.median(step_s[-2 * window:-window]))
    return last > 0 and abs(before - last) / last * 100.0 <= tolerance_pct


def differ(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool | None:
    """Whether two intervals are apart (a difference beyond both figures' uncertainty); None when one is missing."""
    if a is None or b is None:
        return None
    return a[1] < b[0] or b[1] < a[0]
