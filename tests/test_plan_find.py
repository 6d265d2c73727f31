import pytest
import torch

from batchscope import Target, Task
from batchscope.errors import ConfigError
from batchscope.plan.find import (EXTEND_STEPS, MIN_STEPS, FindError, check_profile, find, read_target,
                                  target_training_loss)
from batchscope.plan.projection import loss_after
from tests.helpers import blobs_task, fake_profile, linear_task


@pytest.mark.parametrize("limited_by", ["memory", "max_batch"])
def test_find_end_to_end_with_a_given_profile(limited_by):
    task = blobs_task()
    r = find(task, profile=fake_profile(task, alpha=2e-3, beta=2e-5, ceiling=64, limited_by=limited_by),
             objective="fastest")
    rec = r.recommendation
    # what was asked: a layout that multiplies out, inside the memory ceiling, with a rate and evidence
    assert rec.batch_size == rec.micro_batch * rec.accumulation * rec.devices
    # a profile cut short by --max-batch measured nothing above 64: no candidate's micro-batch goes there
    assert max(c["micro_batch"] for c in rec.candidates) <= 64
    assert max(c["batch_size"] for c in rec.candidates) > 64
    assert any(limited_by in c for c in rec.constraints if c.startswith("micro-batch"))
    assert rec.lr > 0 and rec.b_crit["low"] <= rec.b_crit["value"] <= rec.b_crit["high"]
    # closed form: time to target S_min (1 + B_crit/B)(alpha + beta B) is least at B* = sqrt(alpha B_crit / beta);
    # the recommended power of two is the grid point next to it
    b_star = (2e-3 * rec.b_crit["value"] / 2e-5) ** 0.5
    assert rec.batch_size / 2 < b_star < rec.batch_size * 2
    m = r.measuring
    assert m["stopped_because"] == "budget used"
    assert m["examples"] == m["steps"] * 32
    assert m["fraction_of_projected_run"] == pytest.approx(m["examples"] / m["projected_examples_to_target"])
    assert len(r.noise_steps["loss"]) >= 25
    # one B_crit: the growth schedule ends at the recommendation itself (batch and rate), never below it
    last = rec.schedule[-1]
    assert (last["batch_size"], last["lr"], last["b_crit"]) == (rec.batch_size, rec.lr, rec.b_crit["value"])
    assert [s["batch_size"] for s in rec.schedule] == sorted(s["batch_size"] for s in rec.schedule)
    assert rec.robustness["low"]["b_crit"] == rec.b_crit["low"]


def test_find_refuses_a_target_out_of_reach():
    task = linear_task()
    impossible = Task(**{**task.__dict__, "target": Target("loss", 1e-6, "val")})  # noise floor is 0.25
    with pytest.raises(FindError, match="made no progress toward the target"):
        find(impossible, profile=fake_profile(impossible))


