import pytest

from batchscope.study.findings import (HELD, INCONCLUSIVE, MIXED, NOT_HELD, NOT_TESTED, analyse, finding_adam_vs_sgd,
                                       finding_distance, finding_large_batch_accuracy, finding_lr_scaling,
                                       finding_warmup, sign_test, spearman, steps_to_target)
from batchscope.study.plan import RunSpec, StudyPlan
from batchscope.study.runner import RunRecord

SIZES = (32, 128, 512)


def rec(b, acc, dist=1.0, opt="sgd", rule="none", warmup=0.0, seed=0, mult=1.0, status="ok", peak=1.0,
        target_step=None):
    spec = RunSpec(batch_size=b, optimizer=opt, lr_rule=rule, lr_multiplier=mult, warmup_epochs=warmup, seed=seed,
                   lr=0.1, warmup_steps=0, epochs=5.0)
    return RunRecord(key=spec.key, spec=spec, status=status, steps=10, examples=10 * b, seconds=1.0, initial_loss=2.0,
                     curve=[], step_losses=[2.0, 2.0 * peak, 1.0], final={"val_metric": acc, "train_metric": acc,
                                                                        "gap": 0.0},
                     distance={"total": dist}, cosine={}, target_step=target_step)


def plan(**kw):
    return StudyPlan(task="t", batch_sizes=SIZES, **{"optimizers": ("sgd",), "lr_rules": ("none",), **kw})


def test_spearman():
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_large_batches_lower_accuracy_follows_the_data():
    falling = [rec(32, 0.9, seed=s) for s in (0, 1)] + [rec(128, 0.85, seed=s) for s in (0, 1)] + \
              [rec(512, 0.7 + 0.01 * s, seed=s) for s in (0, 1)]
    f = finding_large_batch_accuracy(plan(seeds=(0, 1)), falling)
    assert f.verdict == HELD and f.numbers["sgd"]["drop"] == pytest.approx(0.195)
    assert "90.0% at B=32 vs 70.5% at B=512" in f.summary
    flat = [rec(b, 0.9) for b in SIZES]
    assert finding_large_batch_accuracy(plan(), flat).verdict == NOT_HELD
    # a drop inside the seed-to-seed noise does not count
    noisy = [rec(32, a, seed=s) for s, a in enumerate((0.9, 0.7))] + \
            [rec(512, a, seed=s) for s, a in enumerate((0.85, 0.65))] + [rec(128, 0.8)]
    assert finding_large_batch_accuracy(plan(seeds=(0, 1)), noisy).verdict == NOT_HELD
    assert finding_large_batch_accuracy(plan(budget="steps", steps=10), flat).verdict == NOT_TESTED


def test_lr_scaling_closing_the_gap():
    base = [rec(32, 0.9), rec(128, 0.8), rec(512, 0.6)]
    scaled = [rec(32, 0.9, rule="linear"), rec(128, 0.88, rule="linear"), rec(512, 0.8, rule="linear")]
    f = finding_lr_scaling(plan(lr_rules=("none", "linear")), base + scaled)
    # gap without scaling: mean(0.1, 0.3) = 0.2; with: mean(0.02, 0.1) = 0.06; closes 70 %
    assert f.verdict == HELD and f.numbers["sgd/linear/w0"]["closed"] == pytest.approx(0.7)
    worse = [rec(32, 0.9, rule="linear"), rec(128, 0.7, rule="linear"),
             rec(512, 0.5, rule="linear", status="diverged")]
    f = finding_lr_scaling(plan(lr_rules=("none", "linear")), base + worse)
    assert f.verdict == NOT_HELD and f.numbers["sgd/linear/w0"]["gap_rule"] == pytest.approx((0.2 + 0.9) / 2)
    assert finding_lr_scaling(plan(), base).verdict == NOT_TESTED


