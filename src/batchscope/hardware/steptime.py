"""The one step-time model: seconds per forward/backward pass of B examples on one device.

Every user of a step time goes through :class:`StepTimeModel`: ``HardwareProfile.step_time()``,
the recommender (``plan.model.step_seconds``) and the throughput knee. The model:

* Inside the measured range, t(B) interpolates the *bounded* measured medians linearly in
  log(B)-log(t): real curves have steps (cache sizes, kernel choices) that a straight line smooths
  over.
* A measured median is an upper bound on what a step costs, since interference from other work
  only ever slows a step; and a larger batch does at least the work of a smaller one. So t is
  made non-decreasing: each median is lowered to the smallest median at any larger batch (a load
  spike at B=2 then cannot make B=2 look slower than B=64). A larger batch that is slower per
  example than a smaller one (caches spilling: mnist1d on a CPU takes 2.1 ms at B=256, 7.9 ms at
  B=512) keeps its time: that is what one pass at that batch costs.
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

DESCRIPTION = ("log-log interpolation of the measured medians, each lowered to the smallest median at a "
               "larger batch; alpha + beta*B outside the measured range")


def bound_medians(points: Iterable[tuple[float, float]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(batches, seconds) sorted by batch, each median lowered to the smallest at any larger batch."""
    pts = sorted((float(b), float(t)) for b, t in points if b > 0 and t > 0 and math.isfinite(t))
    if not pts:
        return (), ()
    b = np.array([p[0] for p in pts])
    t = np.array([p[1] for p in pts])
    t = np.minimum.accumulate(t[::-1])[::-1]       # never more than at a larger batch
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

    Throughput X(B) = B / t(B) is read from the model (so at 2B it is interpolated between
    measurements, and the grid need not be powers of two). Each doubling is judged against the
    best throughput reached at any batch up to B: a batch that is slower per example than a smaller
    one (a dip from caches or a noisy point) is not a reason to go larger. Asking that no later
    doubling gains either (rather than taking the first B where one does not) keeps a stall at
    small B from being the knee. ``None`` when the curve still climbs at the largest B that can be
    doubled within the measured range.
    """
    batches = model.batches
    best = np.maximum.accumulate([model.throughput(b) for b in batches])

    def best_up_to(b: float) -> float:
        return max([model.throughput(b)] + [x for bi, x in zip(batches, best) if bi <= b])

    flat = []  # (B, doubling gains less than `gain`) for every measured B that can be doubled in range
    for b, x in zip(batches, best):
        if 2 * b > batches[-1] * (1 + 1e-9):
            break
        flat.append((int(b), best_up_to(2 * b) < (1.0 + gain) * x))
    found = None
    for b, is_flat in reversed(flat):
        if not is_flat:
            break
        found = b
    return found
