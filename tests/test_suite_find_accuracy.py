"""`find` on a small task against a ground truth this test measures itself.

The task: noisy linear regression (the noise floor makes the gradient noise grow as the loss falls,
like real training). The test sweeps four batch sizes x three learning rates to the target, fits the
critical batch (`fit_bcrit`) and checks that `find`'s predicted B_crit is within 3x of it (the suite's
90% interval, fitted leave-one-task-out, is about x/÷3).
"""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchscope import Target, Task, TrainConfig, train
from batchscope.study import fit_bcrit

D, N = 16, 8192


def regression_task() -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N + 1024, D, generator=g) * torch.logspace(-1, 0, D)   # Hessian condition number 100
    w = torch.randn(D, generator=g)
    y = x @ w + 0.5 * torch.randn(N + 1024, generator=g)          # noise floor 0.25

    def loss(out, t):
        return nn.functional.mse_loss(out.squeeze(-1), t)
    return Task(name="linreg", make_model=lambda: nn.Linear(D, 1), train_data=TensorDataset(x[:N], y[:N]),
                val_data=TensorDataset(x[N:], y[N:]), loss_fn=loss, optimizer="sgd", lr=0.1, momentum=0.0,
                reference_batch=32, target=Target("loss", 0.4, "val"))


def steps_to_target(task, b, lr):
    r = train(task, TrainConfig(batch_size=b, lr=lr, until_target=True, steps=4000, eval_every=1 if b >= 128 else 4))
    return r.target_step if r.reached_target else math.inf


@pytest.mark.slow
def test_find_predicts_the_critical_batch_it_measures():
    from batchscope.plan.find import find

    torch.set_num_threads(1)
    task = regression_task()
    batches, steps = [], []
    for b in (8, 32, 128, 512):
        centre = task.lr * min(b / 32, 4.0)
        best = min(steps_to_target(task, b, centre * f) for f in (0.5, 1.0, 2.0))
        assert math.isfinite(best), f"batch {b} did not reach the target"
        batches.append(b)
        steps.append(best)
    measured = fit_bcrit(batches, steps)
    result = find(task, objective="balanced", max_batch=512)
    predicted = result.recommendation.b_crit["value"]
    print(f"predicted {predicted:.0f}, measured {measured.b_crit:.0f}, steps {steps}")
    assert measured.b_crit / 3 <= predicted <= measured.b_crit * 3, (predicted, measured.b_crit, steps)
