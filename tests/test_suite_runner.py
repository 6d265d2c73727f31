"""The validation suite end to end on one tiny task: sweep to a ground truth, judge `find` against it."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchscope import Target, Task

SUITE_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "suite"
sys.path.insert(0, str(SUITE_DIR))

import ground_truth  # noqa: E402
import run as judge  # noqa: E402


def tiny_task() -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1600, 8, generator=g)
    w = torch.randn(8, generator=g)
    y = ((x @ w + 0.7 * torch.randn(1600, generator=g)) > 0).long()    # noisy linear classes
    return Task(name="tiny", make_model=lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)),
                train_data=TensorDataset(x[:1280], y[:1280]), val_data=TensorDataset(x[1280:], y[1280:]),
                loss_fn=nn.functional.cross_entropy, optimizer="sgd", lr=0.8, momentum=0.0, reference_batch=32,
                target=Target("loss", 0.17, "val"))


@pytest.mark.slow
def test_suite_end_to_end_on_a_tiny_task(tmp_path):
    registry = {"tiny": tiny_task}
    store_path = tmp_path / "gt.json"
    store = {}
    ground_truth.ground_truth("tiny", store, lambda: store_path.write_text(json.dumps(store)), registry,
                              min_batch=16, max_batch=64)
    gt = json.loads(store_path.read_text())["tiny"]
    s = gt["summary"]
    assert sorted(int(b) for b in s["per_batch"]) == [16, 32, 64]
    assert all(len(v["steps"]) == 2 for v in gt["best_per_batch"].values())     # two seeds at every batch
    assert s["b_crit_low"] <= s["b_crit"] <= s["b_crit_high"]

    rc = judge.main(["--objectives", "balanced,fastest"], registry=registry, store_path=store_path,
                    out_dir=tmp_path, cache_path=tmp_path / "runs.json")
    assert rc == 0
    out = json.loads((tmp_path / "suite.json").read_text())
    row = out["tasks"][0]
    for obj in ("balanced", "fastest"):
        o = row["objectives"][obj]
        assert o["trained"]["reached"] and math.isfinite(o["regret"]) and o["regret"] > 0.3
    assert row["cost"] > 0     # a task this short costs find about as much as the best run: listed apart
    assert row["short"]
    assert row["prediction"]["covered"] == (row["prediction"]["low"] <= s["b_crit"] <= row["prediction"]["high"])
    md = (tmp_path / "suite.md").read_text()
    assert "| tiny |" in md and "regret" in md

    # under the GPU-shaped clock: find gets the clock as its profile and every time is steps x the clock's t(B)
    rc = judge.main(["--objectives", "balanced", "--clock", "gpu"], registry=registry, store_path=store_path,
                    out_dir=tmp_path, cache_path=tmp_path / "runs.json")
    assert rc == 0
    row = json.loads((tmp_path / "suite_gpu.json").read_text())["tasks"][0]
    gpu = judge.C.gpu_shaped()
    assert row["clock"] == "gpu"
    batches = (16, 32, 64, row["objectives"]["balanced"]["batch"])
    assert {int(b): t for b, t in row["step_seconds"].items()} == {b: gpu.step_seconds(b) for b in batches}
    o = row["objectives"]["balanced"]
    best = min(s["per_batch"][str(b)]["steps"] * gpu.step_seconds(b) for b in (16, 32, 64))
    assert o["regret"] == pytest.approx(o["trained"]["steps"] * gpu.step_seconds(o["batch"]) / best)
    assert o["check"]["winner"] and o["check"]["measuring_share"] > 0
    assert "clock 'gpu'" in (tmp_path / "suite_gpu.md").read_text()
