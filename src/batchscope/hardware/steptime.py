"""The one step-time model: seconds per forward/backward pass of B examples on one device.

Every user of a step time goes through :class:`StepTimeModel`: ``HardwareProfile.step_time()``,
the recommender (``plan.model.step_seconds``) and the throughput knee. The model:

* Inside the measured range, t(B) interpolates the *bounded* measured medians linearly in
  log(B)-log(t): real curves have steps (cache sizes, kernel choices) that a straight line smooths
  over.
* A measured median is an upper bound on what a step costs, since interference from other work
  only ever slows a step. Two facts bound it further, and the model takes the smallest time
  consistent with all measurements:
    1. a larger batch does at least the work of a smaller one, so t is non-decreasing: each
       median is lowered to the smallest median at any larger batch;
    2. B examples can always be processed as passes of a smaller batch b, so the time per example
       t(B)/B never exceeds t(b)/b of a smaller measured batch (throughput never falls as B grows).
  A load spike at B=2 then cannot make B=2 look slower than B=64, nor a slow B=32 make the
  throughput curve dip between B=16 and B=64.
* Outside the measured range (and with fewer than two points) it is the fitted line
  t(B) = alpha + beta*B, weighted by relative error (:func:`~batchscope.hardware.fit.fit_step_time`).

The profile JSON stores the bounded points under ``step_time_model``; they are recomputed from the
measured points on load, so the stored model and the measurements cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

DESCRIPTION = ("log-log interpolation of the measured medians, bounded to be non-decreasing in B and "
               "non-increasing in time per example; alpha + beta*B outside the measured range")


def bound_medians(points: Iterable[tuple[float, float]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(batches, seconds) sorted by batch, each median lowered by the two bounds of the module doc."""
    pts = sorted((float(b), float(t)) for b, t in points if b > 0 and t > 0 and math.isfinite(t))
    if not pts:
        return (), ()
    b = np.array([p[0] for p in pts])
    t = np.array([p[1] for p in pts])
    t = np.minimum.accumulate(t[::-1])[::-1]       # 1. never more than at a larger batch
    t = b * np.minimum.accumulate(t / b)           # 2. never more time per example than a smaller batch
    return tuple(b.tolist()), tuple(t.tolist())


@dataclass(frozen=True)
class StepTimeModel:
    """t(B) in seconds; build it with :meth:`from_measurements`."""

    alpha: float                         # seconds: fixed cost of a step (the fitted line)
    beta: float                          # seconds per example (the fitted line)
    batches: tuple[float, ...] = ()      # measured batch sizes, ascending
    seconds: tuple[float, ...] = ()      # their bounded medians

    @classmethod
    def from_measurements(cls, alpha: float, beta: float,
                          measured: Iterable[tuple[float, float]] = ()) -> "StepTimeModel":
        b, t = bound_medians(measured)
        return cls(float(alpha), float(beta), b, t)

    def __call__(self, batch: float) -> float:
        if len(self.batches) < 2 or batch < self.batches[0] or batch > self.batches[-1]:
            return self.alpha + self.beta * batch
        return float(math.exp(np.interp(math.log(batch), np.log(self.batches), np.log(self.seconds))))

    def throughput(self, batch: float) -> float:
        return batch / self(batch)

    def to_dict(self) -> dict:
        return {"model": DESCRIPTION, "alpha": self.alpha, "beta": self.beta,
                "batches": list(self.batches), "seconds": list(self.seconds)}


def knee(model: StepTimeModel, gain: float = 0.10) -> Optional[int]:
    """Smallest measured B from which on doubling the batch never gains ``gain`` throughput or more.

    Throughput is read from the model (so at 2B it is interpolated in log B between measurements,
    and the grid need not be powers of two). Asking that no later doubling gains either (rather
    than taking the first B where one does not) keeps a stall at small B from being the knee.
    ``None`` when the curve still climbs at the largest B that can be doubled within the measured
    range.
    """
    flat = []  # (B, doubling gains less than `gain`) for every measured B that can be doubled in range
    for b in model.batches:
        if 2 * b > model.batches[-1] * (1 + 1e-9):
            break
        flat.append((int(b), model.throughput(2 * b) < (1.0 + gain) * model.throughput(b)))
    found = None
    for b, is_flat in reversed(flat):
        if not is_flat:
            break
        found = b
    return found
