"""The one loop: a fixed-batch policy is the plain loop; the adaptive policy decides as it did before the
loop was shared; a fork trains a branch and leaves its parent untouched; checkpoints for any policy."""

import json
import math
from pathlib import Path

import pytest
import torch

from batchscope import ConfigError, TrainConfig, train
from batchscope.adapt import AdaptiveConfig
from batchscope.data import split_batch, take
from batchscope.tasks import load_task
from batchscope.train import FixedBatch, start_run

from .test_plan_find import blobs_task, fake_profile

DATA = Path(__file__).parent / "data"


def _plain_loop(task, b, m, steps, lr, seed, warmup):
    """A fixed-batch run written out by hand: seeded model, a seeded permutation per epoch, SGD with
    momentum, accumulation of b/m micro-batches, linear warm-up."""
    torch.manual_seed(seed)
    model = task.make_model()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=task.momentum, weight_decay=task.weight_decay)
    gen = torch.Generator().manual_seed(seed + 1)
    per_epoch, done = task.n_train // b, 0
    while done < steps:
        perm = torch.randperm(task.n_train, generator=gen)
        for k in range(per_epoch):
            if done == steps:
                break
            for g in opt.param_groups:
                g["lr"] = lr * ((done + 1) / warmup if done < warmup else 1.0)
            batch = take(task.train_data, perm[k * b:(k + 1) * b])
            for micro in zip(*(t.split(m) for t in batch)):
                x, y = split_batch(micro)
                (task.loss_fn(model(x), y) / (b // m)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
    return model


def test_the_fixed_batch_policy_is_the_plain_loop_bit_for_bit():
    task = load_task("dots")
    r = train(task, TrainConfig(batch_size=32, micro_batch=8, steps=40, warmup_steps=5, seed=4, eval_every=7))
    ref = _plain_loop(task, 32, 8, 40, task.lr, 4, 5)
    for p, q in zip(r.model.parameters(), ref.parameters()):
        assert torch.equal(p, q)
    same = dict(batch_size=32, micro_batch=8, steps=40, warmup_steps=5, seed=4)
    explicit = train(task, TrainConfig(**same), policy=FixedBatch(task, TrainConfig(**same)))
    for p, q in zip(explicit.model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


# The runs of tests/data/adaptive_decisions_before.json, first recorded with the adaptive loop that the
# shared loop replaced (its own copy of divergence, stops, evaluations and the clock). Re-recorded when
# moves became one doubling per decision with a dwell of min_samples (5) measured steps after each: the
# runs reach the same batches as before (64, 64, 256) by doublings (8 -> 16 -> 32 -> 64 at steps 10, 20,
# 30 instead of 8 -> 64 at step 10; 16 -> 32 -> 64 at steps 5, 10; 32 -> 64 -> 128 -> 256 at 6, 108,
# 168 instead of 32 -> 128 -> 256 at 6, 174), and every step after a move is measured. No rate check
# or roll-back fires in them (their rates stay below the measured caps).
RECORDED = {"blobs_sgd": (dict(alpha=2e-3, beta=2e-5), dict(measure_every=2, every=10),
                          dict(batch_size=8, steps=150, eval_every=20, seed=3)),
            "blobs_every_measured": (dict(alpha=2e-3, beta=2e-5), dict(measure_every=3),
                                     dict(batch_size=16, steps=150, eval_every=25, seed=1)),
            "blobs_two_moves": (dict(alpha=5e-3, beta=1e-5), dict(measure_every=2, every=6),
                                dict(batch_size=32, steps=200, eval_every=25, seed=3))}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_the_adaptive_policy_makes_the_recorded_decisions(name):
    want = json.loads((DATA / "adaptive_decisions_before.json").read_text())[name]
    task = blobs_task()
    profile, acfg, cfg = RECORDED[name]
    r = train(task, TrainConfig(**cfg, adaptive=AdaptiveConfig(profile=fake_profile(task, **profile), **acfg)))
    got = r.adaptive["decisions"]
    assert [(d["step"], d["batch_size"], d["micro_batch"], d["accumulation"], d["changed"]) for d in got] == \
        [(d["step"], d["batch_size"], d["micro_batch"], d["accumulation"], d["changed"]) for d in want["decisions"]]
    assert [d["b_crit"] for d in got] == pytest.approx([d["b_crit"] for d in want["decisions"]], rel=1e-6)
    assert r.adaptive["steps"]["batch_size"] == want["batch_size"]
    assert r.final.loss == pytest.approx(want["final_loss"], rel=1e-6)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_a_branch_trains_a_copy_and_leaves_the_parent_as_it_was():
    task = load_task("dots")
    cfg = TrainConfig(batch_size=16, steps=60, seed=1)
    run = start_run(task, cfg)
    for _ in range(10):
        run.step()
    before, step, rng = _params(run.ctx.model), run.ctx.step, torch.get_rng_state()
    wider = run.branch(examples=320, policy=FixedBatch(task, cfg, batch_size=64, lr=task.lr * 2))
    same = run.branch(examples=320)
    assert (wider.steps, wider.examples, set(wider.batch_sizes)) == (5, 320, {64})
    assert (same.steps, same.examples) == (20, 320) and math.isfinite(same.eval_loss)
    assert all(torch.equal(p, q) for p, q in zip(before, run.ctx.model.parameters()))
    assert run.ctx.step == step and torch.equal(rng, torch.get_rng_state())
    # the branch at the parent's own policy is the parent's future: the same steps give the same weights
    for _ in range(20):
        run.step()
    assert all(torch.equal(p, q) for p, q in zip(run.ctx.model.parameters(), same.run.ctx.model.parameters()))


def test_a_branch_that_diverges_says_so_and_the_parent_goes_on():
    task = load_task("dots")
    cfg = TrainConfig(batch_size=16, steps=60, seed=1)
    run = start_run(task, cfg)
    run.step()
    bad = run.branch(examples=16 * 40, policy=FixedBatch(task, cfg, lr=1e4))
    assert bad.diverged and "training loss" in bad.diverged and bad.eval_loss is None
    assert math.isfinite(run.step())


def test_an_adaptive_run_forks_with_its_controller_and_monitor():
    task = blobs_task()
    cfg = TrainConfig(batch_size=8, steps=100, seed=3,
                      adaptive=AdaptiveConfig(profile=fake_profile(task, alpha=2e-3, beta=2e-5), measure_every=2))
    run = start_run(task, cfg)
    for _ in range(30):
        run.step()
    decisions = len(run.policy.controller.decisions)
    twin = run.branch(examples=800)
    assert twin.examples >= 800 and len(run.policy.controller.decisions) == decisions
    assert twin.run.policy.monitor is not run.policy.monitor
    assert len(twin.run.policy.controller.decisions) > decisions


def test_checkpoint_and_resume_for_a_fixed_batch(tmp_path):
    task = load_task("dots")
    ck = str(tmp_path / "run.pt")
    full = train(task, TrainConfig(batch_size=16, steps=50, seed=2, eval_every=10))

    class Kill:
        def on_step_end(self, ctx, loss):
            if ctx.step == 33:
                raise KeyboardInterrupt

    from batchscope.train import Callback

    class KillCb(Kill, Callback):
        pass

    cfg = TrainConfig(batch_size=16, steps=50, seed=2, eval_every=10, checkpoint=ck, checkpoint_every=10)
    with pytest.raises(KeyboardInterrupt):
        train(task, cfg, [KillCb()])
    assert not Path(ck + ".tmp").exists()
    cfg.resume, cfg.checkpoint, cfg.checkpoint_every = ck, None, None
    again = train(task, cfg)
    assert [p.loss for p in again.history] == [p.loss for p in full.history]
    assert all(torch.equal(p, q) for p, q in zip(full.model.parameters(), again.model.parameters()))


def test_resume_refuses_what_is_not_this_runs_checkpoint(tmp_path):
    dots, cfg = load_task("dots"), TrainConfig(batch_size=16, steps=5)
    with pytest.raises(ConfigError, match="resume: no checkpoint at"):
        train(dots, TrainConfig(batch_size=16, steps=5, resume=str(tmp_path / "none.pt")))
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="is not a readable batchscope checkpoint"):
        train(dots, TrainConfig(batch_size=16, steps=5, resume=str(junk)))
    ck = str(tmp_path / "dots.pt")
    train(dots, TrainConfig(batch_size=16, steps=5, checkpoint=ck, checkpoint_every=5))
    with pytest.raises(ConfigError, match="is a checkpoint of task 'dots', not 'blobs'"):
        train(blobs_task(), TrainConfig(batch_size=16, steps=5, resume=ck))
    with pytest.raises(ConfigError, match="checkpoint path .* is a directory"):
        train(dots, TrainConfig(batch_size=16, steps=5, checkpoint=str(tmp_path), checkpoint_every=5))
    assert cfg.steps == 5