def test_find_refuses_a_budget_too_small_to_measure_anything():
    with pytest.raises(FindError, match="less than one step of batch 32: nothing can be measured"):
        find(blobs_task(), profile=fake_profile(blobs_task()), measure_fraction=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(objective="cheap"), "The 'objective' parameter of find must be one of fastest, balanced, cheapest. "
                              "Got 'cheap' instead."),
    (dict(measure_fraction=0.0), r"The 'measure_fraction' parameter of find must be a fraction in \(0, 1\]"),
    (dict(devices=0), "The 'devices' parameter of find must be a positive integer. Got 0 instead."),
    (dict(max_batch=0), "The 'max_batch' parameter of find must be a positive integer. Got 0 instead."),
    (dict(ref_batch=4), r"The 'ref_batch' parameter of find must be at least 8 \(eight micro-batches\) and at most "
                        r"1200 \(a quarter of the training set\). Got 4 instead."),
    (dict(target_epochs=-1.0), "The 'target_epochs' parameter of find must be a positive finite number"),
    (dict(gamma=0.0), "The 'gamma' parameter of find must be a positive finite number"),
])
def test_find_validates_its_parameters(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        find(blobs_task(), profile=fake_profile(blobs_task()), **kwargs)


def test_profile_for_another_task_is_refused_and_for_another_device_accepted():
    task = blobs_task()
    other = Task(**{**task.__dict__, "name": "mnist1d"})
    with pytest.raises(ConfigError, match="the profile was measured for task 'mnist1d'"):
        check_profile(fake_profile(other), task)
    with pytest.raises(ConfigError, match=r"\(3 parameters\), not for task 'blobs'"):
        check_profile(fake_profile(task, parameters=3), task)
    check_profile(fake_profile(task, device="cuda"), task)  # a GPU profile plans for the GPU from anywhere


def test_metric_target_maps_to_a_training_loss():
    from batchscope.train import HistoryPoint

    # ln(loss) = 1 - 2 * accuracy exactly: at the target 0.8 the loss is e^-0.6
    pts = [HistoryPoint(i, i, 0.0, float(torch.tensor(1 - 2 * a).exp()), a, None, 0.1)
           for i, a in enumerate([0.1, 0.2, 0.3, 0.4, 0.5])]
    task = blobs_task()
    loss, how = target_training_loss(task, pts)
    assert loss == pytest.approx(float(torch.tensor(-0.6).exp()), rel=1e-6)
    assert "fitted on 4 evaluations" in how


def _points(metrics, losses):
    from batchscope.train import HistoryPoint

    return [HistoryPoint(5 * i, 160 * i, 0.0, loss, m, loss, 0.1) for i, (m, loss) in enumerate(zip(metrics, losses))]


def test_a_metric_target_is_read_once_the_metric_covered_a_third_of_the_way():
    task = blobs_task()                                            # accuracy target 0.80
    # from 0.20, the best so far 0.35: a quarter of the way to 0.80, too little to read the loss there
    early = read_target(task, _points([0.2, 0.25, 0.35, 0.3], [1.4, 1.3, 1.2, 1.1]))
    assert not early.ready and early.how == ("the accuracy has covered 25% of the way to its target "
                                             "(33% is needed to read the loss there)")
    later = read_target(task, _points([0.2, 0.25, 0.35, 0.3, 0.5], [1.4, 1.3, 1.2, 1.1, 0.9]))
    assert later.ready and later.eval == later.train                # same losses on both splits here


def test_find_extends_the_measuring_run_while_the_target_cannot_be_projected():
    task = Task(**{**blobs_task().__dict__, "lr": 0.005})  # slow: the accuracy moves little in 30 steps
    r = find(task, profile=fake_profile(task))
    m = r.measuring
    assert m["extension"] == {"from_step": MIN_STEPS, "cap_steps": EXTEND_STEPS,
                              "why": "the accuracy has covered 28% of the way to its target "
                                     "(33% is needed to read the loss there)"}
    assert m["stopped_because"] == "budget used" and m["steps"] == 36  # answered at the next evaluations
    assert r.recommendation.caveats[0].startswith(f"the measuring run went on from step {MIN_STEPS} to 36 (it "
                                                  f"extends itself to {EXTEND_STEPS} steps at most)")


def test_target_epochs_states_a_target_without_a_baseline():
    task = blobs_task()
    unreachable = Task(**{**task.__dict__, "target": Target("loss", 1e-6, "val")})  # not used with target_epochs
    r = find(unreachable, profile=fake_profile(unreachable), target_epochs=4)
    m = r.measuring
    assert m["projected_examples_to_target"] == 4 * task.n_train   # the run to the target is 4 epochs by definition
    assert m["target"]["stated"] == "the val loss after 4 epochs at the reference setting"
    # the target: ln(val loss) = a + b ln(examples) over the evaluations the stop was decided on, at 4 epochs
    h = [p for p in m["history"] if p["step"] % 5 == 0]
    expected = loss_after([p["examples"] for p in h], [p["eval_loss"] for p in h], 4 * task.n_train)[0]
    assert m["target"]["eval_loss"] == pytest.approx(expected, rel=1e-12)
    assert r.recommendation.b_simple_at_target["loss"] == m["target"]["train_loss"] == m["target"]["eval_loss"]


def test_loss_after_reads_a_power_law_in_the_examples():
    examples = [100.0 * 2 ** k for k in range(8)]
    assert loss_after(examples, [3.0 * e ** -0.5 for e in examples], 1e4)[0] == pytest.approx(0.03, rel=1e-9)
    assert loss_after(examples, [1.0] * 8, 1e4) is None                    # not falling: no projection


def test_a_result_saved_before_the_renames_still_loads():
    from batchscope.plan.recommend import Recommendation

    old = {"objective": "fastest", "batch_size": 64, "micro_batch": 64, "accumulation": 1, "devices": 1, "lr": 0.1,
           "lr_rule": "sgd", "lr_why": "", "warmup_steps": 0, "b_noise": {"value": 50.0},
           "b_crit_at_target": {"value": 9.0}, "predicted": {}}
    r = Recommendation.from_dict(old)
    assert (r.b_crit, r.b_simple_at_target) == ({"value": 50.0}, {"value": 9.0})


def test_a_measuring_run_stopped_by_its_step_cap_still_recommends_and_says_so(monkeypatch):
    # Long runs: the measuring run can reach its cap before it has used its share of a projected run that
    # the log-linear projection makes far too long; that cap bounds the cost and is no verdict on the target
    # (it used to be refused as "out of reach").
    import dataclasses

    import batchscope.plan.find as F

    monkeypatch.setattr(F, "MAX_STEPS", 45)
    task = dataclasses.replace(linear_task(n=4096), lr=0.0005, target=Target("loss", 0.3, "val"))
    res = find(task, profile=fake_profile(task), measure_fraction=0.9, verify=False)
    m = res.measuring
    assert m["steps"] == 45 and m["stopped_because"] == "step limit"
    assert m["fraction_of_projected_run"] < 0.9                       # the budget was not used up
    assert any("stopped at its cap of 45 steps" in c for c in res.recommendation.caveats)
    assert res.recommendation.batch_size >= 1 and res.recommendation.lr > 0
    # the predicted run is then an extrapolation: the branch check spends no budget on it, only its floor
    v = find(task, profile=fake_profile(task), measure_fraction=0.9).recommendation.verification
    largest = max(b["batch"] for b in v["branches"])
    assert v["budget"]["extrapolated"] and v["examples_per_branch"] == 8 * largest
