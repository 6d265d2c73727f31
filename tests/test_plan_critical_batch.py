"""The calibrated critical-batch prediction: exact arithmetic on known per-step estimates."""

import math

import numpy as np
import pytest

from batchscope.plan import critical_batch as cb


def test_ratio_of_sums_not_mean_of_ratios():
    # two steps: tr/|G|² = 10/1 and 10/9; the ratio of sums is 20/10 = 2, the mean of ratios 5.56
    assert cb.ratio_of_sums([1.0, 9.0], [10.0, 10.0]) == pytest.approx(2.0)
    assert math.isnan(cb.ratio_of_sums([-1.0, 0.5], [1.0, 1.0]))


def test_window_is_the_second_half_of_the_finite_steps():
    g2 = [1.0, np.nan, 2.0, 3.0, 4.0, 5.0, 6.0]
    g, t = cb.window(g2, [1.0] * 7)
    assert g.tolist() == [4.0, 5.0, 6.0]          # six finite steps, the last three


def test_prediction_is_the_suite_factor_times_the_window(monkeypatch):
    monkeypatch.setattr(cb, "SUITE_FACTOR", 2.5)
    monkeypatch.setattr(cb, "SUITE_LOG_SPREAD", 0.5)
    monkeypatch.setattr(cb, "SUITE_TASKS", 4)
    g2 = np.full(40, 2.0)
    trace = np.full(40, 100.0)                    # B_simple = 50 at every step: no sampling noise
    p = cb.predict(g2, trace, level=0.9)
    assert p.b_simple == pytest.approx(50.0) and p.value == pytest.approx(125.0) and p.steps == 20
    half = 1.6448536 * 0.5 * math.sqrt(1 + 1 / 4)  # the suite's spread as a prediction interval
    assert p.low == pytest.approx(125.0 * math.exp(-half), rel=1e-6)
    assert p.high == pytest.approx(125.0 * math.exp(half), rel=1e-6)


def test_sampling_noise_widens_the_interval():
    rng = np.random.default_rng(0)
    g2 = np.full(40, 2.0)
    quiet = cb.predict(g2, np.full(40, 100.0))
    noisy = cb.predict(g2 + rng.normal(0, 3.0, 40), np.full(40, 100.0) + rng.normal(0, 80, 40))
    assert noisy.high / noisy.low > quiet.high / quiet.low


def test_no_signal_is_an_error():
    with pytest.raises(ValueError, match="is not positive"):
        cb.predict([-1.0] * 10, [1.0] * 10)
