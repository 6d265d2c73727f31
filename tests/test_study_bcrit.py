import math

import numpy as np
import pytest

from batchscope import ConfigError
from batchscope.study.bcrit import BcritFit, fit_bcrit

SIZES = np.array([16, 32, 64, 128, 256, 512, 1024, 2048], dtype=float)


def hyperbola(s_min, b_crit, sizes=SIZES, noise=0.0, seeds=1, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    b = np.repeat(sizes, seeds)
    return b, s_min * (1 + b_crit / b) * np.exp(rng.normal(0, noise, b.size))


def test_exact_points_give_the_parameters_back():
    b, s = hyperbola(400.0, 150.0)
    fit = fit_bcrit(b, s)
    assert fit.s_min == pytest.approx(400, rel=1e-3)
    assert fit.b_crit == pytest.approx(150, rel=1e-3)
    assert fit.e_min == pytest.approx(400 * 150, rel=2e-3)
    assert fit.residual_std < 1e-3 and fit.at_edge is None
    # the defining hyperbola (S/S_min - 1)(E/E_min - 1) = 1 holds along the fit
    for bb in (10.0, 150.0, 3000.0):
        assert (fit.steps_at(bb) / fit.s_min - 1) * (fit.examples_at(bb) / fit.e_min - 1) == pytest.approx(1)
    assert fit.steps_at(fit.b_crit) == pytest.approx(2 * fit.s_min)


@pytest.mark.parametrize("b_crit,rng_seed", [(60.0, 1), (300.0, 2), (900.0, 3)])
def test_noisy_points_recover_the_parameters_within_the_interval(b_crit, rng_seed):
    b, s = hyperbola(250.0, b_crit, noise=0.08, seeds=3, rng_seed=rng_seed)
    fit = fit_bcrit(b, s, n_boot=400)
    assert fit.b_crit_low < b_crit < fit.b_crit_high
    assert fit.b_crit == pytest.approx(b_crit, rel=0.3)
    assert fit.s_min_low < 250 < fit.s_min_high
    assert fit.e_min_low < 250 * b_crit < fit.e_min_high
    assert fit.residual_std == pytest.approx(0.08, rel=0.4)
    assert fit.b_crit_high / fit.b_crit_low < 4  # informative, not the whole grid


def test_interval_coverage_is_roughly_nominal():
    hits = 0
    for k in range(30):
        b, s = hyperbola(100.0, 200.0, noise=0.1, seeds=2, rng_seed=100 + k)
        fit = fit_bcrit(b, s, n_boot=300, seed=k)
        hits += fit.b_crit_low <= 200 <= fit.b_crit_high
    assert hits >= 24  # 95 % nominal; a residual bootstrap on 16 points runs a little short


def test_edges_are_flagged():
    flat = fit_bcrit(SIZES, np.full(SIZES.size, 50.0))          # more batch never helps
    assert flat.at_edge == "low" and flat.b_crit < SIZES.min()
    linear = fit_bcrit(SIZES, 1e6 / SIZES)                       # perfect scaling throughout
    assert linear.at_edge == "high" and linear.b_crit > SIZES.max()


def test_json_round_trip():
    b, s = hyperbola(400.0, 150.0, noise=0.05, seeds=2)
    fit = fit_bcrit(b, s, n_boot=100)
    assert BcritFit.from_dict(fit.to_dict()) == fit


@pytest.mark.parametrize("b,s,msg", [
    ([32, 64], [10, 6], r"3 or more batch sizes; got 2 \(\[32\.0, 64\.0\]\)"),
    ([32, 64, 128], [10, -6, 3], "positive finite"),
    ([32, 64, 128], [10, 6], "equal length"),
    ([32, 64, math.nan], [10, 6, 5], "positive finite"),
])
def test_bad_input(b, s, msg):
    with pytest.raises(ConfigError, match=msg):
        fit_bcrit(b, s)
