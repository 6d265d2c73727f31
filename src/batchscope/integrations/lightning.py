"""Lightning (``lightning.pytorch`` 2.x): the noise scale and an adaptive batch during ``Trainer.fit``.

What Lightning's loop honours (lightning 2.6, ``loops/training_epoch_loop.py``,
``loops/optimization/automatic.py``), and so what these callbacks rely on:

- every batch from the ``DataLoader`` is one micro-batch; the loop divides its loss by
  ``trainer.accumulate_grad_batches`` and steps once ``batches this epoch % accumulate == 0``
  (or on the epoch's last batch), re-reading the attribute at every batch;
- gradients are zeroed before the first backward of a window (``batch_idx % accumulate == 0``), so a
  new count must divide the batches already run this epoch, or old gradients leak into a step;
- ``on_before_optimizer_step`` runs after the window's last backward (and AMP's unscale), before
  clipping and the step: the accumulated gradient there is the one the optimizer will use.
"""

from __future__ import annotations

from typing import Any, Optional

from .requires import require

pl = require("lightning.pytorch", "lightning", "batchscope.integrations.lightning")

import torch  # noqa: E402

from ..noise import NoiseScaleMonitor  # noqa: E402
from .microbatches import leading_size, measurable  # noqa: E402
from .scalars import noise_scalars  # noqa: E402


class NoiseScaleCallback(pl.Callback):
    """Measures B_simple = tr(Σ)/|G|² during ``fit`` and logs it with its interval (``self.log``).

    The small batch is one micro-batch of gradient accumulation (``Trainer(accumulate_grad_batches=k)``,
    k >= 2), or one rank's batch under DDP; the big batch is the accumulated (all-reduced) gradient.
    Norms are taken by hooks during backward: no extra pass. Steps whose micro-batches differ in
    size, or the short window that ends an epoch, are left out. Logged per optimizer step:
    ``noise/b_simple``, ``noise/b_simple_low``, ``noise/b_simple_high`` (the last once finite).
    ``monitor`` is the :class:`~batchscope.noise.NoiseScaleMonitor` doing the work (``.estimate()``).
    Keyword arguments go to the monitor (``decay``, ``level``, ``every``, ``max_micro_batches``,
    ``preconditioned``, ``per_layer``).
    """

    def __init__(self, *, prefix: str = "noise/", prog_bar: bool = False, **monitor_kwargs: Any):
        self.prefix = prefix
        self.prog_bar = prog_bar
        self.monitor_kwargs = monitor_kwargs
        self.monitor: Optional[NoiseScaleMonitor] = None
        self.left_out = 0              # steps not measurable (unequal or missing micro-batches)
        self._sizes: list[Optional[int]] = []
        self._loss: Optional[torch.Tensor] = None
        self._restored: Optional[dict] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.monitor = NoiseScaleMonitor(pl_module, optimizer=optimizer, **self.monitor_kwargs)
        if self._restored is not None:
            self.monitor.load_state_dict(self._restored)
            self._restored = None

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.monitor is not None:
            self.monitor.close()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._sizes.append(leading_size(batch))

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        # Lightning passes the loss already divided by the accumulation count: the window's sum is its mean.
        loss = loss.detach()
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        sizes, self._sizes = self._sizes, []
        loss, self._loss = self._loss, None
        assert self.monitor is not None
        if not measurable(sizes, trainer.accumulate_grad_batches, trainer.world_size):
            self.left_out += 1
            self.monitor.bind(pl_module, optimizer)   # drops this step's captured norms
            return
        self.monitor.micro_batch = sizes[0]
        point = self.monitor.update(loss)
        if point is None:
            return
        for name, value in noise_scalars(point, self.prefix).items():
            pl_module.log(name, value, on_step=True, on_epoch=False, prog_bar=self.prog_bar and
                          name.endswith("b_simple"), batch_size=sizes[0])

    def state_dict(self) -> dict:
        monitor = self.monitor.state_dict() if self.monitor is not None else self._restored
        return {"monitor": monitor, "left_out": self.left_out}

    def load_state_dict(self, state_dict: dict) -> None:
        self.left_out = state_dict.get("left_out", 0)
        if self.monitor is not None and state_dict.get("monitor") is not None:
            self.monitor.load_state_dict(state_dict["monitor"])
        else:
            self._restored = state_dict.get("monitor")
