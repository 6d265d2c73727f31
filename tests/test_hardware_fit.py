import math

import numpy as np
import pytest

from batchscope.errors import ConfigError
from batchscope.hardware import StepTimeModel, fit_line, fit_step_time, knee, knee_from_line


def knee_from_points(batches, throughput, gain=0.10):
    """The knee of the step-time model through measured throughputs (alpha, beta unused in range)."""
    return knee(StepTimeModel(1.0, 0.0, [(b, b / x) for b, x in zip(batches, throughput)]), gain)


def test_fit_line_recovers_a_known_line_exactly():
    x = [2, 8, 32, 128, 512]
    fit = fit_line(x, [3_000_000 + 4096 * b for b in x])
    assert fit.intercept == pytest.approx(3_000_000)
    assert fit.slope == pytest.approx(4096)
    assert fit.r2 == pytest.approx(1.0)
    assert max(abs(r) for r in fit.residuals) < 1e-6
    assert fit.solve(3_000_000 + 4096 * 1000) == pytest.approx(1000)


def test_fit_line_matches_numpy_polyfit_on_noisy_data():
    rng = np.random.default_rng(0)
    x = np.arange(1, 30, dtype=float)
    y = 2.0 + 0.5 * x + rng.normal(0, 0.3, x.size)
    fit = fit_line(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    assert (fit.slope, fit.intercept) == pytest.approx((slope, intercept))
    assert fit.r2 == pytest.approx(1 - np.sum((y - fit.intercept - fit.slope * x) ** 2) / np.sum((y - y.mean()) ** 2))


def test_fit_line_needs_two_distinct_x():
    with pytest.raises(ConfigError, match=r"at least two distinct x values; got \[4.0, 4.0\]"):
        fit_line([4, 4], [1, 2])


def test_step_time_fit_recovers_alpha_beta_from_noisy_timings():
    alpha, beta = 2e-3, 5e-6
    rng = np.random.default_rng(1)
    b = 2 ** np.arange(0, 13)
    t = (alpha + beta * b) * np.exp(rng.normal(0, 0.02, b.size))  # 2% multiplicative timing noise
    fit = fit_step_time(b, t)
    assert fit.intercept == pytest.approx(alpha, rel=0.03)
    assert fit.slope == pytest.approx(beta, rel=0.03)
    assert fit.r2 > 0.99


def test_step_time_fit_rejects_nonpositive_times():
    with pytest.raises(ConfigError, match="step times must be positive finite seconds"):
        fit_step_time([1, 2], [0.1, 0.0])


def test_knee_from_line_is_where_doubling_gains_exactly_ten_percent():
    alpha, beta = 0.01, 1e-4
    k = knee_from_line(alpha, beta)
    assert k == pytest.approx(4.5 * alpha / beta)
    x = lambda b: b / (alpha + beta * b)  # noqa: E731
    assert x(2 * k) / x(k) == pytest.approx(1.10)
    assert knee_from_line(alpha, 0.0) is None


def test_knee_from_points_on_a_linear_step_time():
    alpha, beta = 0.01, 1e-4          # knee of the line at B = 450
    b = [2**i for i in range(13)]
    thr = [bi / (alpha + beta * bi) for bi in b]
    assert knee_from_points(b, thr) == 512  # first grid point past 450


def test_knee_from_points_on_a_saturating_curve():
    b = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    thr = [min(bi, 64) for bi in b]    # throughput stops growing at B = 64
    assert knee_from_points(b, thr) == 64
    # Interpolated doubling when the grid is not powers of two: 48 -> 96 gains 64/48 (33%): no knee;
    # 64 -> 128 gains nothing: knee.
    assert knee_from_points([48, 64, 100, 128], [48, 64, 64, 64]) == 64


def test_one_noisy_point_at_small_batch_is_not_the_knee():
    b = [1, 2, 4, 8, 16, 32, 64]
    thr = [100.0, 104.0, 400.0, 800.0, 1600.0, 1650.0, 1700.0]  # a stall at B=1->2, then real growth
    assert knee_from_points(b, thr) == 16


def test_a_slow_outlier_after_the_knee_does_not_move_it():
    b = [1, 2, 4, 8, 16, 32, 64, 128]
    thr = [100.0, 200.0, 400.0, 800.0, 1600.0, 800.0, 1700.0, 1750.0]  # B=32 was slowed by other work
    assert knee_from_points(b, thr) == 16


def test_knee_from_points_none_while_still_climbing():
    b = [1, 2, 4, 8]
    assert knee_from_points(b, [float(x) for x in b]) is None
    assert math.isclose(knee_from_line(1.0, 1.0, gain=0.10), 4.5)


def test_step_time_fit_never_gives_a_negative_cost():
    # a flat curve whose noisy timings fall with the batch: the free line has beta < 0
    b, t = [1, 2, 4, 8], [0.0104, 0.0101, 0.0100, 0.0098]
    assert fit_line(b, t, [1 / x**2 for x in t]).slope < 0
    fit = fit_step_time(b, t)
    w = np.array([1 / x**2 for x in t])
    assert (fit.intercept, fit.slope) == (pytest.approx(float((w * t).sum() / w.sum())), 0.0)
    assert fit.residuals == pytest.approx(tuple(np.array(t) - fit.intercept))
    # a convex curve whose line would cross zero before B = 1: the best line through the origin instead
    b, t = [1, 2, 4], [1e-3, 4e-3, 16e-3]
    assert fit_line(b, t, [1 / x**2 for x in t]).intercept < 0
    fit = fit_step_time(b, t)
    w = np.array([1 / x**2 for x in t])
    through_origin = float((w * np.array(b) * t).sum() / (w * np.square(b)).sum())
    assert fit.intercept == 0.0 and fit.slope == pytest.approx(through_origin)
    StepTimeModel(fit.intercept, fit.slope)      # the one model takes what the fit gives
