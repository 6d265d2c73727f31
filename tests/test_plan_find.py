import pytest
import torch

from batchscope import Target, Task
from batchscope.errors import ConfigError
from batchscope.plan.find import FindError, check_profile, find, target_training_loss
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
    assert rec.lr > 0 and rec.b_noise["low"] <= rec.b_noise["value"] <= rec.b_noise["high"]
    # closed form: time to target S_min (1 + B_noise/B)(alpha + beta B) is least at B* = sqrt(alpha B_noise / beta);
    # the recommended power of two is the grid point next to it
    b_star = (2e-3 * rec.b_noise["value"] / 2e-5) ** 0.5
    assert rec.batch_size / 2 < b_star < rec.batch_size * 2
    m = r.measuring
    assert m["stopped_because"] == "budget used"
    assert m["examples"] == m["steps"] * 32
    assert m["fraction_of_projected_run"] == pytest.approx(m["examples"] / m["projected_examples_to_target"])
    assert len(r.noise_steps["loss"]) >= 25


def test_find_refuses_a_target_out_of_reach():
    task = linear_task()
    impossible = Task(**{**task.__dict__, "target": Target("loss", 1e-6, "val")})  # noise floor is 0.25
    with pytest.raises(FindError, match="made no progress toward the target"):
        find(impossible, profile=fake_profile(impossible))


def test_find_refuses_a_budget_too_small_to_measure_anything():
    with pytest.raises(FindError, match="less than one step of batch 32: nothing can be measured"):
        find(blobs_task(), profile=fake_profile(blobs_task()), measure_fraction=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(objective="cheap"), "The 'objective' parameter must be one of fastest, balanced, cheapest"),
    (dict(measure_fraction=0.0), r"The 'budget' parameter must be a fraction in \(0, 1\]"),
    (dict(devices=0), "The 'devices' parameter must be a positive integer"),
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
