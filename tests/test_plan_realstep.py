"""Real step time: the overhead of a run's own steps over the profile's grid, added to the step-time model
find plans with; and the measuring run kept, so a run continues from it at the recommendation."""

import json
import time

import pytest
import torch
from click.testing import CliRunner

from batchscope.cli import cli
from batchscope.data import IndexStream
from batchscope.errors import ConfigError
from batchscope.hardware import StepTimeModel, cpu_facts
from batchscope.hardware.realstep import TimedSteps, fit_overhead, same_device
from batchscope.plan.devices import DataParallelStep
from batchscope.plan.find import FindResult, checkpoint_path, find
from batchscope.tasks import load_task
from batchscope.train import Callback, TrainConfig, load_checkpoint, start_run
from batchscope.train.schedule import total_steps
from tests.helpers import blobs_task, fake_profile


class Sleep(Callback):
    """A per-step cost the grid of bare passes cannot see (a slow logger, say): 5 ms after every step."""

    def on_step_end(self, ctx, loss):
        time.sleep(0.005)


def here_profile(task, **kw):
    """A profile with chosen numbers that says it was measured on this machine's CPU."""
    p = fake_profile(task, **kw)
    p.device = cpu_facts()
    return p


def test_overhead_is_the_median_real_step_over_the_grid_after_warm_up():
    # binary fractions: every figure below is exact; the two warm-up steps are far slower and left out
    times = [9.0, 7.0, 0.75, 0.625, 0.875, 0.75, 0.75, 1.5]
    o = fit_overhead(times, predicted=0.25)
    assert (o.measured, o.overhead, o.steps, o.warmup) == (0.75, 0.5, 6, 2)
    # sorted 0.625 0.75 0.75 0.75 0.875 1.5: quartiles at positions 1.25 and 3.75, 0.75 and 0.84375
    assert o.spread == 0.84375 - 0.75
    assert fit_overhead(times, predicted=2.0).overhead == 0.0     # a grid slower than the steps adds nothing
    assert fit_overhead([1.0, 0.5, float("nan"), 0.5], 0.25, warmup=1).steps == 2
    # bare steps timed beside the real ones: the median paired difference (0.5, 0.625, 0.5 after the
    # warm-up), whatever the grid said (2 s: profiled while the machine was busier)
    paired = fit_overhead([9.0, 1.0, 1.0, 1.125, 1.25], 2.0, bare=[9.0, 0.5, 0.5, 0.5, 0.75])
    assert (paired.overhead, paired.bare, paired.measured, paired.predicted) == (0.5, 0.5, 1.125, 2.0)
    # timed around them instead (before and after): the difference of the medians, warm-up left out
    around = fit_overhead([9.0, 1.0, 1.0, 1.125, 1.25], 2.0, bare=[9.0, 9.0, 0.5, 0.75, 0.625, 0.5], paired=False)
    assert (around.overhead, around.bare) == (1.125 - 0.5625, 0.5625)
    with pytest.raises(ValueError, match="no real step to time"):
        fit_overhead([1.0, 2.0], 0.25)


def test_the_overhead_is_paid_once_per_step_whatever_the_layout():
    grid = StepTimeModel(1e-3, 1e-5)
    real = grid.with_overhead(2e-3)
    assert real.seconds(64) == pytest.approx(grid.seconds(64) + 2e-3)
    assert real.seconds(64, 4) == pytest.approx(4 * grid.seconds(64) + 2e-3)     # not per pass
    assert real.pass_seconds(64) == grid.seconds(64)
    assert DataParallelStep(real)(256).seconds == pytest.approx(grid.seconds(256) + 2e-3)
    assert DataParallelStep(real, ceiling=64)(256).seconds == pytest.approx(4 * grid.seconds(64) + 2e-3)
    with pytest.raises(ConfigError, match="'overhead' parameter of StepTimeModel"):
        StepTimeModel(1e-3, 1e-5, overhead=-1.0)


