"""train(task, TrainConfig(adaptive=...)): the batch grows with the noise scale; resume; bad input."""

import json

import pytest
import torch

from batchscope import Callback, ConfigError, TrainConfig, train
from batchscope.adapt import adascale_gain
from batchscope.adapt import AdaptiveConfig

from .test_plan_find import blobs_task, fake_profile

# alpha/beta = 100: with B_noise in the tens to hundreds, B* = sqrt(100 B_noise) is well above the start.
CHEAP_EXAMPLES = dict(alpha=2e-3, beta=2e-5)


def _run(task, steps=120, b0=8, **kw):
    acfg = AdaptiveConfig(profile=fake_profile(task, **CHEAP_EXAMPLES), measure_every=2, every=10, **kw)
    return train(task, TrainConfig(batch_size=b0, steps=steps, eval_every=20, adaptive=acfg))


@pytest.mark.slow
def test_batch_grows_and_every_step_is_logged():
    task = blobs_task()
    r = _run(task)
    log = r.adaptive["steps"]
    assert len(log["batch_size"]) == r.steps == 120 and sum(log["batch_size"]) == r.examples
    assert log["batch_size"][0] == 8 and max(log["batch_size"]) > 8
    changes = [d for d in r.adaptive["decisions"] if d["changed"]]
    assert changes and all(d["gain"] > 0.05 for d in changes)
    # measured steps run at least two micro-batches; the others the controller's layout (one here)
    assert all(k >= 2 for k, m in zip(log["accumulation"], log["measured"]) if m)
    assert all(k == 1 for k, m in zip(log["accumulation"], log["measured"]) if not m)
    # SGD: lr = lr0 * AdaScale gain with the estimate known before the step
    for s in range(1, r.steps):
        b, bn = log["batch_size"][s], log["b_crit"][s - 1]
        want = task.lr * (adascale_gain(b, 8, bn) if b != 8 and bn else 1.0)
        assert log["lr"][s] == pytest.approx(want)
    json.dumps(r.to_dict())


def test_memory_ceiling_forces_accumulation():
    task = blobs_task()
    # every pass pays alpha: no growth beyond the ceiling (and no shrinking below the start, which would pay)
    r = _run(task, b0=32, memory_ceiling=8, steps=30, min_batch=32)
    log = r.adaptive["steps"]
    assert set(log["batch_size"]) == {32} and set(log["micro_batch"]) == {8} and set(log["accumulation"]) == {4}
    assert all(b == m * k for b, m, k in zip(log["batch_size"], log["micro_batch"], log["accumulation"]))


class _Kill(Callback):
    def __init__(self, at):
        self.at = at

    def on_step_end(self, ctx, loss):
        if ctx.step == self.at:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_killed_and_resumed_run_follows_the_uninterrupted_trajectory(tmp_path):
    task = blobs_task()
    full = _run(task)
    ck = str(tmp_path / "run.pt")
    acfg = AdaptiveConfig(profile=fake_profile(task, **CHEAP_EXAMPLES), measure_every=2, every=10)
    cfg = TrainConfig(batch_size=8, steps=120, eval_every=20, adaptive=acfg, checkpoint=ck, checkpoint_every=20)
    with pytest.raises(KeyboardInterrupt):
        train(task, cfg, [_Kill(70)])                      # the last checkpoint is at step 60
    cfg.resume = ck
    again = train(task, cfg)
    a, b = full.adaptive["steps"], again.adaptive["steps"]
    for col in ("batch_size", "accumulation", "lr", "b_crit"):
        assert a[col] == b[col], col
    assert [p.loss for p in full.history] == [p.loss for p in again.history]
    for p, q in zip(full.model.parameters(), again.model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kw,cfg,message", [
    ({"max_batch": 4}, {}, "The 'max_batch' parameter must be at least the starting batch 8. Got 4 instead."),
    ({"memory_ceiling": 0}, {}, "The 'memory_ceiling' parameter must be a positive integer. Got 0 instead."),
    ({}, {"micro_batch": 4}, "an adaptive run picks its own micro-batches"),
    ({"noise": "preconditioned"}, {}, "'preconditioned' needs an Adam-type optimizer; the run uses sgd"),
    ({"decision_level": 1.5}, {}, "'decision_level' parameter must be in"),
    ({"min_batch": 16}, {}, r"The 'min_batch' parameter must be in 2\.\.8 .*Got 16 instead\."),
    ({"noise_factor": -1.0}, {}, "'noise_factor' parameter must be a positive finite number"),
])
def test_bad_input_is_refused_with_the_fix(kw, cfg, message):
    task = blobs_task()
    acfg = AdaptiveConfig(profile=fake_profile(task, **CHEAP_EXAMPLES), **kw)
    with pytest.raises(ConfigError, match=message):
        train(task, TrainConfig(batch_size=8, steps=10, adaptive=acfg, **cfg))


def test_raw_noise_plans_with_the_suite_factor_and_preconditioned_noise_without():
    from batchscope.adapt.policy import noise_factor_of
    from batchscope.plan.critical_batch import LIVE_FACTOR
    assert noise_factor_of(AdaptiveConfig()) == LIVE_FACTOR
    assert noise_factor_of(AdaptiveConfig(noise="preconditioned")) == 1.0
    assert noise_factor_of(AdaptiveConfig(noise_factor=3.0)) == 3.0


def test_the_automatic_cadence_spreads_the_measuring_cost_and_never_measures_every_step():
    from batchscope.adapt.policy import MIN_CADENCE, auto_measure_every, cadence_from_times
    from batchscope.adapt import StepTimeModel
    # a measured step 40% dearer than a plain one: every 20th step keeps measuring at 2% of the time
    assert cadence_from_times([1.4, 1.5, 1.45], [1.0, 1.1, 1.2], 0.02) == 20
    # plain steps that all caught a pause make measuring look free: still every other step, not every one
    assert cadence_from_times([1.0, 1.1, 1.0], [1.3, 1.2, 1.25], 0.02) == MIN_CADENCE == 2
    # from the profile: the extra pass costs alpha, the hooks as much again (HOOK_FACTOR 2)
    assert auto_measure_every(StepTimeModel(0.01, 0.001), 90, 0.02) == 10      # 0.02 / (0.02 * 0.1)
    assert auto_measure_every(StepTimeModel(0.0, 0.001), 90, 0.02) == MIN_CADENCE
