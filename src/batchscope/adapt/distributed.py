"""Data parallel: rank 0 decides, every rank adopts its decision.

Under ``torchrun`` every rank holds a controller; the monitor's data-parallel estimate is the same
on all of them up to the order of floating-point sums, but a batch size that differs between ranks
would deadlock the all-reduce, so only rank ``src`` decides and the others load its state::

    if controller.due(step):
        d = broadcast_decision(controller, step, monitor.estimate())
        sampler.set_batch_size(d.batch_size)      # every rank: the same global batch

Build the controller with ``devices=world_size`` so the global batch splits into equal per-rank
shares (micro-batch x accumulation on each rank).
"""

from __future__ import annotations

import torch.distributed as dist

from .controller import BatchSizeController, Decision


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sync_controller(controller: BatchSizeController, src: int = 0) -> None:
    """Make every rank's controller state equal to rank ``src``'s (a collective: call on every rank)."""
    if not _active():
        return
    box = [controller.state_dict() if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    if dist.get_rank() != src:
        controller.load_state_dict(box[0])


def broadcast_decision(controller: BatchSizeController, step: int, estimate, src: int = 0) -> Decision:
    """``controller.decide`` on rank ``src``, then the same decision on every rank (one process: decide)."""
    if not _active() or dist.get_rank() == src:
        controller.decide(step, estimate)
    sync_controller(controller, src)
    return controller.decisions[-1]
