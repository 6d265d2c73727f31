"""The adaptive controller's checks: one doubling per decision, a dwell between moves, the SGD rate capped at
the measured stability bound, and a roll-back to the state kept before a move that spikes or diverges."""

import itertools
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchscope import DivergedError, TrainConfig, train
from batchscope.adapt import AdaptiveConfig, BatchSizeController, StepTimeModel
from batchscope.adapt.guard import SPIKE_FACTOR, spiked, stability_ceiling
from batchscope.commands.train import rollback_lines
from batchscope.noise import NoiseEstimate
from batchscope.noise.hessian import STABILITY_FRACTION
from batchscope.tasks import Task, Target

from .helpers import fake_profile

SCALES = torch.tensor([1.0, 0.7, 0.5, 0.3])


def ls_task(lr=0.3, momentum=0.0, noise=1.0, copies=256, seed=0):
    """Least squares y = x.w + noise on a full factorial design x = scales * (+-1, +-1, +-1, +-1): X^T X / n =
    diag(scales^2) exactly, so the mean squared error's Hessian is 2 diag(scales^2) and lambda_max = 2."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=4)))
    x = (signs * SCALES).repeat(copies, 1)[torch.randperm(16 * copies, generator=g)]
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [1.5]]) + noise * torch.randn(len(x), 1, generator=g)
    cut = len(x) * 4 // 5
    return Task(name="lsq", make_model=lambda: nn.Linear(4, 1, bias=False), train_data=TensorDataset(x[:cut], y[:cut]),
                val_data=TensorDataset(x[cut:], y[cut:]), loss_fn=nn.functional.mse_loss, optimizer="sgd", lr=lr,
                momentum=momentum, reference_batch=16, target=Target("loss", 0.0, "val"))


LAMBDA_MAX = 2.0 * float(SCALES.max()) ** 2


def _adaptive(task, **kw):
    # alpha/beta = 500 and B_crit = 10 B_simple: the controller wants to grow at every decision
    return AdaptiveConfig(profile=fake_profile(task, alpha=5e-3, beta=1e-5), measure_every=2, noise_factor=10.0, **kw)


def _moves(r):
    return [d for d in r.adaptive["decisions"] if d["changed"]]


@pytest.mark.parametrize("lr,momentum", [(0.3, 0.0), (0.5, 0.5)])
def test_the_rate_never_exceeds_the_capped_stability_bound(lr, momentum):
    task = ls_task(lr=lr, momentum=momentum)
    bound = 2 * (1 + momentum) / LAMBDA_MAX          # heavy-ball SGD on a quadratic: stable below this
    assert lr < STABILITY_FRACTION * bound           # the start is stable, with room
    r = train(task, TrainConfig(batch_size=16, steps=60, eval_every=10, adaptive=_adaptive(task)))
    bounds = [d["checks"]["bound"] for d in _moves(r)]
    checked = [c for c in bounds if c["checked"]]
    assert [d["batch_size"] for d in _moves(r)][:2] == [32, 64] and checked
    # the rule's rate is above the bound from 4x the start on: uncapped, this run would oscillate and grow
    assert max(c["rate_rule"] for c in bounds) > bound and sum(c["capped"] for c in bounds) >= 2
    for c in checked:
        assert c["lambda_max"] == pytest.approx(LAMBDA_MAX, rel=0.05)     # on 512 of the training examples
        assert c["cap"] == pytest.approx(STABILITY_FRACTION * 2 * (1 + momentum) / c["lambda_max"])
    ceiling = r.adaptive["checks"]["rate_ceiling"]
    assert ceiling == max(c["ceiling"] for c in checked) and lr < ceiling < bound
    assert max(r.adaptive["steps"]["lr"]) <= ceiling * (1 + 1e-12)
    assert r.stopped_because == "step limit" and r.adaptive["checks"]["rollbacks"] == []
    assert max(p.loss for p in r.history[1:]) < r.history[0].loss       # no spike


def test_the_cap_keeps_the_start_rate_and_the_rate_in_use():
    f = STABILITY_FRACTION
    cap, ceiling = stability_ceiling(4.0, momentum=0.0, nesterov=False, weight_decay=0.0, rate_now=0.2, lr0=0.1)
    assert cap == ceiling == pytest.approx(f * 0.5) and ceiling > 0.2
    # weight decay adds to the curvature; a cap below the start's rate never lowers the start's rate
    cap, ceiling = stability_ceiling(3.0, momentum=0.9, nesterov=False, weight_decay=1.0, rate_now=0.5, lr0=1.0)
    assert cap == pytest.approx(f * 2 * 1.9 / 4.0) and cap < 1.0 and ceiling == 1.0
    cap, ceiling = stability_ceiling(40.0, momentum=0.0, nesterov=False, weight_decay=0.0, rate_now=0.3, lr0=0.1)
    assert cap == pytest.approx(f * 0.05) and ceiling == 0.3


def _forced(task, gain, steps=60, **kw):
    """An adaptive run whose rate rule gives ``gain`` x the start's rate at every batch but the start's."""
    cfg = TrainConfig(batch_size=16, steps=steps, eval_every=10, adaptive=_adaptive(task, stability_bound=False, **kw))
    policy = cfg.adaptive.policy(task, cfg)
    policy.adaptation.rate.rule_gain = lambda b: 1.0 if b == 16 else gain
    return cfg, policy


@pytest.mark.parametrize("gain,trigger", [(4.0, "spike"), (1e4, "diverged")])
def test_a_move_to_a_rate_that_diverges_is_rolled_back_and_the_run_ends_normally(gain, trigger):
    # lr 0.3 x 4 = 1.2 > 2 / lambda_max = 1: the loss grows by (1 - 2.4)^2 ~ 2x a step, the smoothed loss
    # crosses 1.5x within the watch; x 1e4 blows the next step's loss past 1000x the start (the loop's check)
    task = ls_task()
    cfg, policy = _forced(task, gain, steps=45)      # ends inside the bar (retried later, it fails again)
    r = train(task, cfg, policy=policy)
    assert r.stopped_because == "step limit" and r.steps == 45
    rb = r.adaptive["checks"]["rollbacks"]
    assert len(rb) == 1 and rb[0]["trigger"] == trigger
    # back to the state before the first move (a move on top of one still watched keeps the older state)
    first = _moves(r)[0]
    assert first["batch_size"] == 32 and first["checks"]["watch"]["kept_step"] == first["step"] == rb[0]["kept_step"]
    assert (rb[0]["to_batch"], rb[0]["barred"]) == (16, 32) and rb[0]["from_batch"] in (32, 64)
    back = next(d for d in r.adaptive["decisions"] if d["checks"].get("rollback"))
    assert back["changed"] and back["batch_size"] == 16 and back["step"] == rb[0]["step"]
    assert "rolled back" in back["reason"]
    # barred: no batch of 32 or more while the bar lasts (20 measurements, every 2nd step), at the start's rate
    log, at, until = r.adaptive["steps"], rb[0]["step"], rb[0]["barred_until"]
    assert until == at + 20 * 2 > 45 and set(log["batch_size"][at:]) == {16}
    assert log["lr"][at:] == [pytest.approx(task.lr)] * (45 - at)
    assert math.isfinite(r.final.loss) and r.final.eval_loss < 1.5     # the noise floor is 1.0


def test_without_the_roll_back_the_same_move_ends_the_run():
    task = ls_task()
    cfg, policy = _forced(task, 1e4, rollback=False)
    with pytest.raises(DivergedError, match="training loss grew"):
        train(task, cfg, policy=policy)


def test_the_spike_rule():
    assert spiked(1.51, 1.0) and not spiked(1.5, 1.0) and not spiked(math.inf, 1.0) and not spiked(5.0, 0.0)
    assert SPIKE_FACTOR == 1.5


LINE = StepTimeModel(0.0256, 1e-4)


def _est(b_simple):
    return NoiseEstimate(b_simple=b_simple, low=b_simple * 0.99, high=b_simple * 1.01, g2=1.0, trace=b_simple,
                         method="microbatch", n_samples=20)


def test_from_32_toward_512_one_doubling_per_decision():
    # B_noise 2621: B* = sqrt(alpha B_noise / beta) = 819, the best power of two 512 (the 32 -> 512 case)
    c = BatchSizeController(LINE, start_batch=32, n_train=100_000, noise_factor=1.0, dwell=5, max_batch=512)
    path = [c.decide(s, _est(2621.0)) for s in (5, 10, 15, 20)]
    assert [d.goal for d in path] == [512] * 4
    assert [(d.previous, d.batch_size) for d in path] == [(32, 64), (64, 128), (128, 256), (256, 512)]
    # and down: from 256 toward 16, one halving per decision
    down = BatchSizeController(LINE, start_batch=256, n_train=100_000, noise_factor=1.0, min_batch=16)
    assert [down.decide(s, _est(1.0)).batch_size for s in (5, 10, 15)] == [128, 64, 32]


def test_no_two_moves_closer_than_the_dwell():
    c = BatchSizeController(LINE, start_batch=16, n_train=100_000, noise_factor=1.0, dwell=10)
    decisions = [c.decide(s, _est(1e5)) for s in range(1, 60)]
    moved = [d.step for d in decisions if d.changed]
    assert moved == [1, 11, 21, 31, 41, 51] and c.batch_size == 1024
    held = [d for d in decisions if "held (dwell)" in d.reason]
    assert len(held) == 53 and held[0].checks["dwell"] == {"steps": 10, "since_move": 1, "held": True}


def test_an_adaptive_run_moves_one_doubling_at_a_time_at_least_a_dwell_apart():
    task = ls_task()
    r = train(task, TrainConfig(batch_size=16, steps=60, eval_every=10, adaptive=_adaptive(task, dwell=7)))
    steps = [d["step"] for d in _moves(r)]
    assert len(steps) >= 3 and all(b - a >= 7 for a, b in zip(steps, steps[1:]))
    assert any("held (dwell)" in d["reason"] for d in r.adaptive["decisions"])
    sizes = r.adaptive["steps"]["batch_size"]
    assert all(max(a, b) / min(a, b) <= 2 for a, b in zip(sizes, sizes[1:]))
    # the steps after each move are measured, so the next decision sees the new batch
    measured = r.adaptive["steps"]["measured"]
    assert all(all(measured[s:s + 5]) for s in steps if s + 5 <= len(measured))


def test_the_cli_prints_a_line_per_roll_back():
    a = {"checks": {"rollbacks": [{"step": 12, "trigger": "spike", "why": "the smoothed training loss rose",
                                   "from_batch": 32, "to_batch": 16, "kept_step": 5, "lost_steps": 7,
                                   "barred": 32, "barred_until": 92}]}}
    assert rollback_lines(a) == ["rolled back at step 12 (spike): the smoothed training loss rose; batch 32 -> 16 "
                                 "from the state kept at step 5 (7 steps lost); batch 32 and beyond barred until "
                                 "step 92"]
