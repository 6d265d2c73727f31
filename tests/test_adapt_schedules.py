"""Batch schedules fixed in advance (Seesaw, a batch warm-up): the batch and rate of every step, by hand."""

import math

import pytest
import torch

from batchscope import ConfigError, TrainConfig, train
from batchscope.adapt import BatchSchedule, batch_warmup, seesaw
from batchscope.tasks import load_task
from batchscope.train import start_run

from .helpers import blobs_task

R2 = math.sqrt(2.0)


def _steps(result):
    s = result.adaptive["steps"]
    return s["batch_size"], s["lr"]


def test_seesaw_for_sgd_doubles_the_batch_and_keeps_the_rate():
    task = load_task("dots")                      # SGD, lr 0.1
    cfg = TrainConfig(batch_size=16, eval_every=1000, steps=9, seed=1)
    # steps start at 0, 16, 32, 48 examples (batch 16), then 64, 96, 128 (32), then 160, 224 (64)
    batches, lrs = _steps(train(task, cfg, policy=seesaw(task, cfg, [64, 160])))
    assert batches == [16] * 4 + [32] * 3 + [64] * 2
    assert lrs == pytest.approx([0.1] * 9)
    _, lrs = _steps(train(task, cfg, policy=seesaw(task, cfg, [64, 160], rate_factor=1 / R2)))
    assert lrs == pytest.approx([0.1] * 4 + [0.1 / R2] * 3 + [0.05] * 2)


def test_a_breakpoint_between_steps_takes_effect_at_the_next_step():
    task = load_task("dots")
    cfg = TrainConfig(batch_size=16, eval_every=1000, steps=6)
    # 50 lies inside the step that starts at 48: that step keeps 16, the one at 64 uses 32
    batches, _ = _steps(train(task, cfg, policy=seesaw(task, cfg, [50])))
    assert batches == [16, 16, 16, 16, 32, 32]


def test_seesaw_for_adam_scales_the_rate_by_one_over_root_two():
    task = blobs_task()
    cfg = TrainConfig(batch_size=8, eval_every=1000, steps=7, optimizer="adam", lr=1e-3)
    # 0, 8, 16 (batch 8); 24, 40 (16); 56, 88 (32)
    batches, lrs = _steps(train(task, cfg, policy=seesaw(task, cfg, [24, 56])))
    assert batches == [8, 8, 8, 16, 16, 32, 32]
    assert lrs == pytest.approx([1e-3] * 3 + [1e-3 / R2] * 2 + [5e-4] * 2)


def test_batch_warmup_follows_the_rate_rule_of_the_optimizer():
    task = blobs_task()
    sgd = TrainConfig(batch_size=8, eval_every=1000, steps=5, lr=0.02)
    batches, lrs = _steps(train(task, sgd, policy=batch_warmup(task, sgd, [16, 48])))
    assert batches == [8, 8, 16, 16, 32]             # 0, 8 | 16, 32 | 48
    assert lrs == pytest.approx([0.02, 0.02, 0.04, 0.04, 0.08])
    adam = TrainConfig(batch_size=8, eval_every=1000, steps=5, optimizer="adamw", lr=1e-3)
    _, lrs = _steps(train(task, adam, policy=batch_warmup(task, adam, [16, 48])))
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3 * R2, 1e-3 * R2, 2e-3])


def test_breakpoints_warmup_and_an_epoch_budget():
    task = load_task("dots")
    cfg = TrainConfig(batch_size=16, eval_every=1000, epochs=0.1, warmup_steps=2, seed=0)   # 400 examples
    pol = BatchSchedule(task, cfg, [(0, 16, 0.1), (64, 32, 0.2), (160, 64, 0.05)])
    r = train(task, cfg, policy=pol)
    batches, lrs = _steps(r)
    # 4 x 16 = 64, 3 x 32 = 160, then 64s: 224, 288, 352; a fourth would pass 400
    assert batches == [16] * 4 + [32] * 3 + [64] * 3 and r.examples == 352
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.05, 0.05, 0.05])


