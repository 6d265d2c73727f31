"""BatchSizeController on hand-computed cases: the optimum, the threshold, memory, missing estimates."""

import functools
import math

import pytest

from batchscope.adapt import BatchSizeController as Calibrated
from batchscope.adapt import StepTimeModel
from batchscope.errors import ConfigError
from batchscope.noise import NoiseEstimate

ALPHA, BETA = 0.0256, 1e-4          # t(B) = alpha + beta B: B* = sqrt(alpha B_noise / beta) = 256 at B_noise 256
LINE = StepTimeModel(ALPHA, BETA)
# The hand-computed cases are written in B_noise itself: the suite's factor off (tested on its own below).
BatchSizeController = functools.partial(Calibrated, noise_factor=1.0)


def _T(b, bn):  # time to a target up to the constant S_min
    return (1 + bn / b) * (ALPHA + BETA * b)


def _est(b, n=20, low=None, high=None):
    return NoiseEstimate(b_simple=b, low=b / 2 if low is None else low, high=b * 2 if high is None else high, g2=1.0,
                         trace=b, method="microbatch", n_samples=n)


def _sure(b):  # a narrow interval: the central value decides
    return _est(b, low=b * 0.99, high=b * 1.01)


def test_unconstrained_optimum_is_sqrt_alpha_bnoise_over_beta():
    c = BatchSizeController(LINE, start_batch=16, n_train=100_000)
    d = c.decide(50, _est(256.0))
    # the model's optimum is the goal; one decision moves one doubling toward it (with that move's gain)
    assert d.goal == 256 and math.isclose(math.sqrt(ALPHA * 256 / BETA), 256)
    assert d.changed and (d.batch_size, d.micro_batch, d.accumulation) == (32, 32, 1)
    assert d.gain == pytest.approx(1 - _T(32, 256) / _T(16, 256))
    assert "one step toward 256" in d.reason and d.checks["limit"]["held_back"]
    # B_noise 4x larger: B* doubles.
    c2 = BatchSizeController(LINE, start_batch=16, n_train=100_000)
    assert c2.decide(50, _est(1024.0)).goal == 512


def test_threshold_holds_small_gains_so_the_batch_does_not_flap():
    c = BatchSizeController(LINE, start_batch=256, n_train=100_000)
    gain_700 = 1 - _T(512, 700) / _T(256, 700)        # 4.9%: 512 is better, but not by 5%
    gain_800 = 1 - _T(512, 800) / _T(256, 800)        # 6.8%
    assert 0 < gain_700 < 0.05 < gain_800
    held = c.decide(50, _sure(700.0))
    assert not held.changed and c.batch_size == 256 and held.gain == pytest.approx(gain_700)
    moved = c.decide(100, _sure(800.0))
    assert moved.changed and c.batch_size == 512
    # Back at 700 the move is not undone: 256 would gain nothing at all.
    assert not c.decide(150, _sure(700.0)).changed and c.batch_size == 512


def test_a_move_must_also_pay_off_at_the_interval_end_against_it():
    c = BatchSizeController(LINE, start_batch=256, n_train=100_000, confident=True)
    held = c.decide(50, _est(800.0, low=400.0))      # at 400, 256 is the better batch: hold
    assert not held.changed and "at the interval's end 400" in held.reason
    assert c.decide(100, _est(800.0, low=790.0)).changed
    loose = BatchSizeController(LINE, start_batch=256, n_train=100_000, confident=False)
    assert loose.decide(50, _est(800.0, low=400.0)).changed


def test_memory_ceiling_forces_accumulation_and_max_batch_caps():
    c = BatchSizeController(LINE, start_batch=256, n_train=100_000, memory_ceiling=48)
    assert (c.batch_size, c.micro_batch, c.accumulation) == (256, 32, 8)   # 48 does not divide 256; 32 does
    # Every pass pays alpha (find's model), so beyond the ceiling time per progress only grows:
    # with B_noise far above it, the batch goes to the ceiling and no further.
    c = BatchSizeController(LINE, start_batch=16, n_train=100_000, memory_ceiling=64)
    d = c.decide(50, _est(1e6))
    assert d.goal == 64 and (d.batch_size, d.micro_batch, d.accumulation) == (32, 32, 1)
    d = c.decide(100, _est(1e6))
    assert (d.batch_size, d.micro_batch, d.accumulation) == (64, 64, 1)
    for b in c.candidates():
        lay = next(x for x in c.predict(1e6) if x.batch_size == b)
        assert lay.micro_batch <= 64 and lay.micro_batch * lay.accumulation == b
    capped = BatchSizeController(StepTimeModel(1.0, 0.0), start_batch=16, n_train=100_000, max_batch=1024)
    assert capped.decide(50, _est(1e6)).goal == 1024     # no cost per example: as large as allowed
    small = BatchSizeController(StepTimeModel(1.0, 0.0), start_batch=16, n_train=300)
    assert small.decide(50, _est(1e6)).goal == 256       # the largest power of two in the data set


def test_holds_the_start_batch_until_there_is_an_estimate():
    c = BatchSizeController(LINE, start_batch=16, n_train=100_000, min_samples=5)
    for est in (None, _est(256.0, n=4)):
        d = c.decide(50, est)
        assert not d.changed and c.batch_size == 16 and "waiting for an estimate" in d.reason
    assert c.nonfinite == 0
    assert c.decide(100, _est(256.0, n=5)).changed