def test_distance_and_optimizers():
    runs = [rec(b, 0.9, dist=d) for b, d in zip(SIZES, (9.0, 5.0, 2.0))]
    assert finding_distance(plan(), runs).verdict == HELD
    assert finding_distance(plan(), [rec(b, 0.9, dist=d) for b, d in zip(SIZES, (2.0, 5.0, 9.0))]).verdict == NOT_HELD
    adam = [rec(b, 0.9, dist=d, opt="adam") for b, d in zip(SIZES, (20.0, 10.0, 1.0))]
    f = finding_adam_vs_sgd(plan(optimizers=("sgd", "adam")), runs + adam)
    assert f.verdict == MIXED and f.numbers["farther"] == [32, 128] and f.numbers["nearer"] == [512]
    assert finding_adam_vs_sgd(plan(), runs).verdict == NOT_TESTED


def test_sign_test():
    assert sign_test(3, 0) == pytest.approx(1 / 8)
    assert sign_test(4, 1) == pytest.approx(6 / 32)
    assert sign_test(0, 0) == 1.0


def test_warmup_steadies_only_when_there_was_something_to_steady():
    p = plan(lr_rules=("linear",), warmup_epochs=(0, 2), seeds=(0, 1))
    calm = [rec(b, 0.85, rule="linear", warmup=2.0, seed=s) for b in (128, 512) for s in (0, 1)]
    spiky = [rec(b, 0.8, rule="linear", peak=3.0, seed=s) for b in (128, 512) for s in (0, 1)]
    f = finding_warmup(p, spiky + calm)
    assert f.verdict == HELD and (f.numbers["unsteady_without"], f.numbers["unsteady_with"]) == (4, 0)
    assert f.numbers["p_value"] == pytest.approx(1 / 16)
    one = spiky[:1] + [rec(b, 0.8, rule="linear", seed=s) for b, s in ((128, 1), (512, 0), (512, 1))]
    assert finding_warmup(p, one + calm).verdict == INCONCLUSIVE     # one win is not evidence
    diverged = [rec(b, None, rule="linear", status="diverged", seed=s) for b in (128, 512) for s in (0, 1)]
    assert finding_warmup(p, diverged + calm).verdict == HELD
    steady = [rec(b, 0.8, rule="linear", seed=s) for b in (128, 512) for s in (0, 1)]
    f = finding_warmup(p, steady + calm)
    assert f.verdict == NOT_HELD and "nothing to steady" in f.summary
    worse = [rec(b, 0.8, rule="linear", warmup=2.0, peak=2.0, seed=s) for b in (128, 512) for s in (0, 1)]
    assert finding_warmup(p, steady + worse).verdict == NOT_HELD
    assert finding_warmup(plan(), steady).verdict == NOT_TESTED


def test_steps_to_target_takes_the_best_arm_that_every_seed_finished():
    runs = [rec(32, 0.9, target_step=100, seed=0), rec(32, 0.9, target_step=120, seed=1),
            rec(32, 0.9, rule="linear", target_step=50, seed=0), rec(32, 0.9, rule="linear", seed=1),  # one missed
            rec(128, 0.9, rule="linear", target_step=40, seed=0), rec(128, 0.9, rule="linear", target_step=30, seed=1)]
    best = steps_to_target(runs, "sgd")
    assert best[32]["steps"] == 110 and best[32]["rule"] == "none"
    assert best[128] == pytest.approx({"steps": 35, "examples": 35 * 128, "lr": 0.1, "rule": "linear",
                                       "multiplier": 1.0, "warmup_epochs": 0.0, "seeds": 2})


def test_analyse_fits_bcrit_from_the_runs():
    runs = [rec(b, 0.9, target_step=200 * (1 + 100 / b)) for b in (16, 32, 64, 128, 256, 512)]
    out = analyse(StudyPlan(task="t", batch_sizes=(16, 32, 64, 128, 256, 512), optimizers=("sgd",),
                            lr_rules=("none",)), runs)
    fit = out.bcrit["sgd"]["fit"]
    assert fit["b_crit"] == pytest.approx(100, rel=1e-3) and fit["s_min"] == pytest.approx(200, rel=1e-3)
    assert [f.name for f in out.findings] == ["large_batches_lower_accuracy", "lr_scaling_closes_gap",
                                              "small_batches_travel_farther", "adam_travels_farther",
                                              "warmup_steadies_large_batches"]
    few = analyse(plan(), [rec(32, 0.9, target_step=10), rec(128, 0.9)])
    assert few.bcrit["sgd"]["fit"] is None and "reached at 1 batch size(s); the fit needs 3" in few.bcrit["sgd"]["note"]
