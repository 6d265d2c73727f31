"""The one step-time model: seconds per forward/backward pass of B examples on one device.

Every user of a step time evaluates one :class:`StepTimeModel` with :meth:`StepTimeModel.seconds`:
the profile (``HardwareProfile.step_time``), the recommender and the N-device plan (through
``plan.devices.DataParallelStep``), the adaptive controller, the integrations and the throughput
knee. The model:

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
* ``overhead``: seconds per optimizer step that the grid of bare passes misses (data loading, the
  framework, logging), measured on the real steps of a run (:mod:`batchscope.hardware.realstep`).
  It is paid once per step, whatever the batch and the accumulation; 0 for a profile's own model.

The profile JSON stores the bounded points under ``step_time_model``; they are recomputed from the
measured points on load, so the stored model and the measurements cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Optional

import numpy as np

from ..errors import ConfigError

DESCRIPTION = ("log-log interpolation of the measured medians, each lowered to the smallest median at a "
               "larger batch; alpha + beta*B outside the measured range")

NEED = {"alpha": "a finite number of seconds >= 0 (the fixed cost of a step)",
        "beta": "a finite number of seconds >= 0 (the cost of one more example)"}
BOTH_ZERO = "positive where beta is 0 too (a step that takes no time at any batch cannot be planned with)"


def _is_cost(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def line_problem(alpha, beta) -> Optional[tuple[str, object, str]]:
    """(name, value, what it must be) for the first thing wrong with the line alpha + beta*B, or None.

    Both are costs, so neither may be negative; a line that is zero everywhere predicts free steps,
    and every batch would look equally fast. The one rule for a model and for a saved profile.
    """
    for name, v in (("alpha", alpha), ("beta", beta)):
        if not _is_cost(v):
            return name, v, NEED[name]
    if alpha == 0 and beta == 0:
        return "alpha", alpha, BOTH_ZERO
    return None


def _bounded(points: tuple[tuple[float, float], ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(batches, seconds) sorted by batch, each median lowered to the smallest at any larger batch."""
    if not points:
        return (), ()
    pts = sorted(points)
    b = np.array([p[0] for p in pts])
    t = np.array([p[1] for p in pts])
    t = np.minimum.accumulate(t[::-1])[::-1]       # never more than at a larger batch
    return tuple(b.tolist()), tuple(t.tolist())


def _point(p) -> tuple[float, float]:
    """One measured (batch, median seconds), checked: a positive batch and positive finite seconds."""
    try:
        b, t = p
        ok = all(isinstance(v, Real) and not isinstance(v, bool) and 0 < v < math.inf for v in (b, t))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"The 'measured' parameter of StepTimeModel must hold (batch, median seconds) pairs with "
                          f"a positive batch and positive finite seconds. Got {p!r} instead; drop that point or "
                          "measure it again (`batchscope profile`)")
    return float(b), float(t)


@dataclass(frozen=True)
class StepTimeModel:
    """t(B) in seconds for one pass of B examples on one device; evaluate it with :meth:`seconds`.

    alpha, beta: the fitted line alpha + beta*B (seconds; seconds per example), used outside the
    measured range. measured: ((batch, median seconds), ...), used inside their range (bounded, see
    the module docstring). overhead: seconds added once per optimizer step (see the module
    docstring). Checked once, here: alpha and beta finite and >= 0 and not both zero, every
    measured batch and time positive and finite, the overhead finite and >= 0.
    """

    alpha: float
    beta: float
    measured: tuple = ()                                                 # ((batch, median seconds), ...)
    overhead: float = 0.0                                                # seconds per optimizer step
    batches: tuple = field(init=False, repr=False, compare=False)       # measured batches, ascending
    bounded: tuple = field(init=False, repr=False, compare=False)       # their bounded medians

    def __post_init__(self):
        problem = line_problem(self.alpha, self.beta)
        if problem is not None:
            name, value, need = problem
            raise ConfigError(f"The {name!r} parameter of StepTimeModel must be {need}. Got {value!r} instead; "
                              "take alpha and beta from a hardware profile (StepTimeModel.from_profile, "
                              "`batchscope profile`)")
        if not _is_cost(self.overhead):
            raise ConfigError(f"The 'overhead' parameter of StepTimeModel must be a finite number of seconds >= 0 "
                              f"(the cost of a real step beyond its passes). Got {self.overhead!r} instead; measure "
                              "it on a run's real steps (batchscope.hardware.realstep.fit_overhead)")
        object.__setattr__(self, "overhead", float(self.overhead))
        try:
            points = tuple(_point(p) for p in self.measured)
        except TypeError:
            points = (_point(self.measured),)      # not a sequence of pairs: refused with the same message
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "beta", float(self.beta))
        object.__setattr__(self, "measured", points)
        b, t = _bounded(points)
        object.__setattr__(self, "batches", b)
        object.__setattr__(self, "bounded", t)

    @classmethod
    def from_profile(cls, profile) -> "StepTimeModel":
        """From a :class:`~batchscope.hardware.HardwareProfile` (or anything with alpha, beta and points)."""
        return cls(profile.alpha, profile.beta, tuple((p.batch, p.seconds) for p in getattr(profile, "points", ())))

    def pass_seconds(self, batch: float) -> float:
        """Seconds of one forward/backward pass (with its update) of ``batch`` examples, as the grid measured it."""
        if len(self.batches) < 2 or batch < self.batches[0] or batch > self.batches[-1]:
            return self.alpha + self.beta * batch
        return float(math.exp(np.interp(math.log(batch), np.log(self.batches), np.log(self.bounded))))

    def seconds(self, batch: float, accumulation: int = 1) -> float:
        """Seconds of one optimizer step of ``accumulation`` passes of ``batch`` examples each, on one device,
        unsynchronised: the passes plus the per-step ``overhead``.

        Every pass pays the fixed cost again, so 4 passes of 64 cost 4 t(64), not t(256).
        """
        return accumulation * self.pass_seconds(batch) + self.overhead

    def with_overhead(self, seconds: float) -> "StepTimeModel":
        """The same grid with ``seconds`` added to every optimizer step."""
        return StepTimeModel(self.alpha, self.beta, self.measured, seconds)

    def to_dict(self) -> dict:
        return {"model": DESCRIPTION, "alpha": self.alpha, "beta": self.beta,
                "batches": list(self.batches), "seconds": list(self.bounded), "overhead": self.overhead}


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

    def throughput(b: float) -> float:
        return b / model.seconds(b)

    best = np.maximum.accumulate([throughput(b) for b in batches])

    def best_up_to(b: float) -> float:
        return max([throughput(b)] + [x for bi, x in zip(batches, best) if bi <= b])

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
