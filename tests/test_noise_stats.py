import json
import math

import numpy as np
import pytest

from batchscope.errors import ConfigError
from batchscope.noise import (NoiseError, NoiseEstimate, WeightedMoments, estimate_from_samples, fieller_interval,
                              per_example, ratio, two_batch)
from batchscope.serialize import dumps


def test_two_batch_inverts_the_expected_squared_norms():
    # E|g_b|² = |G|² + tr(Σ)/b at both sizes; feeding the expectations back must return |G|² and tr(Σ).
    g2, tr, b, big = 3.0, 40.0, 4, 32
    assert two_batch(g2 + tr / b, g2 + tr / big, b, big) == pytest.approx((g2, tr), rel=1e-12)


def test_two_batch_refuses_equal_sizes():
    with pytest.raises(ConfigError, match=r"two-batch estimate needs a small batch below the big one; got b=8, B=8"):
        two_batch(1.0, 1.0, 8, 8)


def test_per_example_matches_numpy_variance():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(7, 5))
    g2, tr = per_example(float((g**2).sum()), float((g.mean(0) ** 2).sum()), 7)
    assert tr == pytest.approx(g.var(0, ddof=1).sum(), rel=1e-12)
    assert g2 == pytest.approx((g.mean(0) ** 2).sum() - tr / 7, rel=1e-12)
    with pytest.raises(NoiseError, match="needs at least 2 examples per batch; got 1"):
        per_example(1.0, 1.0, 1)


def _draws(k: int, seed: int = 0, d: int = 20, b: int = 4, big: int = 32):
    """k steps of Gaussian per-example gradients with |G|² = 1, tr(Σ) = 10 (so B_simple = 10)."""
    rng = np.random.default_rng(seed)
    mean = np.full(d, 1 / np.sqrt(d))
    g = mean + np.sqrt(10 / d) * rng.standard_normal((k, big, d))          # (K, B, d)
    micro = g.reshape(k, big // b, b, d).mean(2)                           # (K, A, d)
    small = (micro**2).sum(-1).mean(1)
    large = (g.mean(1) ** 2).sum(-1)
    return two_batch(small, large, b, big)


def test_estimates_are_unbiased_and_ratio_of_means_beats_mean_of_ratios():
    k = 4000
    g2, tr = _draws(k)
    se = lambda x: x.std(ddof=1) / math.sqrt(k)  # noqa: E731
    assert abs(g2.mean() - 1.0) < 4 * se(g2) and se(g2) < 0.01
    assert abs(tr.mean() - 10.0) < 4 * se(tr) and se(tr) < 0.05
    # Ratio of averages: consistent; its standard error from the delta method.
    r = tr.mean() / g2.mean()
    se_r = math.sqrt(np.var(tr - r * g2, ddof=1) / k) / g2.mean()
    assert abs(r - 10.0) < 4 * se_r
    # Mean of per-step ratios: Jensen's bias (E[1/x] > 1/E[x]) does not average away.
    per_step = tr / g2
    assert per_step.mean() - 10.0 > 6 * se(per_step)


def test_fieller_collapses_to_the_point_without_variance_and_is_unbounded_without_signal():
    assert fieller_interval(10.0, 2.0, 0.0, 0.0, 0.0) == pytest.approx((5.0, 5.0))
    lo, hi = fieller_interval(10.0, 0.1, 1.0, 1.0, 0.0)  # denominator indistinguishable from 0
    assert hi == math.inf and lo >= 0.0


def test_fieller_covers_the_true_ratio_at_its_level():
    hits, reps = 0, 400
    for seed in range(reps):
        g2, tr = _draws(60, seed=seed)
        est = estimate_from_samples(g2, tr, level=0.9)
        hits += est.low <= 10.0 <= est.high
    # Binomial(400, 0.9): sd 6 hits; ±4 sd.
    assert 0.84 * reps <= hits <= 0.96 * reps


def test_weighted_moments_are_bias_corrected_emas():
    xs, ys = [3.0, 5.0, 4.0, 8.0], [1.0, 2.0, 0.5, 1.5]
    m = WeightedMoments(0.9)
    ema_t = ema_g = 0.0
    for i, (t, g) in enumerate(zip(xs, ys), 1):
        m.update(t, g)
        ema_t, ema_g = 0.9 * ema_t + 0.1 * t, 0.9 * ema_g + 0.1 * g
        assert m.means()[:2] == pytest.approx((ema_t / (1 - 0.9**i), ema_g / (1 - 0.9**i)))
    flat = WeightedMoments(1.0)
    for t, g in zip(xs, ys):
        flat.update(t, g)
    vt, vg, c = flat.variances_of_means()
    assert flat.n_effective == pytest.approx(4.0)
    assert vt == pytest.approx(np.var(xs, ddof=1) / 4) and vg == pytest.approx(np.var(ys, ddof=1) / 4)
    assert c == pytest.approx(np.cov(xs, ys)[0, 1] / 4)
    for bad in (1.5, 0, 0.0, -0.1):   # 0 would keep one sample, which has no variance
        with pytest.raises(ConfigError, match=rf"The 'decay' parameter must be in \(0, 1\] .*Got {bad!r} instead."):
            WeightedMoments(bad)


def test_weighted_moments_resume_from_their_state():
    xs, ys = [3.0, 5.0, 4.0, 8.0, 2.0], [1.0, 2.0, 0.5, 1.5, 0.7]
    whole, first = WeightedMoments(0.9), WeightedMoments(0.9)
    for t, g in zip(xs, ys):
        whole.update(t, g)
    for t, g in zip(xs[:3], ys[:3]):
        first.update(t, g)
    resumed = WeightedMoments(0.9)
    resumed.load_state_dict(first.state_dict())
    for t, g in zip(xs[3:], ys[3:]):
        resumed.update(t, g)
    assert resumed.estimate("microbatch") == whole.estimate("microbatch")
    with pytest.raises(ConfigError, match=r"smoothed with decay 0.9, this monitor uses 0.5"):
        WeightedMoments(0.5).load_state_dict(first.state_dict())


def test_non_finite_samples_are_skipped_and_counted():
    est = estimate_from_samples([1.0, float("nan"), 1.2, 0.8], [10.0, 5.0, float("inf"), 9.0])
    assert est.n_samples == 2 and est.skipped == 2
    assert est.b_simple == pytest.approx(19.0 / 1.8)


def test_ratio_without_signal_is_infinite():
    assert ratio(5.0, -0.1) == math.inf and ratio(5.0, 0.5) == 10.0 and math.isnan(ratio(float("nan"), 1.0))


def test_estimate_json_round_trip_keeps_an_unbounded_interval():
    est = NoiseEstimate(b_simple=12.5, low=3.0, high=math.inf, g2=0.2, trace=2.5, method="microbatch",
                        n_samples=17, n_effective=12.3, skipped=1, batch_small=8, batch_big=64,
                        layers={"w": {"g2": 0.1, "trace": 1.0, "b_simple": math.inf}})
    back = NoiseEstimate.from_dict(json.loads(dumps(est)))
    assert back == est and back.high == math.inf and back.layers["w"]["b_simple"] == math.inf
