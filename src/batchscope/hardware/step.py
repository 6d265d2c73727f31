"""One full training step of a task (forward, loss, backward, optimizer step), as ``train()`` runs it.

Both probes (memory and time) run this, with the task's own model, loss and optimizer, so the
numbers describe the training the user will actually do. Data loading is not part of the step.

Inputs of varying size: a task whose examples differ in size (sequence length, image size) says
which example is the largest with ``Task.extra["largest_example"] = index`` (into ``train_data``).
Probe batches are then made of that example repeated, so the ceiling holds for every batch. Without
it, a probe batch is the first B training examples (the built-in tasks all have fixed sizes).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..data import forward, split_batch, take, to_device
from ..errors import ConfigError, TaskError
from ..tasks import Task
from ..train import make_optimizer


def probe_indices(task: Task, batch: int) -> torch.Tensor:
    """Indices of the examples a probe step at ``batch`` trains on."""
    if batch > task.n_train:
        raise ConfigError(f"batch size {batch} is larger than the training set of task {task.name!r} "
                          f"({task.n_train} examples); probe at most {task.n_train}")
    largest = task.extra.get("largest_example")
    if largest is None:
        return torch.arange(batch)
    if isinstance(largest, bool) or not isinstance(largest, int) or not 0 <= largest < task.n_train:
        raise TaskError(f"task {task.name!r}: extra['largest_example'] must be the index of one training "
                        f"example (0..{task.n_train - 1}); got {largest!r}")
    return torch.full((batch,), largest, dtype=torch.long)


def amp_dtype(device: torch.device, amp: bool):
    if not amp:
        return None
    if device.type != "cuda":
        raise ConfigError("automatic mixed precision (--amp) needs a CUDA device; drop --amp on the CPU")
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class StepRunner:
    """A fresh model and optimizer of ``task`` on ``device``; :meth:`step` trains one batch."""

    def __init__(self, task: Task, device: "torch.device | str" = "cpu", amp: bool = False, seed: int = 0):
        self.task = task
        self.device = torch.device(device)
        torch.manual_seed(seed)
        self.model = task.make_model().to(self.device)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"the model of task {task.name!r} has no trainable parameters")
        self.optimizer = make_optimizer(task.optimizer, params, task.lr, task.momentum, task.weight_decay)
        dtype = amp_dtype(self.device, amp)
        self.autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype is not None else nullcontext
        self.scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)

    def batch(self, size: int):
        """A collated probe batch of ``size`` examples, already on the device."""
        return to_device(take(self.task.train_data, probe_indices(self.task, size)), self.device)

    def step(self, batch) -> None:
        inputs, target = split_batch(batch)
        with self.autocast():
            loss = self.task.loss_fn(forward(self.model, inputs), target)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
