"""The stopping rule on window series with known answers: steady, drifting, bimodal, one outlier."""
from __future__ import annotations

import numpy as np
import pytest

from bench.measuring import precision


def test_the_interval_needs_six_windows_and_uses_the_order_statistics_the_binomial_gives():
    assert precision.median_interval([100.0] * 5) is None  # 5 windows: the extremes cover 93.75% < 95%
    assert precision.median_interval([3, 1, 2, 6, 5, 4]) == (1.0, 6.0)  # 6: x(1), x(6), 96.9%
    # 20 windows: P(Bin(20, 1/2) < 6) = 0.0207, < 7 = 0.0577, so j = 6: [x(6), x(15)]
    assert precision.median_interval(list(range(1, 21))) == (6.0, 15.0)
    # the coverage is what it claims: over many draws the interval holds the true median >= 95% of the time
    rng = np.random.default_rng(0)
    draws = rng.lognormal(0.0, 0.3, size=(4000, 12))
    held = [lo <= 1.0 <= hi for lo, hi in map(precision.median_interval, draws)]
    assert np.mean(held) >= 0.95


def test_a_steady_series_is_precise_as_soon_as_it_has_enough_windows():
    rng = np.random.default_rng(1)
    steady = 1000 * (1 + 0.005 * rng.standard_normal(40))
    first = next(n for n in range(1, 41) if precision.precise(steady[:n], 2.0))
    assert first == precision.MIN_WINDOWS


def test_a_drifting_series_is_not_precise_until_its_windows_bound_the_median_within_the_target():
    drifting = np.linspace(1000, 1300, 30)  # 30% slower to faster: the interval stays wide
    assert not precision.precise(drifting, 2.0)
    assert precision.half_width_pct(drifting) > 4  # [x(10), x(21)] of 30: about +-5%


def test_a_bimodal_series_is_not_precise():
    bimodal = np.array([1000.0, 1500.0] * 15)  # two speeds, e.g. a neighbour that comes and goes
    assert not precision.precise(bimodal, 2.0)
    assert precision.half_width_pct(bimodal) == pytest.approx(100 * 250 / 1250)


def test_a_single_outlier_does_not_stop_a_steady_series_being_precise():
    rng = np.random.default_rng(2)
    series = list(1000 * (1 + 0.004 * rng.standard_normal(12)))
    series[5] = 200.0  # one window a neighbour stole
    assert precision.precise(series, 2.0)  # order statistics: the outlier is one of the extremes left outside


def test_settled_waits_for_the_slow_first_steps_to_pass():
    steps = [0.5, 0.2, 0.1, 0.06, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]
    first = next(n for n in range(1, len(steps) + 1) if precision.settled(steps[:n]))
    assert first == 12  # once the five steps before the last five have a median of 0.05 too
    assert not precision.settled([0.05] * 9)  # too few to tell


def test_intervals_that_overlap_are_no_difference():
    assert precision.differ((100, 110), (105, 120)) is False
    assert precision.differ((100, 110), (111, 120)) is True
    assert precision.differ(None, (1, 2)) is None
