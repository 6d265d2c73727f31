"""The long tier's clocks on hand-computed cases, and its pipeline end to end on one tiny task."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchscope import Target, Task
from batchscope.errors import ConfigError
from batchscope.hardware import HardwareProfile

SUITE_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "suite"
sys.path.insert(0, str(SUITE_DIR))

import clocks  # noqa: E402
import long_judge  # noqa: E402
import long_tier  # noqa: E402


def test_gpu_shaped_clock_charges_each_segment_at_its_batch():
    clock = clocks.gpu_shaped()
    assert clock.step_seconds(1024) == pytest.approx(0.008)           # the knee: twice the fixed 4 ms
    # 100 steps at 32: 100 x (4 ms + 32 x 4/1024 ms) = 0.4125 s; 50.5 at 64: 50.5 x 4.25 ms = 0.214625 s
    assert clocks.path_seconds(clock, [(100, 32), (50.5, 64)]) == pytest.approx(0.627125, rel=1e-12)
    assert clocks.path_seconds(clock, clocks.fixed_path(10, 0)) == pytest.approx(0.04)


def test_data_parallel_clock_is_plans_eight_device_step():
    clock = clocks.data_parallel(grad_bytes=4e6)
    # each device: 4 ms + 128 x 3.90625 us = 4.5 ms; ring all-reduce of 4 MB over 8 on NVLink 4:
    # 2 x 7/8 x 4e6 / 450e9 s + 2 x 7 x 2 us = 15.5556 us + 28 us; no overlap (gamma 1): the sum
    assert clock.step_seconds(1024) == pytest.approx(0.0045 + 7e6 / 450e9 + 28e-6, rel=1e-12)
    with pytest.raises(ConfigError):
        clock.step_seconds(12)         # 12 examples do not split over 8 devices


def test_measured_clock_is_the_profiles_bounded_medians():
    clock = clocks.measured({16: 0.001, 32: 0.002, 64: 0.0015})
    assert clock.step_seconds(16) == pytest.approx(0.001)
    assert clock.step_seconds(32) == pytest.approx(0.0015)   # a larger batch was faster: lowered to it
    assert clock.step_seconds(64) == pytest.approx(0.0015)


@pytest.mark.parametrize("name", ["gpu", "dp8", "cpu"])
def test_every_clock_is_a_hardware_profile_of_the_task(tmp_path, name):
    task = tiny_task()
    clock = {"gpu": clocks.gpu_shaped(), "dp8": clocks.data_parallel(4e6),
             "cpu": clocks.measured({16: 0.001, 32: 0.0013, 64: 0.002})}[name]
    batches = [16, 32, 64]
    path = tmp_path / "p.json"
    long_judge.clock_profile(task, clock, batches).save(path)
    loaded = HardwareProfile.load(path).check_task(task)
    for b in batches:
        assert loaded.step_time(b) == pytest.approx(clock.step_seconds(b), rel=1e-9)
    assert loaded.max_batch == 64 and loaded.limited_by == "max_batch"


def tiny_task() -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1600, 8, generator=g)
    w = torch.randn(8, generator=g)
    y = ((x @ w + 0.7 * torch.randn(1600, generator=g)) > 0).long()    # noisy linear classes
    return Task(name="tiny", make_model=lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)),
                train_data=TensorDataset(x[:1280], y[:1280]), val_data=TensorDataset(x[1280:], y[1280:]),
                loss_fn=nn.functional.cross_entropy, optimizer="sgd", lr=0.8, momentum=0.0, reference_batch=32,
                target=Target("loss", 0.17, "val"))


class TinySweep(long_tier.LongSweep):
    factors = (1.0, 2.0)
    max_extend = 0
    seeds = (0,)
    first_estimate = 40


@pytest.mark.slow
def test_a_clock_profile_file_drives_find_and_adaptive_training(tmp_path):
    from batchscope import TrainConfig, train
    from batchscope.adapt import AdaptiveConfig
    from batchscope.plan.find import find

    task = tiny_task()
    path = tmp_path / "tiny.gpu.json"
    long_judge.clock_profile(task, clocks.gpu_shaped(), [16, 32, 64]).save(path)
    rec = find(task, profile=HardwareProfile.load(path), max_batch=64).recommendation
    assert 16 <= rec.batch_size <= 64
    r = train(task, TrainConfig(batch_size=16, lr=0.8, until_target=True, steps=400, eval_every=5,
                                adaptive=AdaptiveConfig(profile=str(path), max_batch=64)))
    assert r.reached_target and max(r.adaptive["steps"]["batch_size"]) <= 64


@pytest.mark.slow
def test_long_tier_end_to_end_on_a_tiny_task(tmp_path):
    registry = {"tiny": tiny_task}
    store, store_path = {}, tmp_path / "gt.json"
    long_tier.ground_truth_task("tiny", store, lambda: store_path.write_text(json.dumps(store)), registry,
                                batches=(32, 64), sweep_cls=TinySweep, pilot={}, rounds=1)
    gt = json.loads(store_path.read_text())["tiny"]
    assert sorted(int(b) for b in gt["best_per_batch"]) == [32, 64]
    assert len(gt["runs"]) == 4                                        # 2 batches x 2 rates x 1 seed
    assert all(len(v["steps"]) == 1 and v["steps"][0] > 0 for v in gt["best_per_batch"].values())
    assert set(gt["step_seconds"]) == set(gt["step_seconds_control"]) == {"32", "64"}

    rc = long_judge.main([], registry=registry, store_path=store_path, out_dir=tmp_path, profiles=tmp_path / "p",
                         arms={"fixed 64": long_judge.fixed_arm(gt, 64)})
    assert rc == 0
    row = json.loads((tmp_path / "suite_long.json").read_text())["tasks"][0]
    steps = {b: gt["best_per_batch"][str(b)]["steps"][0] for b in (32, 64)}
    gpu = row["clocks"]["gpu"]
    for b in (32, 64):   # one seed: the time is its steps x (4 ms + B x 4/1024 ms)
        assert gpu["fixed"][str(b)]["seconds"] == pytest.approx(steps[b] * (0.004 + b * 0.004 / 1024), rel=1e-9)
    best = min((32, 64), key=lambda b: gpu["fixed"][str(b)]["seconds"])
    assert gpu["best"]["batch"] == best and gpu["largest"]["batch"] == 64
    assert gpu["arms"]["fixed 64"]["ratio"] == pytest.approx(gpu["largest"]["ratio"])
    assert gpu["batch_32"]["ratio"] >= 1.0 and min(gpu["batch_32"]["ratio"], gpu["largest"]["ratio"]) == 1.0
    cpu = row["clocks"]["cpu"]
    t = gt["step_seconds"]     # this machine's clock: a median above a larger batch's is lowered to it
    assert cpu["fixed"]["32"]["seconds"] == pytest.approx(steps[32] * min(t["32"], t["64"]), rel=1e-9)
    for k in ("cpu", "gpu", "dp8"):
        p = HardwareProfile.load(tmp_path / "p" / f"tiny.{k}.json").check_task(tiny_task())
        assert p.step_time(64) == pytest.approx(row["clocks"][k]["step_seconds"]["64"], rel=1e-9)
    md = (tmp_path / "suite_long.md").read_text()
    assert "| tiny |" in md and "GPU-shaped" in md and "8 devices" in md and math.isfinite(cpu["best"]["seconds"])
