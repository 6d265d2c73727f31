import math

import numpy as np
import pytest

from batchscope.errors import ConfigError
from batchscope.hardware import StepTimeModel, knee
from batchscope.plan import model
from batchscope.plan.devices import DataParallelStep
from batchscope.plan.growth import Window, bootstrap_fits, fit_growth, make_windows, prediction_at
from batchscope.plan.projection import project_examples
from batchscope.plan.recommend import (Constraints, Inputs, candidate_batches, choose, evaluate_candidates,
                                       layout, learning_rate, recommend)


def test_steps_and_examples_double_at_b_noise():
    s_min, bn = 1000.0, 256.0
    assert model.steps_to_target(bn, s_min, bn) == 2 * s_min
    assert model.examples_to_target(bn, s_min, bn) == 2 * s_min * bn  # 2 E_min
    assert model.s_min_from_reference(3000.0, 128, 256.0) == pytest.approx(1000.0)


def test_time_to_target_is_least_at_the_closed_form_optimum():
    alpha, beta, bn = 0.01, 1e-4, 400.0
    line = StepTimeModel(alpha, beta)
    assert model.time_to_target(400, 100.0, bn, line.seconds(400)) == pytest.approx(100 * 2 * (0.01 + 0.04))
    grid = np.arange(1, 5000)
    times = [model.time_to_target(int(b), 100.0, bn, line.seconds(b)) for b in grid]
    assert grid[int(np.argmin(times))] == 200       # B* = sqrt(alpha B_noise / beta) = sqrt(0.01 * 400 / 1e-4)
    flat = StepTimeModel(0.01, 0.0)                 # a step costs the same at any batch: larger is always sooner
    assert np.all(np.diff([model.time_to_target(int(b), 100.0, bn, flat.seconds(b)) for b in grid]) < 0)


def test_accumulation_pays_the_fixed_cost_per_pass():
    line = StepTimeModel(0.01, 1e-4)
    assert line.seconds(64, accumulation=4) == pytest.approx(4 * (0.01 + 64e-4))
    # 256 as 4 passes of 64 on one device: 4 * (alpha + 64 beta) ...
    assert DataParallelStep(line, ceiling=64)(256).seconds == pytest.approx(4 * (0.01 + 64e-4))
    # ... and on 4 devices, 64 each, one pass
    assert DataParallelStep(line)(256, 4).seconds == pytest.approx(0.01 + 64e-4)


def test_learning_rate_rules():
    assert model.sgd_lr(64, 64, 0.1, 1000.0) == pytest.approx(0.1)
    # far below B_noise: linear scaling
    assert model.sgd_lr(128, 64, 0.1, 1e9) == pytest.approx(0.2, rel=1e-6)
    # far above B_noise: saturates at eps_max = 0.1 (1 + 100/64)
    assert model.sgd_lr(1e9, 64, 0.1, 100.0) == pytest.approx(0.1 * (1 + 100 / 64), rel=1e-6)
    assert model.adam_lr(256, 64, 1e-3) == pytest.approx(2e-3)
    assert model.adascale_gain(4.0, 1.0, 1.0) == 1.0 and model.adascale_gain(4.0, 1.0, 4.0) == pytest.approx(2.5)


def test_layout_respects_the_memory_ceiling_and_devices():
    c = Constraints(n_train=10_000, memory_ceiling=48)
    lay = layout(256, c)
    assert (lay.batch_size, lay.micro_batch, lay.accumulation) == (256, 32, 8)  # 6, 7 do not divide 256
    lay = layout(256, Constraints(n_train=10_000, memory_ceiling=48, devices=4))
    assert (lay.batch_size, lay.micro_batch, lay.accumulation, lay.devices) == (256, 32, 2, 4)
    assert layout(32, c).accumulation == 1


def test_candidates_are_clamped_by_data_cap_and_devices():
    assert candidate_batches(Constraints(n_train=1000))[-1] == 512
    assert candidate_batches(Constraints(n_train=1000, max_batch=100))[-1] == 64
    assert candidate_batches(Constraints(n_train=1000, devices=4))[0] == 4
    with pytest.raises(ConfigError, match="no batch size fits"):
        candidate_batches(Constraints(n_train=1000, max_batch=2, devices=4))


