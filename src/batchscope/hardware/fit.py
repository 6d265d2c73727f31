"""The pure numbers of a hardware profile: straight-line fits.

Two lines describe a device for one model: memory(B) = m0 + m1*B (bytes) and the step time
t(B) = alpha + beta*B (seconds). alpha is the fixed cost of a step (kernel launches, the optimizer
update, synchronisation), beta the cost of one more example (docs/design.md, "Step time"). The line
is the part of the one step-time model (:mod:`batchscope.hardware.steptime`) used outside the
measured range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class LinearFit:
    """y ≈ intercept + slope*x by (weighted) least squares."""

    intercept: float
    slope: float
    r2: float                         # coefficient of determination, with the fit's own weights
    residuals: tuple[float, ...]      # y - prediction, at each input point, in the order given
    n: int

    def __call__(self, x: float) -> float:
        return self.intercept + self.slope * x

    def solve(self, y: float) -> float:
        """The x where the line reaches y (inf when the line is flat or falls)."""
        if self.slope <= 0:
            return math.inf
        return (y - self.intercept) / self.slope


def fit_line(x: Sequence[float], y: Sequence[float], weights: Optional[Sequence[float]] = None) -> LinearFit:
    """Least-squares line through (x, y), minimising sum(w * residual**2).

    Two points give the exact line through them (r2 = 1); a line needs two distinct x values.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ConfigError(f"fit_line needs two equally long 1-D sequences; got {xs.shape} and {ys.shape}")
    if len(np.unique(xs)) < 2:
        raise ConfigError(f"a straight-line fit needs at least two distinct x values; got {xs.tolist()}")
    w = np.ones_like(xs) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != xs.shape or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ConfigError(f"fit_line weights must be positive and one per point; got {np.asarray(weights).tolist()}")
    sw = w.sum()
    xm, ym = (w * xs).sum() / sw, (w * ys).sum() / sw
    sxx = (w * (xs - xm) ** 2).sum()
    slope = float((w * (xs - xm) * (ys - ym)).sum() / sxx)
    intercept = float(ym - slope * xm)
    resid = ys - (intercept + slope * xs)
    ss_tot = float((w * (ys - ym) ** 2).sum())
    ss_res = float((w * resid**2).sum())
    r2 = 1.0 if ss_tot == 0 else 1.0 - ss_res / ss_tot
    return LinearFit(intercept, slope, r2, tuple(float(r) for r in resid), len(xs))


def fit_step_time(batches: Sequence[int], seconds: Sequence[float]) -> LinearFit:
    """t(B) = alpha + beta*B, fitted on *relative* error (weights 1/t**2).

    Timing noise grows roughly in proportion to the time itself, so an unweighted fit would let the
    slowest, largest batches decide alpha; relative weighting keeps the small-batch end honest.
    Neither coefficient is negative (see below).
    """
    t = np.asarray(seconds, dtype=np.float64)
    if np.any(~np.isfinite(t)) or np.any(t <= 0):
        raise ConfigError(f"step times must be positive finite seconds; got {t.tolist()}")
    w = 1.0 / t**2
    fit = fit_line(batches, t, w)
    if fit.intercept >= 0 and fit.slope >= 0:
        return fit
    # alpha and beta are costs (StepTimeModel refuses a negative one). Noisy timings of a flat curve
    # can tilt the free line below zero; the least-squares line with both >= 0 then lies on an edge:
    # flat (beta = 0, alpha the weighted mean) or through the origin (alpha = 0), whichever fits better.
    b = np.asarray(batches, dtype=np.float64)
    edges = [_line_with(b, t, w, float((w * t).sum() / w.sum()), 0.0),
             _line_with(b, t, w, 0.0, float((w * b * t).sum() / (w * b * b).sum()))]
    return min(edges, key=lambda f: float((w * np.square(f.residuals)).sum()))


def _line_with(x: np.ndarray, y: np.ndarray, w: np.ndarray, intercept: float, slope: float) -> LinearFit:
    """A given line's fit to (x, y): residuals and R^2 with the weights ``w``, as :func:`fit_line` reports them."""
    resid = y - (intercept + slope * x)
    ym = (w * y).sum() / w.sum()
    ss_tot = float((w * (y - ym) ** 2).sum())
    r2 = 1.0 if ss_tot == 0 else 1.0 - float((w * resid**2).sum()) / ss_tot
    return LinearFit(intercept, slope, r2, tuple(float(r) for r in resid), len(x))


def knee_from_line(alpha: float, beta: float, gain: float = 0.10) -> Optional[float]:
    """Batch size beyond which doubling B raises throughput by less than ``gain``, for t = alpha + beta*B.

    Throughput X(B) = B / (alpha + beta*B), so X(2B)/X(B) = 2(alpha + beta*B)/(alpha + 2*beta*B), which
    falls below 1 + gain once B > (1 - gain)*alpha / (2*gain*beta)  (4.5 alpha/beta for 10%).
    """
    if beta <= 0:
        return None
    return max(0.0, (1.0 - gain) * alpha / (2.0 * gain * beta))
