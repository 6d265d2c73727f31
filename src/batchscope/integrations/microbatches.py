"""Which optimizer steps the two-batch noise estimator can use, from the micro-batches each one saw.

The micro-batch estimator (McCandlish et al. 2018, appendix A.1) compares the squared norms of
equal-sized micro-batch gradients with the squared norm of their mean. A framework's loop does not
always give it that: the last batch of an epoch is usually smaller, and Lightning ends an epoch
with a shorter accumulation window whose loss is still divided by the full count. Such steps are
left out (their captured norms dropped) rather than measured with the wrong batch sizes. A step of
one micro-batch on one process (the frameworks' default) is measured by :func:`measure_in_halves`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch


def leading_size(batch: Any) -> Optional[int]:
    """Number of examples in a collated batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            n = leading_size(item)
            if n is not None:
                return n
    return None


def measurable(sizes: list[Optional[int]], expected: Optional[int], world: int = 1) -> bool:
    """True when a step's micro-batches suit the two-batch estimator.

    sizes: examples in each micro-batch of the step (None where unknown); expected: the number of
    micro-batches the loop normalised the loss by (None: the loop divides by the actual count);
    world: data-parallel processes (each contributes its own micro-batches).
    """
    if not sizes or any(s is None for s in sizes) or len(set(sizes)) != 1:
        return False
    if expected is not None and len(sizes) != expected:
        return False
    return len(sizes) * world >= 2


def one_pass(sizes: list[Optional[int]], expected: Optional[int], world: int = 1) -> bool:
    """True for a step of one micro-batch on one process: the framework's default set-up, which
    :func:`measure_in_halves` measures (when the loop expected more, the window was cut short)."""
    return len(sizes) == 1 and sizes[0] is not None and world == 1 and expected in (None, 1)


def take_rows(batch: Any, n: int, rows: slice) -> Any:
    """``rows`` of a collated batch of ``n`` examples: every tensor whose first dimension is ``n`` is
    sliced; containers keep their type (dicts, BatchEncoding, tuples, named tuples, lists); anything
    else (a scalar, a flag) is passed along unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch[rows] if batch.dim() > 0 and batch.shape[0] == n else batch
    if isinstance(batch, Mapping):
        items = {k: take_rows(v, n, rows) for k, v in batch.items()}
        try:
            return type(batch)(items)
        except TypeError:
            return items
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(take_rows(v, n, rows) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(take_rows(v, n, rows) for v in batch)
    return batch


def measure_in_halves(monitor, model: torch.nn.Module, loss_of: Callable[[Any], Optional[torch.Tensor]], batch: Any,
                      optimizer=None) -> bool:
    """Measure a one-micro-batch step by running its batch again as two equal halves; False if it cannot.

    The micro-batch estimator needs at least two equal micro-batches per step; a framework's
    default loop gives one. So, after the step's own backward pass and before the optimizer step:
    the step's gradients are set aside, each half (``n // 2`` examples; an odd last example is left
    out of the measurement, not of training) runs forward and backward with the monitor's hooks on
    (``loss / 2``, so ``.grad`` is their mean, the big batch), the monitor records, and the step's
    own gradients, the random number generators (dropout) and the model's buffers (BatchNorm
    statistics) are put back. The optimizer then steps exactly as without the monitor; the
    estimate is the two-batch estimator of ``train``'s micro-batches (no bias beyond its own), at
    the price of one more forward and backward pass of the batch on each measured step.
    ``loss_of(half)`` returns the mean loss of a half, as the framework computes it (None: there is
    none to measure, and the step is not measured).
    """
    n = leading_size(batch)
    if n is None or n < 2:
        return False
    half = n // 2
    halves = [take_rows(batch, n, slice(0, half)), take_rows(batch, n, slice(half, 2 * half))]
    params = [p for p in model.parameters() if p.requires_grad]
    own = [p.grad for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    monitor.bind(model, optimizer)             # drops the norms the step's own pass left in the hooks
    try:
        with torch.random.fork_rng(devices=devices):
            for p in params:
                p.grad = None
            total = 0.0
            for part in halves:
                loss = loss_of(part)
                if loss is None:
                    return False
                (loss / 2).backward()
                total += float(loss.detach()) / 2
        monitor.micro_batch = half
        monitor.update(total)
    finally:
        for p, g in zip(params, own):
            p.grad = g
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return True
