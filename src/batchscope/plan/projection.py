"""How many examples a full run to the target needs, projected from the start of one.

The measuring run should cost a small fraction (default 5%) of a full run, which is not known in
advance. We track progress toward the target, p = (value - start) / (target - start), at each
evaluation and fit p = a + b ln(examples) on the later half of the evaluations made so far: progress
is close to linear in the logarithm of the examples seen, and the later half matters because
progress curves are concave (a fast start would otherwise promise an early finish, and a plateau
would go unnoticed). The projected run length is
where the line reaches p = 1. The projection is rough (it is an extrapolation), so it is reported
with the progress made; the budget only needs it to the right factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class Projection:
    examples: float          # projected examples to reach the target (inf: not approaching it)
    progress: float          # progress made so far, 0 at the start, 1 at the target
    points: int              # evaluations behind the fit


def progress(value: float, start: float, target: float) -> float:
    if target == start:
        return 1.0
    return (value - start) / (target - start)


def later_line(examples: Sequence[float], values: Sequence[float]) -> Optional[tuple[float, float, float, int]]:
    """values = a + b ln(examples) by least squares over the later half of the points (at least four):
    (a, b, standard error of b, points used), or None when there are too few points or no spread."""
    recent = list(zip(examples, values))[-max(4, len(examples) // 2):]
    if len(recent) < 4:
        return None
    x = np.log([e for e, _ in recent])
    y = np.array([v for _, v in recent])
    if np.ptp(x) == 0:
        return None
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    se = math.sqrt(float(resid @ resid) / (len(x) - 2) / float(((x - x.mean()) ** 2).sum()))
    return float(a), float(b), se, len(recent)


def project_examples(examples: Sequence[float], values: Sequence[float], start: float, target: float) -> Projection:
    """Fit progress against ln(examples) over the later half of the evaluations (at least four);
    extrapolate to 1. Infinite when the slope is not clearly positive."""
    pts = [(e, progress(v, start, target)) for e, v in zip(examples, values) if e > 0 and math.isfinite(v)]
    if not pts:
        return Projection(math.inf, 0.0, 0)
    latest = pts[-1][1]
    if latest >= 1.0:
        return Projection(float(pts[-1][0]), latest, len(pts))
    line = later_line([e for e, _ in pts], [p for _, p in pts])
    if line is None:
        return Projection(math.inf, latest, len(pts))
    a, b, se, _ = line
    # Progress must be measurable: a slope within two standard errors of zero is a plateau with noise.
    log_e = (1.0 - a) / b if b > max(2 * se, 1e-9) else math.inf
    if log_e > math.log(1e15):  # flat or falling: no finite run reaches the target at this pace
        return Projection(math.inf, latest, len(pts))
    return Projection(float(math.exp(log_e)), latest, len(pts))


def loss_after(examples: Sequence[float], losses: Sequence[float],
               at_examples: float) -> Optional[tuple[float, float, float, int]]:
    """The loss projected at ``at_examples`` from ln(loss) = a + b ln(examples) over the later half of the
    evaluations (the form :func:`project_examples` assumes): (loss, a, b, points), or None while the loss
    is not clearly falling (a slope within two standard errors of zero, or rising)."""
    pts = [(e, math.log(v)) for e, v in zip(examples, losses) if e > 0 and v is not None and v > 0 and math.isfinite(v)]
    line = later_line([e for e, _ in pts], [v for _, v in pts])
    if line is None:
        return None
    a, b, se, n = line
    if not b < -max(2 * se, 1e-9):
        return None
    return math.exp(a + b * math.log(at_examples)), a, b, n


def loss_at_metric(metrics: Sequence[float], losses: Sequence[float],
                   target_metric: float) -> Optional[tuple[float, float, float]]:
    """Fit ln(loss) = c + d * metric and read the loss at ``target_metric``: (loss, c, d).

    Loss curves are smooth where accuracy is noisy near its target, so both the projection and the
    noise-scale extrapolation work in loss units; this is the bridge for metric targets. Returns
    None when the points cannot support it (fewer than three, no spread, or a loss that does not
    fall as the metric rises).
    """
    pts = [(m, loss) for m, loss in zip(metrics, losses) if m is not None and loss is not None and loss > 0
           and math.isfinite(m) and math.isfinite(loss)]
    if len(pts) < 3:
        return None
    m = np.array([a for a, _ in pts])
    y = np.log([b for _, b in pts])
    if np.ptp(m) < 1e-6:
        return None
    d, c = np.polyfit(m, y, 1)
    if d >= 0:
        return None
    return float(math.exp(c + d * target_metric)), float(c), float(d)
