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


def tiny_ground_truth(tmp_path) -> tuple[dict, Path]:
    """The tiny task's long-tier ground truth at batches 32 and 64, one seed, and the file it is in."""
    store, store_path = {}, tmp_path / "gt.json"
    long_tier.ground_truth_task("tiny", store, lambda: store_path.write_text(json.dumps(store)), {"tiny": tiny_task},
                                batches=(32, 64), sweep_cls=TinySweep, pilot={}, rounds=1)
    return json.loads(store_path.read_text())["tiny"], store_path


@pytest.mark.slow
def test_long_tier_end_to_end_on_a_tiny_task(tmp_path):
    registry = {"tiny": tiny_task}
    gt, store_path = tiny_ground_truth(tmp_path)
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


def gpu_seconds(path) -> float:
    """The GPU-shaped clock by hand: 4 ms + B x 4/1024 ms a step (x a segment's factor)."""
    return sum(seg[0] * (0.004 + seg[1] * 0.004 / 1024) * (seg[2] if len(seg) > 2 else 1.0) for seg in path)


@pytest.mark.slow
def test_long_anchors_every_arm_on_a_tiny_task_then_judged(tmp_path, monkeypatch):
    import long_anchors as A

    gt, gt_path = tiny_ground_truth(tmp_path)
    task = tiny_task()
    s = A.Setting(task, gt, b0=32, steps0=4, max_batch=64, profiles=tmp_path / "p", rounds=1)
    runs, runs_path = {}, tmp_path / "runs.json"
    save = lambda: runs_path.write_text(json.dumps(runs))  # noqa: E731
    new = A.run_task(s, runs, save, clocks=("gpu", "dp8"), seeds=(0,))
    caps = A.schedule_caps(task, gt)
    expected = {f"{a}|tiny|{k}|0" for a in ("adaptive", "find") for k in ("gpu", "dp8")} | {
        f"warmup|tiny|32x4-cap{caps[k]}|0" for k in ("gpu", "dp8")} | {
        f"seesaw|tiny|32-decay0.5-0.75-cap{caps[k]}|0" for k in ("gpu", "dp8")}
    assert set(new) == expected                     # a cap two clocks share is one run, not two
    assert all(runs[k]["reached"] for k in expected)

    # resuming from the file: nothing is trained again
    def refuse(*a, **k):
        raise AssertionError("trained again")
    for name in ("train", "find", "run_to_target", "timing_pass"):
        monkeypatch.setattr(A, name, refuse)
    stored = json.loads(runs_path.read_text())
    assert A.run_task(s, stored, save, clocks=("gpu", "dp8"), seeds=(0,)) == [] and stored == runs
    monkeypatch.undo()

    # find's cost as stored: the branches as verify.cost counts them, the λ_max probe's examples (SGD)
    for k in ("gpu", "dp8"):
        v, st = runs[f"find|tiny|{k}|0"]["verification"], runs[f"find|tiny|{k}|0"]["stability"]
        assert v["enabled"] and v["branches"] == len(v["batches"]) == len(v["labels"]) >= 1
        assert "predicted" in v["labels"] and v["examples"] == v["branches"] * v["examples_per_branch"]
        assert v["steps"] == sum(v["examples_per_branch"] // b for b in v["batches"]) and v["seconds"] > 0
        assert st["examples"] == 512 and st["iterations"] >= 1     # SHARPNESS_BATCH of the 1,280 training examples
        assert runs[f"find|tiny|{k}|0"]["timed_steps"]["examples"] > 0
    find_cost_on_the_tiny_task(tmp_path, gt_path, runs_path, runs, monkeypatch)

    lr = {b: gt["best_per_batch"][str(b)]["lr"] for b in (32, 64)}
    cap = caps["gpu"]
    warm, saw = runs[f"warmup|tiny|32x4-cap{cap}|0"], runs[f"seesaw|tiny|32-decay0.5-0.75-cap{cap}|0"]
    if cap == 64:      # 4 steps of 32 (128 examples), then 64 to the crossing
        assert [(p["examples"], p["batch"], p["lr"]) for p in warm["breakpoints"]] == [(0, 32, lr[32]),
                                                                                    (128, 64, lr[64])]
        assert warm["path"] == [[4.0, 32], [pytest.approx(warm["steps"] - 4), 64]]
        # Seesaw from 32 (the cap's quarter is below the start batch): one doubling, where the step decay
        # of the base run at 32 would first halve the rate, at half of that run's examples; SGD: rate x 1
        half = int(0.5 * 32 * gt["best_per_batch"]["32"]["steps"][0])
        assert [(p["examples"], p["batch"], p["lr"]) for p in saw["breakpoints"]] == [(0, 32, lr[32]),
                                                                                   (half, 64, lr[32])]
    else:
        assert warm["path"] == saw["path"] == [[pytest.approx(warm["steps"]), 32]]
    ad = runs["adaptive|tiny|gpu|0"]
    assert sum(seg[0] for seg in ad["path"]) == pytest.approx(ad["steps"]) and any(len(seg) == 3 for seg in ad["path"])
    assert {seg[1] for seg in ad["path"]} <= {8, 16, 32, 64}
    ratio = {int(b): v["ratio"] for b, v in runs["_timing"]["tiny"].items()}
    assert {seg[1] for seg in ad["path"] if len(seg) == 3} <= set(ratio)
    fd = runs["find|tiny|gpu|0"]
    assert fd["measuring_path"] == [[fd["measuring"]["steps"], 32]]
    assert fd["path"][0][1] == fd["recommendation"]["batch"]

    # a rerun of one arm, stored apart, replaces that arm's run and no other
    a, b = tmp_path / "all.json", tmp_path / "rerun.json"
    a.write_text(json.dumps(runs))
    b.write_text(json.dumps({"find|tiny|gpu|0": {**fd, "steps": 1.0}}))
    merged = long_judge.read_runs([a, b])
    assert merged.keys() == runs.keys() and merged["find|tiny|gpu|0"]["steps"] == 1.0
    assert merged["adaptive|tiny|gpu|0"] == json.loads(a.read_text())["adaptive|tiny|gpu|0"]

    rc = long_judge.main([], registry={"tiny": tiny_task}, store_path=gt_path, out_dir=tmp_path,
                         profiles=tmp_path / "p", arms=A.stored_arms(runs, {"tiny": gt}, b0=32, steps0=4))
    assert rc == 0
    doc = json.loads((tmp_path / "suite_long.json").read_text())
    g = doc["tasks"][0]["clocks"]["gpu"]["arms"]
    assert g["warmup"]["seconds"] == pytest.approx(gpu_seconds(warm["path"]), rel=1e-9)
    assert g["seesaw"]["seconds"] == pytest.approx(gpu_seconds(saw["path"]), rel=1e-9)
    # a measured step on the GPU-shaped clock: two passes of B/2, each paying the fixed 4 ms
    two_passes = lambda b: 2 * (0.004 + b / 2 * 0.004 / 1024) / (0.004 + b * 0.004 / 1024)  # noqa: E731
    adaptive_path = [(x[0], x[1], two_passes(x[1])) if len(x) == 3 else x for x in ad["path"]]
    assert g["adaptive"]["seconds"] == pytest.approx(gpu_seconds(adaptive_path), rel=1e-9)
    m = fd["measuring"]["steps"]   # the measuring run: m steps at 32 in 8 passes of 4, 4 ms + 4 x 3.906 us each
    assert fd["measuring"]["micro_batch"] == 4
    assert g["find (incl. measuring)"]["seconds"] - g["find"]["seconds"] == pytest.approx(m * 8 * 0.004015625,
                                                                                          rel=1e-9)
    d = doc["tasks"][0]["clocks"]["dp8"]["arms"]      # across 8 devices a measured step is a plain one
    assert d["find (incl. measuring)"]["seconds"] - d["find"]["seconds"] == pytest.approx(
        m * clocks.data_parallel(long_judge.gradient_bytes(tiny_task().make_model())).step_seconds(32), rel=1e-9)
    summ = doc["summary"]["gpu"]
    best = doc["tasks"][0]["clocks"]["gpu"]["best"]
    assert summ["find_measuring"][0]["share_of_best_examples"] == pytest.approx(fd["measuring"]["examples"]
                                                                                / best["examples"])
    assert summ["adaptive_ahead"]["seesaw"] == {"ahead": int(g["adaptive"]["seconds"] < g["seesaw"]["seconds"]),
                                                "of": 1}
    assert summ["warmup"]["median"] == pytest.approx(g["warmup"]["seconds"] / best["seconds"])
    cpu = doc["summary"]["cpu"]        # no run under this machine's clock: '-', not a crash
    assert doc["tasks"][0]["clocks"]["cpu"]["arms"]["adaptive"]["ratio"] is None and cpu["adaptive"]["tasks"] == 0
    assert "- adaptive / best fixed: not run" in (tmp_path / "suite_long.md").read_text()


def test_long_anchors_command_refuses_an_unknown_arm_and_reports_progress(tmp_path, capsys):
    import long_anchors as A

    store = tmp_path / "runs.json"
    assert A.main(["--arms", "warmup,bogus", "--store", str(store)], gt_path=tmp_path / "none.json") == 2
    assert capsys.readouterr().err.count("error:") == 1
    store.write_text(json.dumps({"warmup|t|32x500-cap64|0": {"task": "t", "arm": "warmup", "variant": "32x500-cap64",
                                                             "seed": 0, "reached": True, "steps": 812.4,
                                                             "train_seconds": 60.0}}))
    assert A.main(["--progress", "--store", str(store)]) == 0
    assert capsys.readouterr().out.strip() == ("t warmup: 1 runs (32x500-cap64/s0 812; x = not reached), "
                                               "1.0 min training")


def test_anchor_paths_by_hand():
    import long_anchors as A

    # 32 for 500 steps (16,000 examples), then x2 each time the examples double, up to the cap
    assert A.doubling_points(32, 500, 1024) == [16_000, 32_000, 64_000, 128_000, 256_000]
    assert A.doubling_points(32, 500, 32) == []
    # runs of one batch, measured steps apart, the crossing's step counted in part (4.5: half of the fifth)
    assert A.segments([32, 32, 32, 64, 64, 64], 4.5, [1, 0, 1, 0, 0, 1]) == [[1.0, 32], [2.0, 32, 1], [1.5, 64]]
    assert A.segments([32, 64, 64], 3.0) == [[1.0, 32], [2.0, 64]]
    assert A.segments([32], None) is None


def find_cost_on_the_tiny_task(tmp_path, gt_path, runs_path, runs, monkeypatch):
    """long_find_cost on the tiny task: find as the anchors' find arm runs it, its cost against the best fixed
    run, the recommendation the same as the anchors' stored one (same seed), and resumed without finding again."""
    import long_anchors as A
    import long_find_cost as F

    store = tmp_path / "cost.json"
    argv = ["--clocks", "gpu,dp8", "--seeds", "0", "--store", str(store)]
    kw = dict(registry={"tiny": tiny_task}, gt_path=gt_path, checked_path=runs_path, out_dir=tmp_path,
              profiles=tmp_path / "p", max_batch=64)      # the anchors' Setting above
    assert F.main(argv, **kw) == 0
    doc = json.loads((tmp_path / "suite_long_find_cost.json").read_text())
    gt = json.loads(gt_path.read_text())["tiny"]
    gpu = {b: gt["best_per_batch"][str(b)]["steps"][0] * (0.004 + b * 0.004 / 1024) for b in (32, 64)}
    best = min(gpu, key=gpu.get)
    stored = json.loads(store.read_text())
    for row in doc["cases"]:
        rec, anchor = stored[f"tiny|{row['clock']}|0"], runs[f"find|tiny|{row['clock']}|0"]
        assert row["determinism"]["verdict"] == "same" and rec["recommendation"] == anchor["recommendation"]
        x = row["examples"]
        assert x == {"measuring": anchor["measuring"]["examples"], "timed": anchor["timed_steps"]["examples"],
                     "branches": anchor["verification"]["examples"], "probe": 512}
        if row["clock"] == "gpu":
            assert row["best"]["batch"] == best
            assert row["best"]["examples"] == pytest.approx(best * gt["best_per_batch"][str(best)]["steps"][0])
        assert row["share"] == pytest.approx(sum(x.values()) / row["best"]["examples"], rel=1e-12)
        assert row["eligible"] == (row["best"]["steps"] > 1000)
    md = (tmp_path / "suite_long_find_cost.md").read_text()
    assert "| tiny | gpu | 0 |" in md and ("Eligible cases" in md or "No eligible case" in md)

    def refuse(*a, **k):
        raise AssertionError("found again")
    monkeypatch.setattr(A, "find", refuse)
    assert F.main(argv, **kw) == 0 and json.loads(store.read_text()) == stored


def test_find_cost_share_by_hand():
    import long_find_cost as F

    # batch 32: 1,100 steps; batch 64: 1,200. GPU-shaped clock: 1,100 x (4 + 0.125) ms = 4.5375 s at 32,
    # 1,200 x 4.25 ms = 5.1 s at 64: the best fixed run is 32's, 35,200 examples, over 1,000 steps
    entry = {"best_per_batch": {"32": {"lr": 0.1, "steps": [1100.0, 1100.0]},
                                "64": {"lr": 0.2, "steps": [1200.0, 1200.0]}}}
    best = F.best_fixed_run(entry, clocks.gpu_shaped())
    assert best["batch"] == 32 and best["steps"] == pytest.approx(1100) and best["examples"] == pytest.approx(35_200)
    assert best["seconds"] == pytest.approx(4.5375)
    rec = {"find_seconds": 1.0, "recommendation": {"batch": 64, "lr": 0.2, "warmup": 3, "micro_batch": 64,
                                                   "b_crit": 50.0, "b_crit_low": 20.0, "b_crit_high": 90.0,
                                                   "predicted_steps": 1100.0},
           "measuring": {"steps": 50, "examples": 1600, "seconds": 0.5},
           "timed_steps": {"steps": 18, "examples": 576, "seconds": 0.1},
           # three branches of 256 examples, the largest at 64: 8 steps of it, the floor (MIN_BRANCH_STEPS)
           "verification": {"branches": 3, "steps": 24, "examples": 768, "seconds": 0.2, "examples_per_branch": 512,
                            "batches": [32, 16, 64]},
           "stability": {"examples": 512, "iterations": 20}}
    row = F.case("t", "gpu", 0, rec, best, {"recommendation": dict(rec["recommendation"]), "measuring": {"steps": 50}})
    # (1,600 + 576 + 768 + 512) / 35,200 = 3,456 / 35,200 = 9.818%; measuring + branches: 2,368 / 35,200
    assert row["total"] == 3456 and row["share"] == pytest.approx(3456 / 35_200, rel=1e-12)
    assert row["share_measuring_branches"] == pytest.approx(2368 / 35_200, rel=1e-12)
    assert row["shares"]["branches"] == pytest.approx(768 / 35_200, rel=1e-12)
    assert row["eligible"] and row["within"] and row["dominant"] == "measuring" and row["branch_rule"] == "min steps"
    assert row["determinism"]["verdict"] == "same"
    assert row["predicted_over_best"] == pytest.approx(2.0)     # 1,100 steps of 64 predicted: twice 35,200
    # 1,000 more examples of branches: 4,456 / 35,200 = 12.7%, not within 10%; the rule that set their length
    more = {**rec, "verification": {**rec["verification"], "examples": 1768, "examples_per_branch": 600}}
    other = {"recommendation": {**rec["recommendation"], "lr": 0.1}, "measuring": {"steps": 51}}
    row = F.case("t", "gpu", 0, more, best, other)
    assert row["share"] == pytest.approx(4456 / 35_200) and not row["within"] and row["dominant"] == "branches"
    assert row["branch_rule"] == "share"
    assert row["determinism"] == {"verdict": "differs", "differs": ["lr", "measuring steps"],
                                  "stored": {"batch": 64, "lr": 0.1, "warmup": 3}}
    assert F.case("t", "gpu", 0, rec, best, None)["determinism"]["verdict"] == "no stored run"
    s = F.summary([row, F.case("t", "gpu", 1, rec, best, None),
                   F.case("t", "cpu", 0, rec, {**best, "steps": 900.0}, None)])
    assert s["eligible"]["measured"] == 2 and s["eligible"]["within"] == 1 and s["all"]["cases"] == 3
    assert s["eligible"]["median"] == pytest.approx((4456 + 3456) / 2 / 35_200) and s["eligible"]["worst"] == \
        pytest.approx(4456 / 35_200)
    assert "1 of 2 within 10%" in F.summary_line(s)
