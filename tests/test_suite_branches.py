"""The branched critical batch: its pure parts by hand, and the whole measurement on one tiny task."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from batchscope import TrainConfig
from batchscope.data import IndexStream
from batchscope.tasks import load_task
from batchscope.train import start_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "suite"))

import branches  # noqa: E402


def test_the_ladder_reaches_the_largest_batch_with_enough_steps():
    # 8 .. 128: 256 x 4 steps would need 1,024 examples; E rounds 784 up to a multiple of 128
    assert branches.ladder(8, 784, 4000) == ([8, 16, 32, 64, 128], 896)
    assert branches.ladder(8, 10 ** 6, 100) == ([8, 16, 32, 64], 10 ** 6)          # the training set caps it
    assert branches.ladder(8, 20, 4000) == ([8], 32)       # too short for a second batch; E a multiple of 2 x 8


def test_branch_rates_follow_the_optimizers_rule():
    assert branches.branch_lr("adam", 128, 32, 1e-3, 50.0) == pytest.approx(2e-3)
    assert branches.branch_lr("adamw", 8, 32, 1e-3, math.nan) == pytest.approx(5e-4)
    # SGD saturates at B_simple: 0.1 (1 + 96/32) / (1 + 96/64)
    assert branches.branch_lr("sgd", 64, 32, 0.1, 96.0) == pytest.approx(0.16)
    assert branches.branch_lr("sgd", 64, 32, 0.1, math.nan) == pytest.approx(0.2)


def _rows(*pairs):
    return [{"batch": b, "loss": loss} for b, loss in pairs]


def test_the_critical_batch_is_the_largest_batch_within_the_smallest_ones_half_branch():
    got = branches.critical_batch(0.5, _rows((8, 0.40), (16, 0.45), (32, 0.52), (64, 0.60)))
    assert (got["b_crit"], got["passing"], got["at_top"], got["flat"]) == (16, [8, 16], False, False)
    # a pass above a failure still counts (the largest passing batch); the largest tried: a lower bound
    assert branches.critical_batch(0.5, _rows((8, 0.4), (16, 0.51), (32, 0.5)))["b_crit"] == 32
    assert branches.critical_batch(0.5, _rows((8, 0.4), (16, 0.5)))["at_top"] is True
    # a diverged branch fails; the smallest batch not gaining from its second half leaves the point flat
    assert branches.critical_batch(0.5, _rows((8, 0.4), (16, None)))["b_crit"] == 8
    flat = branches.critical_batch(0.5, _rows((8, 0.5), (16, 0.45)))
    assert flat["flat"] and flat["b_crit"] is None
    assert branches.critical_batch(None, _rows((8, 0.4)))["flat"]


def test_predictions_against_the_branched_critical_batch():
    assert branches.compare(64, False, 40.0, 2.5) == {"predicted": 100.0, "ratio": 100 / 64, "within_2x": True}
    assert branches.compare(64, False, 80.0, 2.0)["within_2x"] is False             # 160 / 64 = 2.5
    assert branches.compare(64, True, 400.0, 1.0)["within_2x"] is True              # B_crit >= 64
    assert branches.compare(64, True, 20.0, 1.0)["within_2x"] is False
    assert branches.compare(None, False, 40.0, 2.0)["ratio"] is None


def test_the_tally_counts_measured_points_only():
    def point(half, rows, b_simple):
        return {"half": {"loss": half}, "branches": _rows(*rows), "b_simple": b_simple}

    pts = [point(0.5, [(8, 0.4), (16, 0.45), (32, 0.6)], 16 / branches.LIVE_FACTOR),      # ratio 1
           point(0.5, [(8, 0.4), (16, 0.6), (32, 0.6)], 64 / branches.LIVE_FACTOR),       # ratio 8
           point(0.5, [(8, 0.55), (16, 0.6)], 10.0)]                                       # flat
    t = branches.tally(pts, "live")
    assert (t["points"], t["measured"], t["within_2x"]) == (3, 2, 1)
    assert t["geomean_ratio"] == pytest.approx(math.sqrt(8))


def test_a_branch_draws_what_the_parent_would_draw_next():
    parent = IndexStream(12, 2, seed=5)
    parent.next(), parent.next()
    child = IndexStream(12, 4, seed=99)
    branches.continue_data(child, parent)
    twin = IndexStream(12, 2)
    twin.load_state_dict({k: (v.clone() if torch.is_tensor(v) else v) for k, v in parent.state_dict().items()})
    want = torch.cat([twin.next() for _ in range(6)])        # the rest of the epoch, then its start
    assert torch.equal(torch.cat([child.next(), child.next()]), want[:8])


def test_a_cooldown_branch_ends_at_a_tenth_of_its_peak_rate_and_leaves_the_parent_alone():
    task = load_task("dots")
    run = start_run(task, TrainConfig(batch_size=16, steps=50, eval_every=10 ** 6))
    for _ in range(5):
        run.step()
    before = [p.detach().clone() for p in run.ctx.model.parameters()]
    row = branches.run_branch(run, 32, 0.2, 320)
    assert (row["steps"], row["examples"]) == (10, 320) and math.isfinite(row["loss"])
    assert all(torch.equal(p, q) for p, q in zip(before, run.ctx.model.parameters())) and run.ctx.step == 5
    pol = branches.Cooldown(task, TrainConfig(batch_size=16, steps=10 ** 9), batch_size=32, lr=0.2, steps=10)
    pol.begin(run.ctx)
    run.ctx.step = 14                                         # the tenth step of a branch begun at step 5
    pol.first = 5
    assert pol.plan(run.ctx).lr == pytest.approx((0.02,))


def test_the_whole_measurement_on_a_tiny_task_resumes_without_measuring_again(tmp_path, monkeypatch):
    task = load_task("dots")
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"dots": {"summary": {"per_batch": {"32": {"lr": 0.1, "steps": 40}}, "b_crit": 100}}}))
    monkeypatch.setattr(branches, "task_list", lambda tier: {"dots": lambda: task})
    monkeypatch.setattr(branches, "ground_truth_file", lambda tier: gt)
    monkeypatch.setattr(branches, "STORE", tmp_path / "b.json")
    monkeypatch.setattr(branches, "REPORT", tmp_path / "b.md")
    assert branches.main(["--tasks", "dots", "--points", "0.5,1"]) == 0
    entry = json.loads((tmp_path / "b.json").read_text())["dots"]
    assert [p["step"] for p in entry["points"]] == [20, 40]
    p = entry["points"][1]                                   # 1,280 examples seen: branches of 640 at 8 .. 128
    assert p["ladder"] == [8, 16, 32, 64, 128] and p["branch_examples"] == 640
    assert p["half"]["examples"] == 320 and all(b["examples"] == 640 for b in p["branches"])
    assert p["noise_steps"] == 20 and p["b_simple"] > 0
    a = branches.analyse(p)
    assert a["flat"] or a["b_crit"] in p["ladder"]
    report = (tmp_path / "b.md").read_text()
    assert "### dots (sgd, B_ref 32" in report and report.count("\n| 40 |") == 1

    def refuse(*args, **kwargs):
        raise AssertionError("a finished point was measured again")

    monkeypatch.setattr(branches, "measure_point", refuse)
    assert branches.main(["--tasks", "dots", "--points", "0.5,1"]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["dots"] == entry