def test_an_overhead_is_added_only_to_a_profile_of_this_device():
    here = {"type": "cpu", "name": "Xeon 1"}
    assert same_device({"type": "cpu", "name": "Xeon 1", "load_average": 3.0}, here)[0]
    assert not same_device({"type": "cpu", "name": "Xeon 2"}, here)[0]
    assert not same_device({"type": "cuda", "name": "Xeon 1"}, here)[0]
    assert "does not name its device" in same_device({"type": "cpu"}, here)[1]


def test_find_adds_the_real_steps_cost_and_recommends_a_larger_batch_for_it():
    task = blobs_task()
    plain = find(task, profile=here_profile(task, alpha=2e-5, beta=1e-6))
    slow = find(task, profile=here_profile(task, alpha=2e-5, beta=1e-6), callbacks=[Sleep()])
    for r in (plain, slow):
        st = r.step_time
        assert (st["batch_size"], st["micro_batch"], st["accumulation"]) == (32, 32, 1) and st["added"]
        model = StepTimeModel.from_profile(r.profile).with_overhead(st["added_seconds"])
        # the step-time model recommended with predicts the measured step at the timed layout (one pass),
        # as closely as the profile (numbers chosen here) predicts a bare step on this machine
        assert model.seconds(32) == pytest.approx(st["measured_seconds"], abs=1e-3 + abs(
            st["bare_seconds"] - st["predicted_seconds"]))
        assert model.seconds(32) == pytest.approx(st["measured_seconds"] - st["bare_seconds"] + st["predicted_seconds"],
                                                  abs=st["spread_seconds"] + 1e-4)
        assert r.recommendation.evidence["step_overhead"] == st["added_seconds"]
    # the sleep is in every timed step: at least its 5 ms over what the plain run's steps cost
    assert slow.step_time["overhead_seconds"] - plain.step_time["overhead_seconds"] > 0.0045
    assert slow.step_time["monitored_seconds"] > 0.005
    assert slow.recommendation.batch_size > plain.recommendation.batch_size


def test_a_profile_of_another_device_gets_no_overhead_unless_one_is_stated():
    task = blobs_task()
    r = find(task, profile=fake_profile(task, alpha=2e-5, beta=1e-6), callbacks=[Sleep()])
    assert r.step_time["overhead_seconds"] > 0.0045 and not r.step_time["added"]
    assert r.step_time["added_seconds"] == 0.0 and "not added" in r.step_time["line"]
    stated = find(task, profile=fake_profile(task, alpha=2e-5, beta=1e-6), step_overhead=0.01)
    assert stated.step_time["added"] and stated.recommendation.evidence["step_overhead"] == 0.01
    assert stated.recommendation.batch_size > r.recommendation.batch_size


def test_find_fits_the_steps_of_your_own_loop_when_given_them():
    task = blobs_task()
    grid = StepTimeModel.from_profile(here_profile(task, alpha=2e-5, beta=1e-6))
    timed = TimedSteps(16, 2, (1.0, 1.0) + (grid.seconds(16, 2) + 0.004,) * 5, "a framework's steps")
    r = find(task, profile=here_profile(task, alpha=2e-5, beta=1e-6), timed_steps=timed)
    st = r.step_time
    assert (st["micro_batch"], st["accumulation"], st["source"]) == (16, 2, "a framework's steps")
    assert st["added_seconds"] == pytest.approx(0.004) and st["steps"] == 5
    with pytest.raises(ConfigError, match="The 'timed_steps' parameter of find must be a"):
        find(task, profile=here_profile(task), timed_steps=[0.1, 0.2, 0.3])


def test_a_stream_continued_at_another_batch_goes_on_from_the_example_it_stopped_at():
    a = IndexStream(100, 16, seed=3)
    first = [a.next() for _ in range(3)]
    b = IndexStream(100, 32, seed=0)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.next(), a.perm[48:80]) and not any(torch.isin(a.perm[48:80], f).any() for f in first)
    second = b.next()                                    # 80 + 32 > 100: the next epoch's permutation
    assert not torch.equal(b.perm, a.perm) and torch.equal(second, b.perm[:32])
    assert (b.position, b.offset) == (32, 0)


