"""The empirical critical batch size from steps-to-target measured at several batch sizes.

McCandlish et al. 2018 (arXiv 1812.06162, eq. 2.11): runs that reach the same loss trade steps S
against examples E = B*S along the hyperbola (S/S_min - 1)(E/E_min - 1) = 1. Substituting E = B*S
gives S(B) = S_min + E_min/B, that is S = S_min (1 + B_crit/B) with B_crit = E_min/S_min.

Steps-to-target scatter multiplicatively (a run that is 10 % slower is 10 % slower at every batch
size), so the fit minimises squared errors of log S. For a fixed B_crit the best log S_min is a mean,
which leaves a one-dimensional search over log B_crit. The interval comes from a residual
bootstrap in log space.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import ConfigError

_GRID = 600          # points of the log B_crit search grid
_SPAN = 1e3          # the grid runs from min(B)/_SPAN to max(B)*_SPAN


@dataclass(frozen=True)
class BcritFit:
    """S_min, E_min and B_crit = E_min/S_min with a ``confidence`` interval on each."""

    s_min: float
    e_min: float
    b_crit: float
    b_crit_low: float
    b_crit_high: float
    s_min_low: float
    s_min_high: float
    e_min_low: float
    e_min_high: float
    confidence: float
    residual_std: float            # of log S, so 0.1 means a typical 10 % miss
    batch_sizes: tuple
    steps: tuple
    at_edge: Optional[str] = None  # 'low' or 'high' when B_crit ran to the edge of what the data can tell

    def steps_at(self, batch_size: float) -> float:
        return self.s_min * (1.0 + self.b_crit / batch_size)

    def examples_at(self, batch_size: float) -> float:
        return batch_size * self.steps_at(batch_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BcritFit":
        return cls(**{**d, "batch_sizes": tuple(d["batch_sizes"]), "steps": tuple(d["steps"])})


def _profile(log_b: np.ndarray, log_s: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every log B_crit on ``grid`` and every row of ``log_s``: the best log S_min and the RSS.

    log_s: (R, n) replicate data; returns (R, G) arrays.
    """
    shape = np.log1p(np.exp(grid[:, None] - log_b[None, :]))       # (G, n): log(1 + B_crit/B)
    offset = log_s[:, None, :] - shape[None, :, :]                   # (R, G, n)
    log_smin = offset.mean(axis=2)                                   # (R, G)
    rss = ((offset - log_smin[..., None]) ** 2).sum(axis=2)          # (R, G)
    return log_smin, rss


def _argmin_refined(grid: np.ndarray, rss: np.ndarray) -> np.ndarray:
    """Per row, the grid minimum refined by a parabola through its neighbours."""
    i = np.clip(rss.argmin(axis=1), 1, len(grid) - 2)
    rows = np.arange(rss.shape[0])
    y0, y1, y2 = rss[rows, i - 1], rss[rows, i], rss[rows, i + 1]
    denom = y0 - 2 * y1 + y2
    shift = np.where(denom > 0, 0.5 * (y0 - y2) / np.where(denom > 0, denom, 1.0), 0.0)
    step = grid[1] - grid[0]
    return grid[i] + np.clip(shift, -1, 1) * step


def fit_bcrit(batch_sizes: Sequence[float], steps: Sequence[float], *, confidence: float = 0.95,
              n_boot: int = 1000, seed: int = 0) -> BcritFit:
    """Fit S(B) = S_min (1 + B_crit/B) to measured steps-to-target; a pure function of its inputs.

    ``batch_sizes`` and ``steps`` pair up; a batch size may repeat (several seeds). At least three
    distinct batch sizes are needed: two parameters, and one more to say anything about the error.
    """
    b = np.asarray(batch_sizes, dtype=np.float64)
    s = np.asarray(steps, dtype=np.float64)
    if b.shape != s.shape or b.ndim != 1:
        raise ConfigError(f"fit_bcrit needs two lists of equal length; "
                          f"got {b.size} batch sizes and {s.size} step counts")
    if not (np.all(np.isfinite(b)) and np.all(b > 0) and np.all(np.isfinite(s)) and np.all(s > 0)):
        raise ConfigError("fit_bcrit needs positive finite batch sizes and step counts; "
                          f"got batch sizes {b.tolist()} and steps {s.tolist()}")
    if len(np.unique(b)) < 3:
        raise ConfigError(f"fitting B_crit needs runs that reached the target at 3 or more batch sizes; got "
                          f"{len(np.unique(b))} ({sorted(set(b.tolist()))}); add batch sizes or lower the target")
    if not 0 < confidence < 1:
        raise ConfigError(f"The 'confidence' parameter must lie in (0, 1). Got {confidence!r} instead.")

    log_b, log_s = np.log(b), np.log(s)
    grid = np.linspace(math.log(b.min() / _SPAN), math.log(b.max() * _SPAN), _GRID)
    _, rss = _profile(log_b, log_s[None, :], grid)
    log_bc = float(_argmin_refined(grid, rss)[0])
    log_smin = float(np.mean(log_s - np.log1p(np.exp(log_bc - log_b))))
    fitted = log_smin + np.log1p(np.exp(log_bc - log_b))
    resid = log_s - fitted
    dof = max(1, len(s) - 2)
    resid_std = float(math.sqrt((resid ** 2).sum() / dof))

    # Residual bootstrap: refit on fitted + resampled residuals (inflated to undo the fit's shrinkage).
    rng = np.random.default_rng(seed)
    scaled = resid * math.sqrt(len(s) / dof)
    reps = fitted[None, :] + rng.choice(scaled, size=(n_boot, len(s)), replace=True)
    log_smin_b, rss_b = _profile(log_b, reps, grid)
    log_bc_b = _argmin_refined(grid, rss_b)
    log_smin_b = (reps - np.log1p(np.exp(log_bc_b[:, None] - log_b[None, :]))).mean(axis=1)
    tail = (1 - confidence) / 2    # probability left in each tail of the interval
    bc_lo, bc_hi = np.exp(np.quantile(log_bc_b, [tail, 1 - tail]))
    sm_lo, sm_hi = np.exp(np.quantile(log_smin_b, [tail, 1 - tail]))
    em = np.exp(log_smin_b + log_bc_b)
    em_lo, em_hi = np.quantile(em, [tail, 1 - tail])

    edge = None
    if log_bc <= grid[1]:
        edge = "low"     # steps do not fall with the batch size: B_crit is below the smallest batch tried
    elif log_bc >= grid[-2]:
        edge = "high"    # steps fall as 1/B throughout: B_crit is above the largest batch tried
    s_min = math.exp(log_smin)
    b_crit = math.exp(log_bc)
    return BcritFit(s_min=s_min, e_min=s_min * b_crit, b_crit=b_crit,
                    b_crit_low=float(bc_lo), b_crit_high=float(bc_hi),
                    s_min_low=float(sm_lo), s_min_high=float(sm_hi),
                    e_min_low=float(em_lo), e_min_high=float(em_hi),
                    confidence=confidence, residual_std=resid_std,
                    batch_sizes=tuple(float(x) for x in b), steps=tuple(float(x) for x in s), at_edge=edge)
