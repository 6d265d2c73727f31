"""One full training step of a task (forward, loss, backward, optimizer step), as ``train()`` runs it.

Both probes (memory and time) run this, with the task's own model, loss and optimizer, so the
numbers describe the training the user will actually do. Data loading is not part of the step.

Inputs of varying size: a task whose examples differ in size (sequence length, image size) says
which example is the largest with ``Task.extra["largest_example"] = index`` (into ``train_data``).
Probe batches are then made of that example repeated, so the ceiling holds for every batch. Without
it, a probe batch is the first B training examples (the built-in tasks all have fixed sizes).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..data import split_batch, take, to_device
from ..errors import TaskError
from ..tasks import Task
from ..train import OptimizerSettings, build_training, check_batch, task_loss


def probe_indices(task: Task, batch: int) -> torch.Tensor:
    """Indices of the examples a probe step at ``batch`` trains on."""
    check_batch(task, batch)
    largest = task.extra.get("largest_example")
    if largest is None:
        return torch.arange(batch)
    if isinstance(largest, bool) or not isinstance(largest, int) or not 0 <= largest < task.n_train:
        raise TaskError(f"task {task.name!r}: extra['largest_example'] must be the index of one training "
                        f"example (0..{task.n_train - 1}); got {largest!r}")
    return torch.full((batch,), largest, dtype=torch.long)


class StepRunner:
    """A fresh model and optimizer of ``task`` on ``device``; :meth:`step` trains one batch.

    Built by :func:`batchscope.train.build_training`, like ``train()``'s own step; ``optimizer``
    (the run's optimizer settings, default the task's) decides the optimizer state in memory.
    """

    def __init__(self, task: Task, device: "torch.device | str" = "cpu", amp: bool = False, seed: int = 0,
                 optimizer: Optional[OptimizerSettings] = None):
        self.task = task
        self.device = torch.device(device)
        setup = build_training(task, self.device, optimizer or OptimizerSettings.resolve(task), amp, seed)
        self.model, self.optimizer, self.scaler, self._setup = setup.model, setup.optimizer, setup.scaler, setup
        self.autocast = setup.autocast

    def batch(self, size: int):
        """A collated probe batch of ``size`` examples, already on the device."""
        return to_device(take(self.task.train_data, probe_indices(self.task, size)), self.device)

    def step(self, batch) -> None:
        inputs, target = split_batch(batch)
        with self.autocast():
            loss = task_loss(self.task, self.model, inputs, target)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
