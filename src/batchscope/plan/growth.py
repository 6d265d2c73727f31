"""How the noise scale grows as the loss falls, and what it will be at the target loss.

Kaplan et al. 2020 (arXiv 2001.08361, eq. 5.4) found the critical batch follows a power law in the
loss, B_crit(L) = B_* / L^(1/alpha_B). We fit the same form to noise-scale measurements taken along
a short run, log B_simple = a + k log L, and extrapolate to the target loss.

Each window's B_simple is a ratio of averages (mean tr(Sigma) / mean |G|^2 over the window's steps),
never an average of per-step ratios, which is biased (docs/design.md, "Smoothing"). The interval comes
from a bootstrap that resamples steps within each window and refits: it covers the sampling noise
of the gradient statistics, not a wrong choice of functional form (said in every report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Window:
    loss: float          # mean training loss over the window
    g2: float            # mean unbiased estimate of |G|^2
    trace: float         # mean unbiased estimate of tr(Sigma)
    n: int               # steps in the window

    @property
    def b_simple(self) -> float:
        return self.trace / self.g2 if self.g2 > 0 and self.trace > 0 else math.nan


@dataclass(frozen=True)
class GrowthFit:
    intercept: float     # a in log B = a + k log L
    slope: float         # k; negative when B_simple grows as the loss falls
    windows: tuple[Window, ...]
    constant: bool       # True when too few usable windows forced k = 0

    def predict(self, loss: float) -> float:
        return math.exp(self.intercept + self.slope * math.log(loss))


@dataclass(frozen=True)
class Prediction:
    loss: float
    value: float
    low: float
    high: float
    level: float
    extrapolation: float  # how far beyond the measured loss range, as a ratio (1.0: inside it)


def make_windows(losses: Sequence[float], g2: Sequence[float], trace: Sequence[float], n_windows: int) -> list[Window]:
    """Split per-step estimates (in step order) into ``n_windows`` contiguous windows of equal size."""
    losses, g2, trace = (np.asarray(a, dtype=float) for a in (losses, g2, trace))
    n = len(losses)
    if n == 0:
        return []
    edges = np.linspace(0, n, min(n_windows, n) + 1).round().astype(int)
    return [Window(float(losses[a:b].mean()), float(g2[a:b].mean()), float(trace[a:b].mean()), int(b - a))
            for a, b in zip(edges[:-1], edges[1:]) if b > a]


def fit_growth(windows: Sequence[Window], min_windows: int = 3) -> GrowthFit:
    """Least squares of log B_simple on log loss, weighting each window by its number of steps."""
    usable = [w for w in windows if math.isfinite(w.b_simple) and w.loss > 0]
    if not usable:
        raise ValueError("no window has a positive |G|^2 and tr(Sigma) estimate; measure over more steps")
    x = np.log([w.loss for w in usable])
    y = np.log([w.b_simple for w in usable])
    wts = np.array([w.n for w in usable], dtype=float)
    if len(usable) < min_windows or np.ptp(x) < 1e-3:
        return GrowthFit(float(np.average(y, weights=wts)), 0.0, tuple(windows), True)
    slope, intercept = np.polyfit(x, y, 1, w=np.sqrt(wts))
    return GrowthFit(float(intercept), float(slope), tuple(windows), False)


def bootstrap_fits(losses: Sequence[float], g2: Sequence[float], trace: Sequence[float], n_windows: int = 6,
                   n_boot: int = 400, seed: int = 0) -> list[GrowthFit]:
    """Refit on ``n_boot`` resamples that draw steps with replacement inside each window."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a, dtype=float) for a in (losses, g2, trace)]
    edges = np.linspace(0, len(arrays[0]), min(n_windows, len(arrays[0])) + 1).round().astype(int)
    fits = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.integers(a, b, b - a) for a, b in zip(edges[:-1], edges[1:]) if b > a])
        try:
            fits.append(fit_growth(make_windows(*(a[idx] for a in arrays), n_windows)))
        except ValueError:
            continue
    return fits


def interval(draws: Sequence[float], level: float) -> tuple[float, float]:
    draws = [d for d in draws if math.isfinite(d)]
    if len(draws) < 20:
        return math.nan, math.nan
    q = (1 - level) / 2
    return float(np.quantile(draws, q)), float(np.quantile(draws, 1 - q))


def prediction_at(fit: GrowthFit, boots: Sequence[GrowthFit], target_loss: float, level: float = 0.9) -> Prediction:
    """B_simple at ``target_loss`` from ``fit``, with the interval of the bootstrap refits ``boots``."""
    if not target_loss > 0:
        raise ValueError(f"the target loss must be positive to use the power law, got {target_loss}")
    low, high = interval([b.predict(target_loss) for b in boots], level)
    measured = [w.loss for w in fit.windows if w.loss > 0]
    lo_l, hi_l = min(measured), max(measured)
    extrapolation = lo_l / target_loss if target_loss < lo_l else (target_loss / hi_l if target_loss > hi_l else 1.0)
    return Prediction(target_loss, fit.predict(target_loss), low, high, level, extrapolation)


def curve(fit: GrowthFit, target_loss: float, points: int = 50) -> dict:
    """The fitted law evaluated from the target loss to the largest measured loss (what plots draw)."""
    measured = [w.loss for w in fit.windows if w.loss > 0 and math.isfinite(w.b_simple)]
    if not measured:
        return {"loss": [], "b_simple": []}
    grid = np.geomspace(min(target_loss, min(measured)), max(measured), points)
    return {"loss": grid.tolist(), "b_simple": [fit.predict(x) for x in grid]}


def anchored(fit: GrowthFit, at_loss: float, value: float):
    """The fitted law's shape through (``at_loss``, ``value``): value * (L / at_loss)^slope.

    `find` anchors it at the predicted B_crit and the loss of the window that B_crit was measured on,
    so the growth schedule uses the planner's one B_crit there and the law only for how it changes.
    """
    def at(loss: float) -> float:
        return value * math.exp(fit.slope * (math.log(loss) - math.log(at_loss)))
    return at


def schedule_losses(start_loss: float, end_loss: float, levels: int = 6) -> list[float]:
    """Loss levels evenly spaced in log L from ``start_loss`` down to ``end_loss`` (one level when not falling)."""
    if not end_loss < start_loss:
        return [end_loss]
    out = [float(x) for x in np.exp(np.linspace(math.log(start_loss), math.log(end_loss), levels))]
    return out[:-1] + [end_loss]   # exactly the end: the anchor of :func:`anchored` reproduces its value there
