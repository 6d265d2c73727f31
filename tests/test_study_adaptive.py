"""The adaptive arm of a study: its runs in the plan, stored and resumed, set against the best fixed batch."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchscope.cli import cli
from batchscope.errors import ConfigError
from batchscope.study.adaptive_vs_fixed import adaptive_vs_fixed, modelled_seconds, step_time_at
from batchscope.study.plan import RunSpec, StudyPlan
from batchscope.study.runner import RunRecord, load_study
from batchscope.tasks import load_task

TASK = f"{Path(__file__).parent / 'study_tasks.py'}:blobs"


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_plan_adds_one_adaptive_run_per_optimizer_and_seed():
    task = load_task(TASK)
    plan = StudyPlan(task=TASK, batch_sizes=(8, 32), optimizers=("sgd", "adam"), lr_rules=("none", "linear"),
                     seeds=(0, 1), budget="steps", steps=20, lrs={"sgd": 0.05}, adaptive=True).resolved(task)
    specs = plan.expand(task)
    adaptive = [s for s in specs if s.adaptive]
    assert len(specs) == 2 * 2 * 2 * 2 + 2 * 2
    assert len({s.key for s in specs}) == len(specs)
    assert {(s.optimizer, s.seed) for s in adaptive} == {("sgd", 0), ("sgd", 1), ("adam", 0), ("adam", 1)}
    sgd0 = next(s for s in adaptive if s.optimizer == "sgd" and s.seed == 0)
    # starts at the smallest batch with the base rate, same step budget, no warm-up
    assert (sgd0.batch_size, sgd0.lr, sgd0.steps, sgd0.epochs, sgd0.warmup_steps) == (8, 0.05, 20, None, 0)
    assert sgd0.key == "adaptive-B8-sgd-s0"
    assert RunSpec.from_dict(sgd0.to_dict()) == sgd0
    assert not any(s.adaptive for s in StudyPlan(task=TASK, batch_sizes=(8, 32)).expand(task))
    with pytest.raises(ConfigError, match="batch sizes of 2 or more with --adaptive"):
        StudyPlan(task=TASK, batch_sizes=(1, 32), adaptive=True).expand(task)


def test_step_time_is_interpolated_and_summed_over_the_batch_path():
    times = {8: 0.01, 32: 0.02}
    assert step_time_at(times, 16) == pytest.approx(0.01 + 8 / 24 * 0.01)
    assert step_time_at(times, 56) == pytest.approx(0.03)        # along the last segment
    # 10 steps at B=8, then 2.5 of the steps at B=32
    assert modelled_seconds([[8, 10], [32, 20]], 12.5, times) == pytest.approx(10 * 0.01 + 2.5 * 0.02)


def rec(b, target_step, per_step, *, seed=0, adaptive=False, batch_runs=None, metric=0.9, wall=1.0):
    spec = RunSpec(batch_size=b, optimizer="sgd", lr_rule="adaptive" if adaptive else "none", lr_multiplier=1.0,
                   warmup_epochs=0.0, seed=seed, lr=0.1, warmup_steps=0, steps=100, adaptive=adaptive)
    # evaluations every 10 steps; the first interval is slow (warm-up) and must not count
    curve = [{"step": k, "seconds": (0.5 if k else 0.0) + k * per_step} for k in range(0, 101, 10)]
    target_examples = None if target_step is None else target_step * b
    return RunRecord(key=spec.key, spec=spec, status="ok", steps=100, examples=100 * b, seconds=100 * per_step + 0.5,
                     initial_loss=1.0, curve=curve, step_losses=[], final={"val_metric": metric}, distance={},
                     cosine={}, target_step=target_step, target_examples=target_examples,
                     target_seconds=None if target_step is None else target_step * per_step, wall_seconds=wall,
                     adaptive={"batch_runs": batch_runs or [], "final_batch": (batch_runs or [[b]])[-1][0]})


def test_adaptive_against_the_best_fixed_batch_known_answer():
    fixed = [rec(8, 40, 0.01, seed=s) for s in (0, 1)] + [rec(32, 15, 0.02, seed=s) for s in (0, 1)]
    # fixed: B=8 needs 40 x 0.01 = 0.4 s, B=32 15 x 0.02 = 0.3 s -> best is B=32
    # adaptive: 10 steps at B=8, then B=16 (t = 0.01333): to step 16 -> 0.1 + 6 x 0.01333 = 0.18 s
    adaptive = [rec(8, 16, 0.012, seed=s, adaptive=True, batch_runs=[[8, 10], [16, 90]], metric=0.95)
                for s in (0, 1)]
    for r in adaptive:
        r.target_examples = 10 * 8 + 6 * 16
    (c,) = adaptive_vs_fixed(fixed + adaptive)
    assert c["fixed"]["batch_size"] == 32 and c["fixed"]["time"] == pytest.approx(0.3)
    assert c["adaptive"]["time"] == pytest.approx(0.18)
    assert c["ratio"] == pytest.approx(0.6) and c["verdict"] == "faster"
    assert c["adaptive"]["examples"] == 176 and c["fixed"]["examples"] == 15 * 32
    assert c["adaptive"]["final_metric"] == pytest.approx(0.95) and c["final_batches"] == [16, 16]
    assert "0.6x, faster" in c["summary"].replace("0.60x", "0.6x")
    # an adaptive run that misses the target: said, no ratio
    missed = [rec(8, None, 0.01, adaptive=True, batch_runs=[[8, 100]])]
    (c,) = adaptive_vs_fixed(fixed + missed)
    assert c["ratio"] is None and "reached the target in 0 of 1 seed(s)" in c["summary"]
    (c,) = adaptive_vs_fixed([rec(8, None, 0.01)] + adaptive)
    assert c["ratio"] is None and "no fixed batch reached the target" in c["summary"]
    assert adaptive_vs_fixed(fixed) == []


def test_a_study_with_adaptive_runs_stores_resumes_and_reports(tmp_path):
    d = tmp_path / "s"
    r = run("study", "--task", TASK, "--dir", str(d), "--batch-sizes", "8,32", "--steps", "40", "--optimizers", "sgd",
            "--lr", "0.05", "--lr-rules", "none", "--seeds", "0,1", "--adaptive", "--grad-norm-batches", "0",
            "--noise-steps", "0", "--evals", "8", "--target", "0.85", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["summary"]["ran"] == 2 * 2 + 2
    study = load_study(d)
    assert study.plan.profile is not None and study.plan.profile["task"] == "blobs"   # measured once, stored
    ad = [x for x in study.records if x.spec.adaptive]
    assert sorted(x.key for x in ad) == ["adaptive-B8-sgd-s0", "adaptive-B8-sgd-s1"]
    for x in ad:
        runs = x.adaptive["batch_runs"]
        assert sum(n for _, n in runs) == x.steps == 40 and x.examples == sum(b * n for b, n in runs)
        assert x.adaptive["final_batch"] == runs[-1][0] and 8 <= x.adaptive["final_batch"] <= 32
        assert x.adaptive["path"] and {"step", "batch_size", "accumulation", "lr"} <= set(x.adaptive["path"][0])
    r = run("study", "--resume", str(d), "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)["summary"]
    assert (summary["ran"], summary["done_before"]) == (0, 6)
    report = (d / "report.md").read_text()
    assert "## Adaptive batch size against the best fixed batch" in report
    assert "adaptive-B8-sgd-s1" in report
    findings = json.loads((d / "findings.json").read_text())
    assert findings["adaptive"][0]["optimizer"] == "sgd"


@pytest.mark.parametrize("args, msg", [
    (["--profile", "p.json"], "error: --profile is the hardware profile of the adaptive runs; add --adaptive"),
    (["--adaptive", "--profile", "missing.json"], "error: hardware profile 'missing.json' does not exist"),
    (["--adaptive", "--batch-sizes", "1,8"], "error: the adaptive runs start at the smallest batch size, 1"),
])
def test_bad_adaptive_input_is_one_line(tmp_path, args, msg):
    d = tmp_path / "s"
    r = run("study", "--task", TASK, "--dir", str(d), "--steps", "5", *args)
    assert r.exit_code == 2, r.output
    assert msg in r.output and "Traceback" not in r.output
    assert not (d / "study.db").exists()
