"""The framework callbacks time the framework's real steps and plan with the grid plus what they cost beyond it."""

import time

import pytest
import torch

from batchscope.adapt import StepTimeModel
from batchscope.hardware.realstep import WARMUP_STEPS
from batchscope.integrations.batching import REFIT_STEPS, BatchPlan


def plan(step_time):
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    return BatchPlan.build(step_time, micro_batch=8, accumulation=2, world=1, n_train=4096, optimizer=opt)


def test_the_controller_plans_with_the_grid_plus_the_measured_overhead():
    p = plan(StepTimeModel(0.25, 0.0))               # the grid: 2 passes x 0.25 s = 0.5 s a step at 8 x 2
    for _ in range(WARMUP_STEPS + REFIT_STEPS - 1):
        p.step_seconds(0.75)
    assert p.controller.time_model.overhead == 0.0 and p.overhead is None     # too few steps timed yet
    p.step_seconds(None)                              # after an evaluation: not a step, not counted
    p.step_seconds(0.75)
    assert p.controller.time_model.overhead == 0.25 and p.overhead["overhead_seconds"] == 0.25
    assert p.controller.time_model.seconds(64) == 0.25 + 0.25       # the grid's shape, plus the step's cost
    restored = plan(StepTimeModel(0.25, 0.0))
    restored.load_state_dict(p.state_dict())
    assert restored.controller.time_model.overhead == 0.25
    # a new layout starts its own timing: its warm-up and the steps before it are not mixed in
    p.micro_batch, p.accumulation = 16, 2
    p.step_seconds(9.0)
    assert p.timed == [9.0] and p.controller.time_model.overhead == 0.25


def test_a_stated_overhead_is_replaced_by_the_measured_one_not_added_to_it():
    p = plan(StepTimeModel(0.25, 0.0, overhead=1.0))
    for _ in range(WARMUP_STEPS + REFIT_STEPS):
        p.step_seconds(0.625)
    assert p.controller.time_model.overhead == 0.125


@pytest.mark.slow
def test_lightning_adaptive_callback_times_the_frameworks_own_steps(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from batchscope.integrations.lightning import AdaptiveBatchCallback

    from .lightning_helpers import TinyClassifier, TinyData, trainer

    class SlowLogger(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            time.sleep(0.005)                         # 5 ms after every micro-batch: 10 ms a step of two

    pl.seed_everything(0)
    cb = AdaptiveBatchCallback(StepTimeModel(1e-5, 1e-8), every=100, min_samples=3)
    t = trainer(tmp_path, [SlowLogger(), cb], accumulate_grad_batches=2, max_steps=16)
    t.fit(TinyClassifier(lr=0.1), datamodule=TinyData(batch_size=8, n=1024))
    o = cb.plan.overhead
    assert o is not None and (o["micro_batch"], o["accumulation"]) == (8, 2)
    assert 0.0095 < o["overhead_seconds"] < 0.1
    assert cb.plan.controller.time_model.overhead == o["overhead_seconds"]
