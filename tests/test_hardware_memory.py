"""The CPU memory probe on real training steps (forked children reading their peak resident size)."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchscope import Target, Task
from batchscope.errors import TaskError
from batchscope.hardware import (MemoryBudgetError, bisect_ceiling, cpu_memory_probe, cpu_memory_supported,
                                 find_ceiling, profile_hardware)
from batchscope.tasks import load_task
from tests.helpers import wide_task

pytestmark = pytest.mark.skipif(not cpu_memory_supported()[0], reason=cpu_memory_supported()[1] or "supported")
MiB = 2**20


def test_peak_memory_grows_linearly_with_the_batch():
    # Per example the step holds the input (1 KiB), hidden activations and their gradients (several
    # x 4 KiB) and logits: roughly 10-25 KiB. 1024 more examples must cost that many KiB per example.
    probe = cpu_memory_probe(wide_task())
    m = {b: probe(b).peak_bytes for b in (256, 1280, 2304)}
    per_example = (m[2304] - m[256]) / 2048
    assert 8 * 1024 < per_example < 32 * 1024
    assert (m[1280] - m[256]) / 1024 == pytest.approx(per_example, rel=0.1)
    # In the first optimizer step, parameters, gradients and the new SGD momentum are alive together.
    params_bytes = 4 * (256 * 1024 + 1024 + 1024 * 10 + 10)
    assert 0.9 * 3 * params_bytes <= probe(2).peak_bytes < 3 * params_bytes + 2 * MiB


def test_prediction_lands_at_the_true_ceiling_under_a_small_budget():
    # A built-in task and a budget this machine reaches: the predicted ceiling must be within 5% of
    # the one exhaustive bisection finds with the same real probe, with at most two steps over budget.
    # (The kernel's resident-page count carries ~100 KiB of noise; 16 MiB keeps it well under 5%.)
    task = load_task("digits")
    probe = cpu_memory_probe(task)
    budget = 16 * MiB
    predicted = find_ceiling(probe, budget, task.n_train)
    truth = bisect_ceiling(probe, budget, task.n_train)
    assert truth.limited_by == "memory" and truth.max_batch < task.n_train
    assert truth.max_batch * 0.95 <= predicted.max_batch <= truth.max_batch * 1.001
    assert predicted.over_budget <= 2
    assert predicted.steps < truth.steps


def test_a_model_too_big_for_the_budget_is_a_clear_error():
    with pytest.raises(MemoryBudgetError, match=r"does not fit the memory budget even at batch size 1: one "
                       r"training step needs [0-9.]+ MiB, the budget is 1.00 MiB; raise the budget"):
        profile_hardware(wide_task(), memory_budget="1MiB")


def test_a_failing_step_is_reported_with_its_cause():
    bad = Task(name="bad", make_model=lambda: nn.Linear(3, 2), train_data=TensorDataset(torch.randn(64, 5),
               torch.randint(0, 2, (64,))), loss_fn=nn.functional.cross_entropy, target=Target("loss", 0.1, "train"))
    with pytest.raises(TaskError, match=r"task 'bad': forward failed \(RuntimeError: mat1 and mat2 shapes cannot "
                                        r"be multiplied .*\); make the model's input size match the task's data"):
        cpu_memory_probe(bad)  # the priming step runs in this process
