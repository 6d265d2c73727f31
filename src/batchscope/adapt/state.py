"""One state for everything that adapts: sampler, controller, monitor and rate, for checkpoints.

A run resumed from it draws the same examples in the same batch sizes, at the same rates, and its
noise estimate continues from the same smoothed moments::

    torch.save({"model": ..., "optimizer": ..., "adapt": adapt_state(sampler, controller, monitor, rate)}, path)
    ...
    load_adapt_state(torch.load(path)["adapt"], sampler, controller, monitor, rate)

With a prefetching ``DataLoader`` pass ``received``, the batches of the current epoch the loop has
received (see :class:`AdaptiveBatchSampler`).
"""

from __future__ import annotations

from typing import Optional

from ..noise import NoiseScaleMonitor
from .controller import BatchSizeController
from .rules import ScaledLearningRate
from .sampler import AdaptiveBatchSampler


def adapt_state(sampler: Optional[AdaptiveBatchSampler] = None, controller: Optional[BatchSizeController] = None,
                monitor: Optional[NoiseScaleMonitor] = None, rate: Optional[ScaledLearningRate] = None,
                received: Optional[int] = None) -> dict:
    """The states of the parts given, in one dict (parts left out are not stored)."""
    out = {}
    if sampler is not None:
        out["sampler"] = sampler.state_dict(received)
    if controller is not None:
        out["controller"] = controller.state_dict()
    if monitor is not None:
        out["monitor"] = monitor.state_dict()
    if rate is not None:
        out["rate"] = rate.state_dict()
    return out


def load_adapt_state(state: dict, sampler: Optional[AdaptiveBatchSampler] = None,
                     controller: Optional[BatchSizeController] = None, monitor: Optional[NoiseScaleMonitor] = None,
                     rate: Optional[ScaledLearningRate] = None) -> None:
    for name, part in (("sampler", sampler), ("controller", controller), ("rate", rate)):
        if part is not None:
            part.load_state_dict(state[name])
    if monitor is not None:
        monitor.load_state_dict(state["monitor"])
