import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchscope import Target, Task
from batchscope.errors import ConfigError
from batchscope.hardware import HardwareProfile, ProfilePoint
from batchscope.plan.find import FindError, check_profile, find, target_training_loss
from batchscope.tasks import accuracy

from .conftest import linear_task


def fake_profile(task, alpha=1e-3, beta=1e-5, ceiling=100_000, limited_by="data set", device="cpu", parameters=None):
    """A hardware profile with chosen numbers (as if measured elsewhere and loaded with --profile)."""
    return HardwareProfile(
        task=task.name, parameters=task.parameter_count() if parameters is None else parameters,
        device={"type": device}, amp=False, max_batch=ceiling, limited_by=limited_by, memory_budget=None,
        memory_method="given", m0=None, m1=None, memory_r2=None, alpha=alpha, beta=beta, r2=1.0, residuals=[],
        points=[ProfilePoint(b, alpha + beta * b, 0.0, b / (alpha + beta * b), None) for b in (1, 4, 16, 64, 256)],
        memory_probes=[], ceiling_steps=0, over_budget_steps=0, knee=None, knee_fit=None, seconds=0.0)


def blobs_task(n=6000, seed=0):
    """Four overlapping Gaussian classes: enough noise that the run takes a few hundred steps."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 10, generator=g) * 1.2
    y = torch.randint(0, 4, (n,), generator=g)
    x = centres[y] + torch.randn(n, 10, generator=g)
    cut = n * 4 // 5
    return Task(name="blobs", make_model=lambda: nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4)),
                train_data=TensorDataset(x[:cut], y[:cut]), val_data=TensorDataset(x[cut:], y[cut:]),
                loss_fn=nn.functional.cross_entropy, metric_fn=accuracy, metric_name="accuracy",
                optimizer="sgd", lr=0.02, momentum=0.0, reference_batch=32, target=Target("metric", 0.80, "val"))


def test_find_end_to_end_with_a_given_profile():
    task = blobs_task()
    r = find(task, profile=fake_profile(task, alpha=2e-3, beta=2e-5, ceiling=64, limited_by="memory"),
             objective="fastest")
    rec = r.recommendation
    # what was asked: a layout that multiplies out, inside the memory ceiling, with a rate and evidence
    assert rec.batch_size == rec.micro_batch * rec.accumulation * rec.devices
    assert rec.micro_batch <= 64
    assert rec.lr > 0 and rec.b_noise["low"] <= rec.b_noise["value"] <= rec.b_noise["high"]
    assert rec.batch_size == min(rec.candidates, key=lambda c: c["seconds"])["batch_size"]
    m = r.measuring
    assert m["stopped_because"] == "budget used"
    assert m["examples"] == m["steps"] * 32
    assert m["fraction_of_projected_run"] == pytest.approx(m["examples"] / m["projected_examples_to_target"])
    assert len(r.noise_steps["loss"]) >= 25


def test_find_refuses_a_target_out_of_reach():
    task = linear_task()
    impossible = Task(**{**task.__dict__, "target": Target("loss", 1e-6, "val")})  # noise floor is 0.25
    with pytest.raises(FindError, match="looks out of reach|made no progress"):
        find(impossible, profile=fake_profile(impossible))


def test_find_refuses_a_budget_too_small_to_measure_anything():
    with pytest.raises(FindError, match="less than one step of batch 32: nothing can be measured"):
        find(blobs_task(), profile=fake_profile(blobs_task()), budget=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(objective="cheap"), "The 'objective' parameter must be one of fastest, balanced, cheapest"),
    (dict(budget=0.0), r"The 'budget' parameter must be a fraction in \(0, 1\]"),
    (dict(devices=0), "The 'devices' parameter must be a positive integer"),
])
def test_find_validates_its_parameters(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        find(blobs_task(), profile=fake_profile(blobs_task()), **kwargs)


def test_profile_for_another_task_or_device_is_refused():
    task = blobs_task()
    other = Task(**{**task.__dict__, "name": "mnist1d"})
    with pytest.raises(ConfigError, match="the profile was measured for task 'mnist1d'"):
        check_profile(fake_profile(other), task, "cpu")
    with pytest.raises(ConfigError, match="the profile was measured on 'cuda', this run is on 'cpu'"):
        check_profile(fake_profile(task, device="cuda"), task, "cpu")
    with pytest.raises(ConfigError, match=r"\(3 parameters\), not for task 'blobs'"):
        check_profile(fake_profile(task, parameters=3), task, "cpu")


def test_metric_target_maps_to_a_training_loss():
    from batchscope.train import HistoryPoint

    # ln(loss) = 1 - 2 * accuracy exactly: at the target 0.8 the loss is e^-0.6
    pts = [HistoryPoint(i, i, 0.0, float(torch.tensor(1 - 2 * a).exp()), a, None, 0.1)
           for i, a in enumerate([0.1, 0.2, 0.3, 0.4, 0.5])]
    task = blobs_task()
    loss, how = target_training_loss(task, pts)
    assert loss == pytest.approx(float(torch.tensor(-0.6).exp()), rel=1e-6)
    assert "fitted on 4 evaluations" in how
