"""NoiseCallback: a :class:`NoiseScaleMonitor` driven by :func:`batchscope.train.train`.

The monitor is the user-loop API (``update(loss)`` after the backward passes); this adapter only
feeds it from the training loop: it checks the run can be measured, binds the monitor to the run's
model, optimizer and gradient scaler, and calls ``update`` with the step's loss (``ctx.step_loss``)
before each optimizer step. The loss scale under float16 AMP is read from the run's scaler
(``ctx.scaler``), whose scale is the one the step's backward passes used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from ..data import take, to_device
from ..train import Callback, TrainContext
from .stats import NoiseError

if TYPE_CHECKING:  # pragma: no cover
    from .monitor import NoiseScaleMonitor


class NoiseCallback(Callback):
    """Drives ``monitor`` from ``train()``; ``train(task, cfg, [monitor])`` builds one by itself."""

    def __init__(self, monitor: "NoiseScaleMonitor"):
        self.monitor = monitor
        self._generator: Optional[torch.Generator] = None

    def on_train_begin(self, ctx: TrainContext) -> None:
        mon = self.monitor
        if mon.method == "dataparallel":
            raise NoiseError("batchscope's training loop runs on one process; the data-parallel estimator is for "
                             "your own DDP loop (NoiseScaleMonitor(model, micro_batch=m) under torchrun)")
        if mon.method == "microbatch" and ctx.accumulation < 2:
            b = ctx.batch_size
            hint = (f"pass a micro-batch smaller than the batch that divides it (for example {b // 2})"
                    if b >= 2 else "use a batch of at least 2")
            raise NoiseError(f"the micro-batch estimator needs two batch sizes, but micro-batch {ctx.micro_batch} "
                             f"equals the batch size {b} (one micro-batch per step); {hint}, or use method='exact'")
        if mon.method == "exact" and (mon.exact_examples or ctx.batch_size) < 2:
            raise NoiseError("the exact estimator needs at least 2 examples per measurement to estimate a variance; "
                             "got a batch of 1; use a batch of at least 2")
        mon.micro_batch = ctx.micro_batch
        mon.loss_fn = mon.loss_fn or ctx.task.loss_fn
        if ctx.scaler is not None and ctx.scaler.is_enabled():
            mon.scaler = ctx.scaler
        self._generator = torch.Generator().manual_seed(mon.seed + 7919)
        mon.bind(ctx.model, ctx.optimizer)

    def on_before_step(self, ctx: TrainContext) -> None:
        mon = self.monitor
        batch = None
        if mon.method == "exact" and mon._steps % mon.every == 0:
            n = min(mon.exact_examples or ctx.batch_size, ctx.task.n_train)
            idx = torch.randperm(ctx.task.n_train, generator=self._generator)[:n]
            batch = to_device(take(ctx.task.train_data, idx), ctx.device)
        mon.update(ctx.step_loss, batch=batch, step=ctx.step + 1)

    def on_train_end(self, ctx: TrainContext, result) -> None:
        self.monitor.close()