def test_a_continued_budget_counts_the_whole_run():
    task = load_task("dots")                             # 4,000 examples: 31 steps of 128 per epoch
    assert total_steps(task, TrainConfig(batch_size=128, epochs=2), 128) == 62
    assert total_steps(task, TrainConfig(batch_size=128, epochs=2), 128, step=49, examples=1568) == 49 + 50
    assert total_steps(task, TrainConfig(batch_size=128, steps=300), 128, step=49, examples=1568) == 300


def test_find_out_then_train_from_find_continues_the_measuring_run(tmp_path):
    task = load_task("dots")
    prof = tmp_path / "dots.json"
    here_profile(task, alpha=1e-4, beta=1e-6).save(prof)
    out = tmp_path / "found.json"
    r = CliRunner().invoke(cli, ["find", "--task", "dots", "--profile", str(prof), "--out", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    saved, cost = doc["checkpoint"], doc["measuring"]["cost"]
    assert saved["path"] == "found.ckpt" and checkpoint_path(out).is_file()
    assert (saved["step"], saved["examples"]) == (cost["steps"], cost["examples"])
    assert cost["steps"] == doc["measuring"]["steps"] + doc["measuring"]["timed_steps"]["steps"]
    assert "step time at B=32: grid" in " ".join(r.output.split()) and "--from-find" in r.output
    state = load_checkpoint(str(checkpoint_path(out)), task)

    # the continued run starts from the saved weights, at the recommendation, its counters going on
    cfg = TrainConfig(batch_size=doc["batch_size"], lr=doc["lr"], warmup_steps=doc["warmup_steps"], steps=120,
                      resume=str(checkpoint_path(out)))
    live = start_run(task, cfg)
    assert all(torch.equal(v, state["model"][k]) for k, v in live.ctx.model.state_dict().items())
    assert (live.ctx.step, live.ctx.examples) == (saved["step"], saved["examples"])

    cont = tmp_path / "cont.json"
    r = CliRunner().invoke(cli, ["train", "--from-find", str(out), "--steps", "120", "--out", str(cont)])
    assert r.exit_code == 0, r.output
    run = json.loads(cont.read_text())
    assert run["config"]["batch_size"] == doc["batch_size"] and run["config"]["lr"] == pytest.approx(doc["lr"])
    assert run["config"]["continued"] == {"batch_size": 32, "lr": doc["measuring"]["lr"], "step": saved["step"],
                                          "examples": saved["examples"]}
    hist = run["history"]
    before = [p for p in hist if p["step"] <= saved["step"]]
    after = [p for p in hist if p["step"] > saved["step"]]
    assert before == doc["measuring"]["history"]       # the measuring run's evaluations are the run's first
    assert after[0]["step"] == saved["step"] + 1
    assert after[0]["examples"] == saved["examples"] + doc["batch_size"]
    # the loss goes on from where the measuring run left it, not from the untrained model's
    assert after[0]["eval_loss"] < 0.8 * hist[0]["eval_loss"]
    assert after[0]["eval_loss"] < 1.25 * before[-1]["eval_loss"]
    assert run["steps"] == 120


def test_from_find_refuses_what_it_sets_and_a_result_without_a_state(tmp_path):
    task = blobs_task()
    result = find(task, profile=here_profile(task))
    path = tmp_path / "r.json"
    result.save(path)
    assert json.loads(path.read_text())["checkpoint"]["path"] == "r.ckpt" and (tmp_path / "r.ckpt").is_file()
    r = CliRunner().invoke(cli, ["train", "--from-find", str(path), "--batch-size", "64"])
    assert r.exit_code == 2 and "--from-find sets the batch" in r.output and "--batch-size" in r.output
    (tmp_path / "sub").mkdir()
    FindResult.load(path).save(tmp_path / "sub" / "again.json")   # loaded: it names the state where it lies
    assert json.loads((tmp_path / "sub" / "again.json").read_text())["checkpoint"]["path"] == "../r.ckpt"
    doc = json.loads(path.read_text())
    del doc["checkpoint"]
    (tmp_path / "old.json").write_text(json.dumps(doc))
    r = CliRunner().invoke(cli, ["train", "--from-find", str(tmp_path / "old.json")])
    assert r.exit_code == 2 and "holds no measuring-run state" in r.output
