"""What keeps an adaptive run from going where its start did not: the rate's stability bound, a kept
state to roll back to, and the watch on the loss after a move.

- **Stability bound (SGD).** At a move that raises the rate, λ_max of the loss on as many training
  examples as the new batch (:func:`probe_size`; power iteration, :func:`batchscope.noise.hessian.sharpness`;
  moves stacked on one kept state share one measurement) bounds a stable rate:
  2(1+μ)/λ for heavy-ball SGD (weight decay adds itself to λ). The rate is capped at
  :data:`~batchscope.noise.hessian.STABILITY_FRACTION` of it, never below the start's rate or the
  rate in use (the user's start vouches for those; the cap only limits rises).
- **Kept state.** Before a move the model, optimizer, scaler, rate and monitor are copied. A move
  on top of one still watched keeps the older copy: the state kept is the last one nothing
  unverified has touched.
- **Watch.** For :data:`WATCH_STEPS` steps after a move (the window of the smoothed loss, so a
  move's effect can show) the smoothed loss must stay below :data:`SPIKE_FACTOR` x its value at the
  kept state; the loop's own divergence check counts at any time. Either restores the kept state
  and the batch before the move, once per kept state.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Optional

import torch
from torch import nn

from ..noise.hessian import STABILITY_FRACTION, Sharpness, sgd_stability_bound, task_sharpness
from ..tasks import Task
from ..train import DIVERGE_SMOOTHING, TrainContext

SPIKE_FACTOR = 1.5               # a smoothed loss above this x its value at the move is a spike
WATCH_STEPS = DIVERGE_SMOOTHING  # steps after a move the spike rule watches: the smoothed loss's window
PROBE_EXAMPLES = (64, 512)       # λ_max on the batch the move goes to, within these (512: find's check)


def probe_size(batch: int, memory_ceiling) -> int:
    """Examples λ_max is measured on for a move to ``batch``: the curvature the new rate meets, at the
    cost of a few steps there; at least 64 (a smaller sample's top eigenvalue is biased up by its
    noise), at most 512 and a device pass."""
    lo, hi = PROBE_EXAMPLES
    return min(max(batch, lo), hi, memory_ceiling or hi)


def probe_indices(n_train: int, size: int, seed: int) -> torch.Tensor:
    """``size`` training examples drawn by their own generator (the run's random stream is not touched)."""
    return torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))[:min(size, n_train)]


def stability_ceiling(lam_max: float, *, momentum: float, nesterov: bool, weight_decay: float, rate_now: float,
                      lr0: float) -> tuple[float, float]:
    """(cap, ceiling): cap = STABILITY_FRACTION x the SGD bound at curvature λ_max + weight decay; the
    ceiling on the rate is the cap, or the start's rate or the rate in use where either is higher."""
    cap = STABILITY_FRACTION * sgd_stability_bound(lam_max + weight_decay, momentum, nesterov)
    return cap, max(cap, rate_now, lr0)


def spiked(smoothed: float, at_move: float, factor: float = SPIKE_FACTOR) -> bool:
    """Whether the smoothed loss rose above ``factor`` x its value at the move (a loss with no positive
    scale at the move, or a non-finite one now, is judged by the loop's divergence check instead)."""
    return at_move > 0 and math.isfinite(smoothed) and smoothed > factor * at_move


class LossTrend:
    """The loop's smoothing of the step loss (an EMA over ~DIVERGE_SMOOTHING steps, weight-corrected)."""

    def __init__(self):
        self.sum, self.weight = 0.0, 0.0

    def add(self, loss: float) -> None:
        decay = 1.0 - 1.0 / DIVERGE_SMOOTHING
        self.sum, self.weight = decay * self.sum + loss, decay * self.weight + 1.0

    @property
    def value(self) -> float:
        return self.sum / self.weight if self.weight else math.nan

    def state_dict(self) -> dict:
        return {"sum": self.sum, "weight": self.weight}

    def load_state_dict(self, state: dict) -> None:
        self.sum, self.weight = float(state["sum"]), float(state["weight"])


def probe_sharpness(task: Task, model: nn.Module, indices: torch.Tensor, device: torch.device,
                    seed: int = 0) -> tuple[Optional[Sharpness], float, str]:
    """(λ_max on the training examples ``indices``, seconds it took, why none when it failed)."""
    t0 = time.perf_counter()
    try:
        s = task_sharpness(task, model, indices, device, seed=seed)
    except (ValueError, RuntimeError) as e:
        return None, time.perf_counter() - t0, (str(e).strip().splitlines() or [""])[0]
    finally:
        model.zero_grad(set_to_none=True)
    return s, time.perf_counter() - t0, ""


def keep(ctx: TrainContext, **parts) -> dict:
    """A copy of the run's model, optimizer and scaler states, plus the policy's ``parts`` (copied)."""
    return {"model": {k: v.detach().clone() for k, v in ctx.model.state_dict().items()},
            "optimizer": copy.deepcopy(ctx.optimizer.state_dict()),
            "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
            **copy.deepcopy(parts)}


def restore(ctx: TrainContext, kept: dict) -> None:
    """Put the kept model, optimizer and scaler states back (the kept copy stays untouched)."""
    ctx.model.load_state_dict(kept["model"])
    ctx.optimizer.load_state_dict(copy.deepcopy(kept["optimizer"]))
    if ctx.scaler is not None and kept["scaler"] is not None:
        ctx.scaler.load_state_dict(kept["scaler"])
