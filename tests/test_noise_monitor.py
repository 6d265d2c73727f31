"""The estimators against closed forms, against hand computations, and their refusals."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from torch.utils.data import TensorDataset

from batchscope import Callback, ConfigError, Target, Task, TrainConfig, train
from batchscope.noise import NoiseError, NoiseScaleMonitor, measure_noise, two_batch

from tests.helpers import batchscope_calls, linear_task

D, NOISE = 5, 0.5


def linear_problem(seed: int = 0):
    """y = x·w + 0.5ε with x ~ N(0, I_5); the model sits at w + δ with |δ|² = 1.

    Per-example gradient of (x·w' − y)² is 2x(x·δ − ε), so G = 2δ and, for Gaussian x,
    |G|² = 4|δ|², tr(Σ) = 4(|δ|²(d + 1) + s²d): here 4 and 29 (B_simple = 7.25).
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, 1, generator=g)
    delta = torch.randn(D, 1, generator=g)
    delta /= delta.norm()
    model = nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_((w + delta).T)

    def batch(n):
        x = torch.randn(n, D, generator=g)
        return x, x @ w + NOISE * torch.randn(n, 1, generator=g)

    return model, batch, 4.0, 4.0 * ((D + 1) + NOISE**2 * D)


def _check_unbiased(raw, g2_true, tr_true):
    g2 = torch.tensor([r.g2 for r in raw], dtype=torch.float64)
    tr = torch.tensor([r.trace for r in raw], dtype=torch.float64)
    k = len(raw)
    for est, truth in ((g2, g2_true), (tr, tr_true)):
        se = float(est.std() / math.sqrt(k))
        assert se < 0.06 * truth, "too few steps for the test to say anything"
        assert abs(float(est.mean()) - truth) < 4 * se, (float(est.mean()), truth, se)


def test_microbatch_estimator_in_a_user_loop_matches_the_closed_form():
    model, batch, g2_true, tr_true = linear_problem()
    m, acc = 4, 8
    monitor = NoiseScaleMonitor(model, micro_batch=m)
    for _ in range(400):
        x, y = batch(m * acc)
        for xs, ys in zip(x.split(m), y.split(m)):
            (nn.functional.mse_loss(model(xs), ys) / acc).backward()
        monitor.update()
        model.zero_grad(set_to_none=True)
    assert monitor.sizes == (4, 32) and monitor.estimate().method == "microbatch"
    _check_unbiased(monitor.raw, g2_true, tr_true)
    wide, quartiles = monitor.estimate(), monitor.estimate(level=0.5)   # same centre, narrower interval
    assert quartiles.b_simple == wide.b_simple
    assert wide.low < quartiles.low < quartiles.b_simple < quartiles.high < wide.high


def test_exact_estimator_matches_the_closed_form():
    model, batch, g2_true, tr_true = linear_problem(seed=1)
    monitor = NoiseScaleMonitor(model, method="exact", loss_fn=nn.functional.mse_loss)
    for _ in range(300):
        monitor.update(batch=batch(16))
    assert monitor.sizes == (1, 16)
    _check_unbiased(monitor.raw, g2_true, tr_true)


class MicroGrads(Callback):
    """Per-micro-batch gradients by differencing .grad (a full copy: what the monitor avoids)."""

    def __init__(self, limit=None):
        self.expected = []
        self.limit = limit

    def on_train_begin(self, ctx):
        self.prev = None
        self.micro = []

    def on_micro_batch_end(self, ctx, index, loss):
        g = torch.cat([p.grad.flatten() for p in ctx.model.parameters()]).double().clone()
        self.micro.append(g - (self.prev if self.prev is not None else 0.0))
        self.prev = g

    def on_before_step(self, ctx):
        a = ctx.accumulation
        used = self.micro[: self.limit]
        small = sum(float((a * d).square().sum()) for d in used) / len(used)   # loss was divided by a
        big = float(self.prev.square().sum())
        self.expected.append(two_batch(small, big, ctx.micro_batch, ctx.batch_size))
        self.prev, self.micro = None, []