def _inputs(bn=256.0, alpha=0.01, beta=1e-4, opt="sgd"):
    # the reference run at B=64 needs 5000 steps, so S_min = 5000 / (1 + bn/64)
    return Inputs(step_time=StepTimeModel(alpha, beta), b_crit=bn, b_crit_low=bn / 2, b_crit_high=bn * 2,
                  b_ref=64, steps_ref=5000.0, lr_ref=0.1, optimizer=opt)


def test_objectives_on_a_hand_computed_case():
    inp, c = _inputs(), Constraints(n_train=100_000)
    cands = evaluate_candidates(inp, c, candidate_batches(c))
    s_min = 5000 / 5.0
    at_256 = next(x for x in cands if x.batch_size == 256)
    assert at_256.steps == pytest.approx(2 * s_min) and at_256.relative_compute == pytest.approx(2.0)
    assert at_256.seconds == pytest.approx(2 * s_min * (0.01 + 256e-4))
    # B* = sqrt(0.01 * 256 / 1e-4) = 160: the nearest powers of two are 128 and 256
    assert choose(cands, "fastest", 256.0).batch_size == 128
    assert choose(cands, "balanced", 256.0).batch_size == 256
    # cheapest: E/E_min = 1 + B/256 <= 1.1 -> B <= 25.6 -> 16 is the largest (fastest) such power of two
    assert choose(cands, "cheapest", 256.0).batch_size == 16
    with pytest.raises(ConfigError, match="The 'objective' parameter must be one of"):
        choose(cands, "cheap", 256.0)


def test_memory_ceiling_turns_into_accumulation_and_costs_time():
    inp = _inputs(bn=4096.0, alpha=0.05, beta=1e-5)
    free = recommend(inp, Constraints(n_train=100_000), "balanced")[0]
    tight = recommend(inp, Constraints(n_train=100_000, memory_ceiling=1000), "balanced")[0]
    assert free.batch_size == tight.batch_size == 4096
    assert (tight.micro_batch, tight.accumulation) == (512, 8)
    assert tight.seconds > free.seconds


def test_data_set_size_caps_the_batch():
    best = recommend(_inputs(bn=1e6), Constraints(n_train=3000), "balanced")[0]
    assert best.batch_size == 2048


def test_learning_rate_choice_and_warmup():
    inp = _inputs()
    same = learning_rate(64, inp, 1000)
    assert same.lr == pytest.approx(0.1) and same.warmup_steps == 0
    big = learning_rate(256, inp, 1000)
    assert big.lr == pytest.approx(0.1 * (1 + 4) / (1 + 1)) and big.warmup_steps == 50
    rule = learning_rate(256, _inputs(opt="adam"), 1000).rule
    assert "sqrt" in rule or "square root" in rule


def test_growth_fit_recovers_a_power_law_and_predicts_at_target():
    rng = np.random.default_rng(0)
    n = 600
    losses = np.linspace(2.0, 0.5, n)
    true_b = 50.0 * losses ** -1.5                       # B_simple = 50 L^-1.5
    g2 = np.ones(n) + rng.normal(0, 0.05, n)             # unbiased, noisy per-step estimates
    trace = true_b + rng.normal(0, 0.05, n) * true_b
    # (binning a curved law biases each window a little; 12 windows keep that well inside the interval)
    fit = fit_growth(make_windows(losses, g2, trace, 12))
    pred = prediction_at(fit, bootstrap_fits(losses, g2, trace, 12), target_loss=0.25)
    assert fit.slope == pytest.approx(-1.5, abs=0.1)
    truth = 50.0 * 0.25 ** -1.5
    assert pred.value == pytest.approx(truth, rel=0.15)
    assert pred.low <= truth <= pred.high
    assert pred.extrapolation > 1.5  # 0.25 lies beyond the measured losses


def test_windows_are_ratios_of_averages():
    ws = make_windows([1, 1, 1, 1], g2=[1.0, 3.0, 1.0, 1.0], trace=[10.0, 10.0, 4.0, 4.0], n_windows=2)
    assert ws[0].b_simple == pytest.approx(20.0 / 4.0)  # not mean(10/1, 10/3)
    assert math.isnan(Window(1.0, -1.0, 2.0, 3).b_simple)
    with pytest.raises(ValueError, match="no window has a positive"):
        fit_growth([Window(1.0, -1.0, 2.0, 3)])


