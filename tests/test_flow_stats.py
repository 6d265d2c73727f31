import math

import numpy as np
import pytest

from batchscope.flow.distributions import DISTRIBUTIONS, draw, mean_of
from batchscope.flow.stats import Estimate, student_t_two_sided, t_quantile


@pytest.mark.parametrize("df, t975", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452), (100, 1.9840)])
def test_t_quantile_matches_tables(df, t975):
    assert t_quantile(0.95, df) == pytest.approx(t975, abs=1e-4)
    assert student_t_two_sided(t975, df) == pytest.approx(0.95, abs=1e-5)


def test_estimate_interval():
    est = Estimate.of([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, sample std sqrt(5/3), t_{0.975,3} = 3.1824
    assert est.mean == 2.5
    assert est.std == pytest.approx(math.sqrt(5 / 3))
    assert est.half_width == pytest.approx(3.18245 * math.sqrt(5 / 3) / 2, rel=1e-5)
    assert est.covers(0.5) and not est.covers(0.4)
    one = Estimate.of([7.0])
    assert (one.half_width, one.low, one.high) == (0.0, 7.0, 7.0)
    assert Estimate.from_dict(est.to_dict()) == est


@pytest.mark.parametrize("name, cv", [("exponential", 1.0), ("normal", 0.3), ("lognormal", 0.5),
                                      ("uniform", 0.4), ("gamma", 0.7)])
def test_draws_have_the_requested_mean_and_cv(name, cv):
    x = draw(name, 2.0, cv, 200_000, np.random.default_rng(0))
    assert (x >= 0).all()
    assert x.mean() == pytest.approx(mean_of(name, 2.0, cv), rel=0.01)
    assert x.std() / 2.0 == pytest.approx(cv, rel=0.03)


def test_truncated_normal_mean_is_exact():
    # cv 0.8: about 11% of the normal is below 0, so truncation lifts the mean noticeably.
    x = draw("normal", 1.0, 0.8, 400_000, np.random.default_rng(1))
    assert (x >= 0).all()
    assert mean_of("normal", 1.0, 0.8) > 1.1
    assert x.mean() == pytest.approx(mean_of("normal", 1.0, 0.8), rel=3e-3)
    assert set(DISTRIBUTIONS) >= {"deterministic", "exponential", "normal", "lognormal", "uniform"}