def test_every_example_once_per_epoch_while_the_batch_grows():
    task = blobs_task(n=200)                        # 160 training examples
    cfg = TrainConfig(batch_size=8, eval_every=1000, steps=100)
    pol = seesaw(task, cfg, [40, 100])
    run = start_run(task, cfg, policy=pol)
    seen = []
    while run.ctx.examples < 160 - 32:
        seen.append(pol.plan(run.ctx).indices)     # draw as the loop does, counting examples by hand
        run.ctx.examples += len(seen[-1])
    flat = torch.cat(seen)
    assert len(flat) == len(set(flat.tolist()))


def test_a_fork_carries_the_schedule_and_continues_it():
    task = load_task("dots")
    cfg = TrainConfig(batch_size=16, eval_every=1000, steps=40, seed=2)
    run = start_run(task, cfg, policy=seesaw(task, cfg, [64, 160], rate_factor=0.5))
    for _ in range(3):
        run.step()                                 # 48 examples seen
    twin = run.branch(examples=16 + 3 * 32 + 2 * 64)
    assert twin.batch_sizes == [16, 32, 32, 32, 64, 64]
    assert run.ctx.examples == 48 and run.policy.log.batch_size == [16] * 3
    for _ in range(6):
        run.step()
    assert run.policy.log.batch_size == [16] * 4 + [32] * 3 + [64] * 2
    assert run.policy.log.lr == pytest.approx(twin.run.policy.log.lr)
    assert all(torch.equal(p, q) for p, q in zip(run.ctx.model.parameters(), twin.run.ctx.model.parameters()))


def test_checkpoint_and_resume_of_a_schedule(tmp_path):
    task = load_task("dots")
    ck = str(tmp_path / "run.pt")
    cfg = TrainConfig(batch_size=16, eval_every=1000, steps=12, seed=3)
    whole = train(task, cfg, policy=seesaw(task, cfg, [64, 160]))
    part = TrainConfig(batch_size=16, eval_every=1000, steps=5, seed=3, checkpoint=ck, checkpoint_every=5)
    train(task, part, policy=seesaw(task, part, [64, 160]))
    again = TrainConfig(batch_size=16, eval_every=1000, steps=12, seed=3, resume=ck)
    resumed = train(task, again, policy=seesaw(task, again, [64, 160]))
    assert _steps(resumed) == _steps(whole)
    assert all(torch.equal(p, q) for p, q in zip(whole.model.parameters(), resumed.model.parameters()))


@pytest.mark.parametrize("points, match", [
    ([], "at least one breakpoint"),
    ([(10, 16, 0.1)], "first breakpoint .* must be at 0 examples"),
    ([(0, 16, 0.1), (64, 32, 0.1), (64, 64, 0.1)], "increasing example counts; 64 follows 64"),
    ([(0, 16, -1.0)], "'lr' parameter of breakpoint 0 must be a positive"),
    ([(0, 10**6, 0.1)], "batch of breakpoint 0 1000000 is larger than the training set"),
    ([(0, 16)], r"breakpoint 0 of the batch schedule must be \(examples, batch, lr\)"),
])
def test_bad_breakpoints_are_refused_with_the_fix(points, match):
    task = load_task("dots")
    with pytest.raises(ConfigError, match=match):
        BatchSchedule(task, TrainConfig(batch_size=16, eval_every=1000, steps=5), points)


def test_bad_schedule_settings_are_refused():
    task = load_task("dots")
    with pytest.raises(ConfigError, match="'schedule' parameter must be 'constant'"):
        seesaw(task, TrainConfig(batch_size=16, eval_every=1000, steps=5, schedule="cosine"), [64])
    with pytest.raises(ConfigError, match="micro-batch 12 does not divide batch 16"):
        seesaw(task, TrainConfig(batch_size=16, eval_every=1000, steps=5, micro_batch=12), [64])
    with pytest.raises(ConfigError, match="increasing example counts"):
        batch_warmup(task, TrainConfig(batch_size=16, eval_every=1000, steps=5), [64, 32])
    with pytest.raises(ConfigError, match="'halve_at' parameter must hold positive integer"):
        seesaw(task, TrainConfig(batch_size=16, eval_every=1000, steps=5), [0])