def test_projection_recovers_log_linear_progress():
    e = np.array([1000, 2000, 4000, 8000])
    # progress = -1.5 + 0.25 ln(e) reaches 1 at e = exp(10)
    acc_start, acc_target = 0.1, 0.8
    values = acc_start + (acc_target - acc_start) * (-1.5 + 0.25 * np.log(e))
    proj = project_examples(e, values, acc_start, acc_target)
    assert proj.examples == pytest.approx(math.exp(10.0), rel=1e-6)
    flat = project_examples(e, [0.1, 0.1, 0.09, 0.08], acc_start, acc_target)
    assert flat.examples == math.inf


def test_projection_sees_a_plateau_after_a_fast_start():
    e = [100, 200, 400, 800, 1600, 3200]
    # fast early progress, then nothing: the whole-curve fit would promise the target soon
    values = [0.5, 0.8, 0.9, 0.9, 0.9, 0.9]
    assert project_examples(e, values, 0.0, 1.0).examples == math.inf


def test_the_step_time_model_uses_measurements_inside_their_range():
    curve = StepTimeModel(1.0, 0.01, measured=[(8, 2.0), (32, 3.0), (16, 2.0)]).seconds
    assert curve(16) == pytest.approx(2.0)          # a measured point, not the line (1.16)
    assert curve(8 * 2 ** 0.5) == pytest.approx(2.0)
    assert curve(np.sqrt(16 * 32)) == pytest.approx(np.sqrt(2.0 * 3.0))  # log-log halfway between 2 and 3
    assert curve(64) == pytest.approx(1.64)         # beyond the measurements: alpha + beta m
    assert StepTimeModel(1.0, 0.01).seconds(100) == pytest.approx(2.0)
    # a load spike at a small batch is lowered to what a larger batch took
    spiky = StepTimeModel(1.0, 0.01, measured=[(1, 90.0), (2, 1.0), (4, 1.5)])
    assert spiky.seconds(1) == pytest.approx(1.0) and spiky.seconds(4) == pytest.approx(1.5)
    assert spiky.measured == ((1.0, 90.0), (2.0, 1.0), (4.0, 1.5))     # what was measured stays as it was
    # a larger batch slower per example than a smaller one keeps its time: one pass at it costs that
    slow = StepTimeModel(1.0, 0.01, measured=[(16, 2.0), (32, 8.0), (64, 9.0)])
    assert slow.seconds(32) == pytest.approx(8.0) and slow.seconds(64) == pytest.approx(9.0)


def test_profile_recommender_and_knee_share_one_step_time_model():
    from batchscope.hardware import ProfilePoint
    from batchscope.tasks import load_task
    from tests.helpers import fake_profile

    pts = [(1, 0.010), (2, 0.011), (4, 0.013), (8, 0.030), (16, 0.041), (32, 0.081)]
    m = StepTimeModel(0.005, 0.0025, pts)
    profile = fake_profile(load_task("dots"), alpha=0.005, beta=0.0025)
    profile.points = [ProfilePoint(b, t, 0.0, b / t, None) for b, t in pts]
    assert StepTimeModel.from_profile(profile) == m
    assert [profile.step_time(b) for b in (1, 3, 8, 24, 64)] == [m.seconds(b) for b in (1, 3, 8, 24, 64)]
    assert profile.to_dict()["step_time_model"] == m.to_dict()
    assert m.seconds(8) == pytest.approx(0.030) and m.seconds(2) == pytest.approx(0.011)
    # the recommender prices a step with the same model: one pass of 24 on one device
    inp = Inputs(step_time=m, b_crit=64.0, b_crit_low=32.0, b_crit_high=128.0, b_ref=8, steps_ref=90.0,
                 lr_ref=0.1, optimizer="sgd")
    (c24,) = evaluate_candidates(inp, Constraints(n_train=1000), [24])
    assert c24.seconds == pytest.approx(c24.steps * m.seconds(24))
    # throughput 100, 182, 308, 267, 390, 395: against the best so far, 4 -> 8 gains 0%, 8 -> 16 gains 27%,
    # 16 -> 32 gains 1%
    assert knee(m) == 16


