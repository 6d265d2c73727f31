"""The loss-spike figure (branch_check.peak_ratio), the per-step loss trace and the suite's runs that record it."""

import math
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchscope import Target, Task, TrainConfig, train
from batchscope.plan.branch_check import SPIKE, Figures, peak_ratio, peak_step, spike
from batchscope.train import StepLosses

SUITE_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "suite"
sys.path.insert(0, str(SUITE_DIR))

import common  # noqa: E402


def bump(height: float, steps: int = 100, at: int = 40, width: int = 20, base: float = 0.5) -> list[float]:
    """A falling run's per-step losses (``base``) with ``width`` steps at ``height`` from step ``at`` + 1."""
    return [height if at <= i < at + width else base for i in range(steps)]


def figures(losses, start=1.0) -> Figures:
    return Figures("predicted", 32, 0.1, 1e-3, start, list(losses))


def test_a_smoothed_loss_at_1_6x_its_start_is_flagged_and_1_4x_is_not():
    high, low = bump(1.6), bump(1.4)
    # 100 steps: the window is 20, so a 20-step block at 1.6 is the largest trailing mean
    assert math.isclose(peak_ratio(high, 1.0), 1.6)
    assert peak_ratio(high, 1.0) > SPIKE
    assert math.isclose(peak_ratio(low, 1.0), 1.4)
    assert peak_ratio(low, 1.0) < SPIKE
    assert peak_step(high) == 60                     # the block ends at step 60
    # the branch check's own rule agrees on both curves
    assert spike(figures(high)).startswith("the smoothed loss rose to 1.6")
    assert spike(figures(low)) == ""


def test_the_ratio_is_of_the_smoothed_loss_so_one_noisy_step_is_not_a_spike():
    losses = bump(3.0, width=1)
    assert math.isclose(peak_ratio(losses, 1.0), (19 * 0.5 + 3.0) / 20)
    assert spike(figures(losses)) == ""
    # the same step held for a whole window is one
    assert peak_ratio(bump(3.0, width=20), 1.0) == 3.0


def test_the_ratio_scales_with_the_start_and_agrees_with_the_rule_at_every_start():
    losses = bump(1.2)
    for start in (0.5, 0.7, 0.8, 0.9, 1.0):
        r = peak_ratio(losses, start)
        assert math.isclose(r, 1.2 / start)
        assert (r > SPIKE) == bool(spike(figures(losses, start)))


def test_a_non_finite_loss_is_an_infinite_ratio_and_no_scale_gives_nan():
    assert peak_ratio([0.5, float("nan"), 0.4], 1.0) == math.inf
    assert peak_step([0.5, 0.4, float("inf")]) == 3
    assert math.isnan(peak_ratio([0.5, 0.4], 0.0))
    assert math.isnan(peak_ratio([], 1.0))
    assert peak_step([]) == 0
    # shorter than the window: the mean of all
    assert math.isclose(peak_ratio([2.0], 1.0), 2.0)


def tiny_task(lr: float = 0.8) -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1600, 8, generator=g)
    w = torch.randn(8, generator=g)
    y = ((x @ w + 0.7 * torch.randn(1600, generator=g)) > 0).long()
    return Task(name="tiny", make_model=lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)),
                train_data=TensorDataset(x[:1280], y[:1280]), val_data=TensorDataset(x[1280:], y[1280:]),
                loss_fn=nn.functional.cross_entropy, optimizer="sgd", lr=lr, momentum=0.0, reference_batch=32,
                target=Target("loss", 0.17, "val"))


def test_the_trace_holds_every_step_and_starts_at_the_loss_at_initialisation():
    trace = StepLosses()
    r = train(tiny_task(), TrainConfig(batch_size=32, lr=0.5, steps=30, eval_every=10), [trace])
    assert len(trace.losses) == r.steps == 30
    assert trace.start == r.history[0].loss > 0


def test_run_to_target_rows_carry_the_peak_ratio():
    row = common.run_to_target(tiny_task(), 32, 0.8, eval_every=5, max_steps=400)
    assert row["reached"]
    assert 0 < row["peak_ratio"] < SPIKE          # a well-behaved run stays below its start
    assert 1 <= row["peak_step"] <= row["steps_run"]
    assert row["start_loss"] > 0
    # far too high a rate: the row says it spiked (or diverged, with the ratio still recorded)
    bad = common.run_to_target(tiny_task(), 32, 300.0, eval_every=5, max_steps=200)
    assert bad["peak_ratio"] is not None and bad["peak_ratio"] > SPIKE


def test_the_rebound_sees_a_late_rise_that_stays_below_the_start():
    # falls from 1.0 to 0.2, then climbs back to 0.6 for a window: 3x its low, 0.6x its start
    losses = [1.0 - 0.04 * i for i in range(20)] + [0.2] * 40 + [0.6] * 20 + [0.2] * 20
    assert peak_ratio(losses, 1.0) < SPIKE
    assert math.isclose(common.rebound(losses), 3.0)
    assert common.rebound([0.5] * 100) == 1.0
    assert common.rebound([0.5, float("nan")] * 50) is None
