"""The task's own code (model factory, forward, loss, metric), with errors that say which part failed.

A failure inside user code becomes one :class:`~batchscope.errors.TaskError` line: the part, the
original error's first line and what to look at. Allocation failures and batchscope's own errors
pass through unchanged (the memory probes catch out-of-memory by type).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..data import forward, split_batch, take, to_device
from ..errors import BatchscopeError, TaskError
from ..tasks import Task


def _passes_through(error: Exception) -> bool:
    oom = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), MemoryError) if t is not None)
    return isinstance(error, (oom, BatchscopeError))


_FIXES = {"make_model": "fix make_model() of the task",
          "forward": "fix the model's forward() so that it runs on a batch of the task's data",
          "loss_fn": "loss_fn(output, target) must accept the model's output and return the batch mean",
          "metric_fn": "metric_fn(output, target) must accept the model's output and return a number"}
# A forward failure's fix follows from what it says: only a shape mismatch is about the input size.
# Checked in this order (a dtype or device message may also mention shapes).
_FORWARD_FIXES = (
    (("expected scalar type", "same dtype", "found dtype", "dtype"),
     "make the model's parameters and the task's data the same dtype (for example float32)"),
    (("same device", "expected all tensors to be on", "device type"),
     "create the model's tensors in make_model() as parameters or buffers, so they move with the model"),
    (("index out of range", "out of bounds"),
     "check the task's data: an index (a token or class id) is beyond what the model's embedding or output has"),
    (("shapes cannot be multiplied", "size mismatch", "must match the size", "input size", "input (got",
      "to have", "channels", "shape"), "make the model's input size match the task's data"),
)


def _fix(part: str, error: Exception) -> str:
    if part == "forward":
        text = str(error).lower()
        for needles, fix in _FORWARD_FIXES:
            if any(n in text for n in needles):
                return fix
    return _FIXES[part]


def _task_error(task: Task, part: str, error: Exception) -> TaskError:
    """One line: which part of the task failed, the original error's first line, and the fix that error calls for."""
    first = (str(error).strip().splitlines() or [""])[0]
    return TaskError(f"task {task.name!r}: {part} failed ({type(error).__name__}: {first}); {_fix(part, error)}")


def _call(task: Task, part: str, fn, *args):
    try:
        return fn(*args)
    except Exception as e:
        if _passes_through(e):
            raise
        raise _task_error(task, part, e) from e


def build_model(task: Task) -> nn.Module:
    """``task.make_model()``, with a failure reported as the task's."""
    model = _call(task, "make_model", task.make_model)
    if not isinstance(model, nn.Module):
        raise TaskError(f"task {task.name!r}: make_model() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def task_output(task: Task, model: nn.Module, inputs):
    """The model's forward pass on a batch of the task's data, a failure reported as the task's."""
    return _call(task, "forward", forward, model, inputs)


def loss_of(task: Task, out, target) -> torch.Tensor:
    """``task.loss_fn``, checked to be a scalar (the batch mean): the accumulation arithmetic needs it."""
    loss = _call(task, "loss_fn", task.loss_fn, out, target)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TaskError(f"task {task.name!r}: loss_fn must return the batch mean as a scalar tensor, got {got}; "
                        "use reduction='mean'")
    return loss


def task_loss(task: Task, model: nn.Module, inputs, target) -> torch.Tensor:
    """The task's loss of ``model`` on one batch: forward then ``loss_fn``, each failure named."""
    return loss_of(task, task_output(task, model, inputs), target)


def task_metric(task: Task, out, target) -> float:
    return float(_call(task, "metric_fn", task.metric_fn, out, target))


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str = "val", device: "torch.device | str" = "cpu",
             max_examples: Optional[int] = None, batch_size: int = 1024) -> tuple[float, Optional[float]]:
    """Mean loss and metric of ``model`` on a split ('val' or 'train'), weighted by example count."""
    device = torch.device(device)
    data = task.val_data if split == "val" and task.val_data is not None else task.train_data
    n = len(data)  # type: ignore[arg-type]
    if max_examples is not None:
        n = min(n, max_examples)
    was_training = model.training
    model.eval()
    loss_sum, metric_sum = 0.0, 0.0
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        inputs, target = split_batch(to_device(take(data, idx), device))
        out = task_output(task, model, inputs)
        k = len(idx)
        loss_sum += float(loss_of(task, out, target)) * k
        if task.metric_fn is not None:
            metric_sum += task_metric(task, out, target) * k
    model.train(was_training)
    return loss_sum / n, (metric_sum / n if task.metric_fn is not None else None)