@pytest.mark.parametrize("every, limit", [(1, None), (3, None), (1, 2)])
def test_monitor_in_the_training_loop_accounts_for_the_accumulation_scaling(every, limit):
    task = linear_task(n=256, d=6, seed=3)
    ref, monitor = MicroGrads(limit), NoiseScaleMonitor(every=every, max_micro_batches=limit)
    result = train(task, TrainConfig(batch_size=32, micro_batch=8, steps=12, eval_every=12), [ref, monitor])
    assert [r.step for r in monitor.raw] == list(range(1, 13, every))
    for r in monitor.raw:
        g2, tr = ref.expected[r.step - 1]
        assert r.g2 == pytest.approx(g2, rel=1e-4, abs=1e-6) and r.trace == pytest.approx(tr, rel=1e-4)
    assert monitor.history[-1].b_simple == pytest.approx(monitor.estimate().b_simple)
    x, y = task.train_data.tensors
    # hooks removed when training ends: a further backward runs no batchscope code
    assert batchscope_calls(lambda: nn.functional.mse_loss(result.model(x[:8]), y[:8]).backward()) == []


def _run_user_loop(monitor, model, x, y, acc, divide=True, scaler=None, opt=None):
    for xs, ys in zip(x.split(len(x) // acc), y.split(len(y) // acc)):
        loss = nn.functional.mse_loss(model(xs), ys) / (acc if divide else 1)
        (scaler.scale(loss) if scaler else loss).backward()
    if scaler is not None:
        scaler.unscale_(opt)
    point = monitor.update()
    model.zero_grad(set_to_none=True)
    return point


def test_summed_gradients_and_loss_scaling_give_the_same_estimate():
    model, batch, _, _ = linear_problem(seed=2)
    x, y = batch(32)
    plain = NoiseScaleMonitor(model, micro_batch=8)
    _run_user_loop(plain, model, x, y, 4)
    plain.close()
    summed = NoiseScaleMonitor(model, micro_batch=8, grad_is_mean=False)
    _run_user_loop(summed, model, x, y, 4, divide=False)
    summed.close()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaled = NoiseScaleMonitor(model, micro_batch=8, scaler=scaler)
    _run_user_loop(scaled, model, x, y, 4, scaler=scaler, opt=opt)
    scaled.close()
    for other in (summed, scaled):
        assert other.raw[0].g2 == pytest.approx(plain.raw[0].g2, rel=1e-5)
        assert other.raw[0].trace == pytest.approx(plain.raw[0].trace, rel=1e-5)
    # Forgetting the scaler would be off by scale² in the micro-batch norms.
    blind = NoiseScaleMonitor(model, micro_batch=8)
    _run_user_loop(blind, model, x, y, 4, scaler=torch.amp.GradScaler("cpu", init_scale=1024.0), opt=opt)
    assert blind.raw[0].trace > 1e4 * plain.raw[0].trace


@pytest.mark.parametrize("preconditioned", [False, True])
def test_amp_inside_the_training_loop_divides_by_the_loss_scale(preconditioned):
    # The callback order of train() under AMP: scaled backward per micro-batch, unscale_, on_before_step.
    model, batch, _, _ = linear_problem(seed=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(batch(8)[0]).sum().backward()
    opt.step()  # Adam now has second moments to precondition with
    opt.zero_grad()
    x, y = batch(32)
    plain = NoiseScaleMonitor(model, micro_batch=8, optimizer=opt, preconditioned=preconditioned)
    _run_user_loop(plain, model, x, y, 4)
    plain.close()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    monitor = NoiseScaleMonitor(optimizer=opt, preconditioned=preconditioned)
    # train() hands the adapter its scaler and the step's loss in the context
    ctx = SimpleNamespace(task=SimpleNamespace(loss_fn=nn.functional.mse_loss), model=model, optimizer=opt,
                          batch_size=32, micro_batch=8, accumulation=4, scaler=scaler, step=0, step_loss=0.5)
    callback = monitor.as_callback()
    callback.on_train_begin(ctx)
    for xs, ys in zip(x.split(8), y.split(8)):
        scaler.scale(nn.functional.mse_loss(model(xs), ys) / 4).backward()
    scaler.unscale_(opt)
    callback.on_before_step(ctx)
    assert monitor.raw[0].loss == 0.5
    assert monitor.raw[0].trace == pytest.approx(plain.raw[0].trace, rel=1e-5)
    assert monitor.raw[0].g2 == pytest.approx(plain.raw[0].g2, rel=1e-5)


def test_adam_preconditioned_estimate_divides_by_sqrt_v_hat():
    model, batch, _, _ = linear_problem(seed=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-3)
    monitor = NoiseScaleMonitor(model, micro_batch=4, optimizer=opt, preconditioned=True)
    x, y = batch(16)
    for xs, ys in zip(x.split(4), y.split(4)):
        (nn.functional.mse_loss(model(xs), ys) / 4).backward()
    assert monitor.update() is None  # no second moments before Adam's first step
    assert monitor.unmeasured == 1 and not monitor.raw
    opt.step()
    opt.zero_grad()
    x, y = batch(16)
    state = opt.state[model.weight]
    denom = (state["exp_avg_sq"] / (1 - 0.999 ** float(state["step"]))).sqrt() + 1e-3
    ref = nn.Linear(D, 1, bias=False)
    ref.load_state_dict(model.state_dict())
    micro = [torch.autograd.grad(nn.functional.mse_loss(ref(xs), ys), ref.weight)[0] / denom
             for xs, ys in zip(x.split(4), y.split(4))]
    expected = two_batch(sum(float(g.square().sum()) for g in micro) / 4,
                         float((sum(micro) / 4).square().sum()), 4, 16)
    _run_user_loop(monitor, model, x, y, 4)
    assert (monitor.raw[0].g2, monitor.raw[0].trace) == pytest.approx(expected, rel=1e-5)
    assert monitor.estimate().preconditioned
    with pytest.raises(ConfigError, match="preconditioned=True needs an Adam-type optimizer .* got SGD"):
        NoiseScaleMonitor(model, micro_batch=4, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                          preconditioned=True)


def test_non_finite_gradients_are_skipped_and_counted():
    model, batch, _, _ = linear_problem(seed=6)
    monitor = NoiseScaleMonitor(model, micro_batch=4)
    x, y = batch(16)
    _run_user_loop(monitor, model, x, y, 4)
    before = monitor.estimate()
    x[5, 0] = float("inf")
    assert _run_user_loop(monitor, model, x, y, 4) is None
    assert monitor.skipped == 1 and len(monitor.raw) == 1
    after = monitor.estimate()
    assert after.skipped == 1 and (after.g2, after.trace, after.n_samples) == (before.g2, before.trace, 1)


def test_per_layer_breakdown_adds_up():
    task = linear_task(n=256, d=4)
    r = measure_noise(task, 32, 8, steps=6, per_layer=True, eval_every=6)
    layers = r.estimate.layers
    assert set(layers) == {"weight"}
    assert layers["weight"]["g2"] == pytest.approx(r.estimate.g2) and layers["weight"]["trace"] == pytest.approx(
        r.estimate.trace)


class BatchNormNet(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))


@pytest.mark.parametrize("make, message", [
    (lambda: NoiseScaleMonitor(nn.ReLU(), micro_batch=2),
     "the model ReLU has no trainable parameters, so it has no gradient to measure"),
    (lambda: NoiseScaleMonitor(BatchNormNet(), method="exact"),
     r"the exact per-example estimator cannot measure a model with BatchNorm \(layer '1': BatchNorm1d\).*"
     r"use the micro-batch estimator instead \(method='microbatch', CLI --method microbatch\)"),
    (lambda: measure_noise(linear_task(), 1, steps=2),
     "needs two batch sizes, so a batch of at least 2; got batch size 1"),
    (lambda: measure_noise(linear_task(), 32, 32, steps=2), "micro-batch 32 is not smaller than the batch size 32"),
    (lambda: train(linear_task(), TrainConfig(batch_size=32, steps=2), [NoiseScaleMonitor()]),
     "micro-batch 32 equals the batch size 32 .*for example 16"),
    (lambda: NoiseScaleMonitor(nn.Linear(2, 1), method="median"),
     "The 'method' parameter must be one of microbatch, dataparallel, exact. Got 'median' instead."),
])
def test_refusals_say_what_and_how_to_fix(make, message):
    with pytest.raises((NoiseError, ConfigError), match=message):
        make()


def test_micro_batch_must_divide_the_batch():
    with pytest.raises(ConfigError, match=r"micro-batch 5 does not divide batch size 32; pick a divisor of 32 "
                                          r"\(for example 4\)"):
        measure_noise(linear_task(), 32, 5, steps=2)


def test_update_without_backward_or_on_one_process_as_data_parallel_is_refused():
    model = nn.Linear(3, 1)
    with pytest.raises(NoiseError, match=r"no backward pass reached the model since the last update\(\)"):
        NoiseScaleMonitor(model, micro_batch=2).update()
    dp = NoiseScaleMonitor(model, micro_batch=2, method="dataparallel")
    model(torch.randn(2, 3)).sum().backward()
    with pytest.raises(NoiseError, match="method='dataparallel' needs torch.distributed initialised"):
        dp.update()


def test_a_monitor_resumes_from_its_state_dict():
    model, batch, _, _ = linear_problem(seed=6)
    data = [batch(32) for _ in range(6)]
    whole = NoiseScaleMonitor(model, micro_batch=8, per_layer=True)
    for x, y in data:
        _run_user_loop(whole, model, x, y, 4)
    whole.close()
    first = NoiseScaleMonitor(model, micro_batch=8, per_layer=True)
    for x, y in data[:3]:
        _run_user_loop(first, model, x, y, 4)
    first.close()
    state = json.loads(json.dumps(first.state_dict()))      # it survives a JSON round trip
    resumed = NoiseScaleMonitor(model, micro_batch=8, per_layer=True)
    resumed.load_state_dict(state)
    for x, y in data[3:]:
        _run_user_loop(resumed, model, x, y, 4)
    assert resumed.estimate() == whole.estimate() and resumed.estimate().n_samples == 6
    assert resumed.estimate().layers["weight"] == pytest.approx(whole.estimate().layers["weight"])
    assert [p.step for p in resumed.history] == [4, 5, 6]


def test_sampled_monitor_hooks_only_the_steps_it_measures():
    model, batch, _, _ = linear_problem(seed=7)
    data = [batch(32) for _ in range(7)]
    every = NoiseScaleMonitor(model, micro_batch=8)
    sampled = NoiseScaleMonitor(model, micro_batch=8, every=3)
    hooked = []

    def backward(xs, ys):
        (nn.functional.mse_loss(model(xs), ys) / 4).backward()

    def sampled_hooks(x, y):
        # The model has one parameter: each hooked monitor runs one gradient hook per backward, so
        # this counts the sampled monitor's hooks beyond the every-step monitor's one.
        return len(batchscope_calls(lambda: backward(x, y))) - 1

    for i, (x, y) in enumerate(data):
        xs, ys = x.split(8), y.split(8)
        hooked.append(sampled_hooks(xs[0], ys[0]))
        for xm, ym in zip(xs[1:], ys[1:]):
            backward(xm, ym)
        every.update()
        sampled.update()
        model.zero_grad(set_to_none=True)
    assert hooked == [1, 0, 0, 1, 0, 0, 1]
    # Same micro-batches: the sampled monitor's samples are the every-step monitor's steps 1, 4, 7.
    assert [r.step for r in sampled.raw] == [1, 4, 7]
    picked = {r.step: r for r in every.raw}
    for r in sampled.raw:
        assert (r.g2, r.trace) == pytest.approx((picked[r.step].g2, picked[r.step].trace), rel=1e-12)
    x, y = data[0]
    sampled.load_state_dict({**sampled.state_dict(), "steps": 8})     # resuming re-syncs the hooks
    assert sampled_hooks(x, y) == 0
    sampled.load_state_dict({**sampled.state_dict(), "steps": 9})
    assert sampled_hooks(x, y) == 1
    sampled.close()
    assert sampled_hooks(x, y) == 0


def test_the_micro_batch_estimate_warns_when_batchnorm_couples_examples():
    task = Task(name="bn", make_model=BatchNormNet, train_data=TensorDataset(torch.randn(256, 4), torch.randn(256, 1)),
                loss_fn=nn.functional.mse_loss, target=Target("loss", 0.1, "train"), optimizer="sgd", lr=0.01)
    m = measure_noise(task, batch_size=32, micro_batch=8, steps=5)
    assert len(m.estimate.caveats) == 1 and "BatchNorm (layer '1'): batch statistics couple" in m.estimate.caveats[0]
    plain = measure_noise(linear_task(), batch_size=32, micro_batch=8, steps=5)
    assert plain.estimate.caveats == ()
    with pytest.raises(ConfigError, match=r"micro-batch 1 is too small for task 'bn': its model has BatchNorm "
                                          r"\(layer '1'\), which needs more than one example per batch"):
        measure_noise(task, batch_size=32, micro_batch=1, steps=5)
