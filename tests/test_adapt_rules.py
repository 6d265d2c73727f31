"""Learning rate with the batch: the AdaScale gain, square-root scaling, schedules in progress."""

import math

import pytest

from batchscope.adapt import ScaledLearningRate, adascale_gain, sqrt_gain
from batchscope.errors import ConfigError


def test_adascale_gain_hand_computed():
    assert adascale_gain(64, 16, 48) == pytest.approx((1 + 48 / 16) / (1 + 48 / 64))   # 4 / 1.75
    assert adascale_gain(16, 16, 123.0) == 1.0
    assert adascale_gain(64, 16, 1e9) == pytest.approx(4.0, rel=1e-6)     # B << B_noise: linear
    assert adascale_gain(1e9, 16, 48) == pytest.approx(4.0, rel=1e-6)     # B >> B_noise: 1 + B_noise/B0
    assert sqrt_gain(64, 16) == 2.0


def test_sgd_rate_and_progress_follow_the_gain():
    r = ScaledLearningRate(0.1, 16, "sgd")
    assert r.lr(64) == pytest.approx(0.1)                  # no estimate yet: gain 1
    r.observe(math.nan)
    assert r.lr(64) == pytest.approx(0.1)
    r.observe(48.0)
    assert r.lr(64) == pytest.approx(0.1 * 4 / 1.75)
    assert r.advance(64) == pytest.approx(4 / 1.75) and r.progress == pytest.approx(4 / 1.75)
    r.observe(math.inf)                                    # ignored: the last finite estimate stays
    assert r.b_crit == 48.0


def test_warmup_counts_reference_steps_not_steps():
    at_b0 = ScaledLearningRate(1.0, 16, "adam", warmup=8)
    grown = ScaledLearningRate(1.0, 16, "adam", warmup=8)
    f0, f1 = [], []
    for _ in range(8):
        f0.append(at_b0.factor())
        at_b0.advance(16)
    for _ in range(2):
        f1.append(grown.factor())
        grown.advance(64)                                   # each step: 4 reference steps
    assert f0 == [k / 8 for k in range(1, 9)] and f1 == [1 / 8, 5 / 8]
    assert at_b0.factor() == grown.factor() == 1.0
    assert grown.lr(64) == pytest.approx(2.0)               # sqrt(64 / 16)


def test_decay_over_progress_and_state():
    r = ScaledLearningRate(1.0, 10, "adam", total=100, schedule="linear")
    for _ in range(5):
        r.advance(100)                                      # 10 reference steps each
    assert r.factor() == pytest.approx(0.5)
    again = ScaledLearningRate(1.0, 10, "adam", total=100, schedule="linear")
    again.load_state_dict(r.state_dict())
    assert again.lr(100) == pytest.approx(r.lr(100))
    with pytest.raises(ConfigError, match="'optimizer' parameter must be one of sgd, adam, adamw"):
        ScaledLearningRate(1.0, 10, "lamb")