@pytest.mark.parametrize("bad", [math.inf, math.nan, -3.0, 0.0])
def test_non_finite_estimates_are_held_counted_never_acted_on(bad):
    c = BatchSizeController(LINE, start_batch=16, n_train=100_000)
    for k in range(3):
        d = c.decide(50 * (k + 1), _est(bad))
        assert not d.changed and c.batch_size == 16
    assert c.nonfinite == 3 and "non-finite noise estimate" in d.reason


def test_bad_input_names_the_fix():
    with pytest.raises(ConfigError,
                       match="The 'max_batch' parameter must be at least the starting batch 16. Got 8 instead."):
        BatchSizeController(LINE, start_batch=16, n_train=1000, max_batch=8)
    with pytest.raises(ConfigError, match="The 'memory_ceiling' parameter must be a positive integer"):
        BatchSizeController(LINE, start_batch=16, n_train=1000, memory_ceiling=0)
    with pytest.raises(ConfigError, match="threshold"):
        BatchSizeController(LINE, start_batch=16, n_train=1000, threshold=1.5)


def test_state_dict_round_trip_and_due():
    c = BatchSizeController(LINE, start_batch=16, n_train=100_000, every=25)
    assert [s for s in range(0, 101) if c.due(s)] == [25, 50, 75, 100]
    c.decide(25, _est(256.0))
    c.decide(50, _est(math.nan))
    again = BatchSizeController(LINE, start_batch=16, n_train=100_000, every=25)
    again.load_state_dict(c.state_dict())
    assert (again.batch_size, again.accumulation, again.nonfinite, again.last_move) == (32, 1, 1, 25)
    assert [d.batch_size for d in again.decisions] == [32, 32]


def test_uses_the_same_model_as_find():
    from batchscope.plan import recommend as rec
    measured = ((16, 0.013), (64, 0.02), (256, 0.06))
    c = BatchSizeController(StepTimeModel(0.01, 2e-4, measured), start_batch=16, n_train=10_000)
    inp = rec.Inputs(step_time=StepTimeModel(0.01, 2e-4, measured), b_crit=300.0, b_crit_low=300.0, b_crit_high=300.0,
                     b_ref=16, steps_ref=1.0, lr_ref=1.0, optimizer="sgd")
    cons = rec.Constraints(n_train=10_000)
    best, _, _ = rec.recommend(inp, cons, "fastest")
    assert c.decide(50, _est(300.0)).goal == best.batch_size


def test_the_calibrated_factor_plans_with_factor_times_b_simple():
    from batchscope.plan.critical_batch import LIVE_FACTOR
    c = Calibrated(LINE, start_batch=16, n_train=100_000)
    d = c.decide(50, _sure(256.0 / LIVE_FACTOR))        # B_simple 112: B_noise 256 once calibrated
    assert c.b_crit(_sure(256.0 / LIVE_FACTOR)) == pytest.approx(256.0)
    assert d.b_crit == pytest.approx(256.0) and d.b_crit_low == pytest.approx(256.0 * 0.99 / 1.01, rel=0.03)
    assert d.goal == 256
    raw = BatchSizeController(LINE, start_batch=16, n_train=100_000)
    assert raw.decide(50, _sure(256.0 / LIVE_FACTOR)).goal == 128   # sqrt(alpha 112 / beta) = 169 -> 128
    with pytest.raises(ConfigError, match="noise_factor"):
        Calibrated(LINE, start_batch=16, n_train=100, noise_factor=0.0)


def test_the_batch_shrinks_to_a_quarter_of_the_start_and_no_further():
    c = BatchSizeController(LINE, start_batch=256, n_train=100_000)
    assert c.min_batch == 64
    d = c.decide(50, _sure(1.0))                  # B* = sqrt(alpha / beta) = 16, floored at 256 / 4
    assert d.changed and d.goal == 64 and c.batch_size == 128     # one halving per decision
    assert c.decide(100, _sure(1.0)).batch_size == 64 and c.decide(150, _sure(1.0)).batch_size == 64
    only_up = BatchSizeController(LINE, start_batch=256, n_train=100_000, min_batch=256)
    assert not only_up.decide(50, _sure(1.0)).changed and only_up.batch_size == 256
    assert BatchSizeController(LINE, start_batch=4, n_train=100, devices=2).min_batch == 4   # two per device
    with pytest.raises(ConfigError, match=r"The 'min_batch' parameter must be in 2\.\.256 .*Got 512"):
        BatchSizeController(LINE, start_batch=256, n_train=100_000, min_batch=512)


def test_one_step_time_model_and_a_broken_one_is_refused_before_any_decision():
    import batchscope.hardware
    assert StepTimeModel is batchscope.hardware.StepTimeModel
    for alpha, beta in ((math.nan, 1e-5), (-0.01, 1e-5), (0.01, -1e-5), (0.0, 0.0)):
        with pytest.raises(ConfigError, match="parameter of StepTimeModel must be"):
            BatchSizeController(StepTimeModel(alpha, beta), start_batch=16, n_train=1000)