@pytest.mark.parametrize("alpha, beta, measured, wrong", [
    (math.nan, 1e-5, (), r"The 'alpha' parameter of StepTimeModel must be a finite number of seconds >= 0 \(the "
                         r"fixed cost of a step\)\. Got nan instead; take alpha and beta from a hardware profile"),
    (-1e-3, 1e-5, (), r"'alpha' parameter .* Got -0.001 instead"),
    (1e-3, -1e-5, (), r"'beta' parameter of StepTimeModel must be a finite number of seconds >= 0 .* Got -1e-05"),
    (1e-3, math.inf, (), r"'beta' parameter .* Got inf instead"),
    (0.0, 0.0, (), r"'alpha' parameter of StepTimeModel must be positive where beta is 0 too .* Got 0.0 instead"),
    ("fast", 1e-5, (), r"'alpha' parameter .* Got 'fast' instead"),
    (1e-3, 1e-5, ((4, math.nan),), r"'measured' parameter of StepTimeModel must hold \(batch, median seconds\) "
                                    r"pairs .* Got \(4, nan\) instead; drop that point or measure it again"),
    (1e-3, 1e-5, ((0, 0.1),), r"'measured' .* Got \(0, 0.1\) instead"),
    (1e-3, 1e-5, ((4, -0.1),), r"'measured' .* Got \(4, -0.1\) instead"),
    (1e-3, 1e-5, (4, 0.1), r"'measured' .* Got 4 instead"),
])
def test_a_step_time_model_that_cannot_describe_a_device_is_refused(alpha, beta, measured, wrong):
    with pytest.raises(ConfigError, match=wrong):
        StepTimeModel(alpha, beta, measured)


def test_the_line_alone_may_be_flat_or_through_the_origin():
    assert StepTimeModel(0.01, 0.0).seconds(1000) == 0.01
    assert StepTimeModel(0.0, 1e-4).seconds(100) == pytest.approx(0.01)


def test_recommend_and_plan_agree_with_time_to_target_on_a_hand_computed_case():
    from batchscope.plan.comm import GB, Cluster, Link
    from batchscope.plan.frontier import make_plan

    # one device: 1 ms + 10 us per example, at most 64 per pass; 2 devices over a 1 GB/s link moving 1 MB
    line = StepTimeModel(1e-3, 1e-5)
    cluster = Cluster(Link("l", 1 * GB, 0.0), per_node=8)
    s_min, bn = 100.0, 256.0
    # B = 256 on 2 devices: 128 each = 2 passes of 64 (1.64 ms each); all-reduce 2 * 1/2 * 1e6 / 1e9 = 1 ms
    step_s = 2 * (1e-3 + 64e-5) + 1e-3
    by_hand = 100.0 * (1 + 256 / 256) * step_s                          # S(B) t_step(B) = 200 * 4.28 ms
    assert model.time_to_target(256, s_min, bn, step_s) == pytest.approx(by_hand) == pytest.approx(0.856)
    inp = Inputs(step_time=line, b_crit=bn, b_crit_low=bn, b_crit_high=bn, b_ref=256, steps_ref=200.0,
                 lr_ref=0.1, optimizer="sgd")                            # S_min = 200 / (1 + 256/256) = 100
    c = Constraints(n_train=10_000, memory_ceiling=64, devices=2, cluster=cluster, grad_bytes=1e6)
    (found,) = evaluate_candidates(inp, c, [256])
    step = DataParallelStep(line, ceiling=64, cluster=cluster, grad_bytes=1e6)
    planned = next(r for r in make_plan([2], s_min, bn, step, limit=10_000, batches=[256]).rows)
    assert (found.micro_batch, found.accumulation) == (planned.micro_batch, planned.accumulation) == (64, 2)
    assert found.seconds == pytest.approx(by_hand) and planned.seconds == pytest.approx(by_hand)
    assert found.steps == planned.steps == pytest.approx(200.0)
