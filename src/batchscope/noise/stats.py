"""The statistics of the gradient noise scale: pure functions and small result objects.

Notation as in McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training",
arXiv 1812.06162): G the full-data gradient, Σ the per-example gradient covariance,
B_simple = tr(Σ) / |G|². Nothing here imports torch; numbers in, numbers and frozen dataclasses out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import NormalDist
from typing import NamedTuple, Optional, Sequence

from ..errors import BatchscopeError, ConfigError
from ..serialize import fields_to_dict, from_dict

METHODS = ("microbatch", "dataparallel", "exact")
DEFAULT_LEVEL = 0.90
DEFAULT_DECAY = 0.95


class NoiseError(BatchscopeError):
    """The noise scale cannot be measured as asked (wrong estimator for the model, no usable steps)."""


def two_batch(small_sq: float, big_sq: float, b_small: float, b_big: float) -> tuple[float, float]:
    """Unbiased |G|² and tr(Σ) from squared norms of gradients averaged over two batch sizes.

    ``small_sq`` is |g_b|² (or its mean over several small batches), ``big_sq`` is |g_B|²,
    b < B. From E|g_b|² = |G|² + tr(Σ)/b (McCandlish et al. 2018, App. A.1):
    |G|² = (B|g_B|² − b|g_b|²)/(B − b) and tr(Σ) = (|g_b|² − |g_B|²)/(1/b − 1/B).
    Either may come out negative on one step; only their averages are meaningful.
    """
    if not b_small < b_big:
        raise ConfigError(f"two-batch estimate needs a small batch below the big one; got b={b_small}, B={b_big}")
    g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


def per_example(sum_sq: float, mean_sq: float, n: int) -> tuple[float, float]:
    """Unbiased |G|² and tr(Σ) from n per-example gradients g_j.

    ``sum_sq`` = Σ_j |g_j|², ``mean_sq`` = |ḡ|². tr(Σ) is the unbiased sample variance summed over
    coordinates, (Σ|g_j|² − n|ḡ|²)/(n − 1); |G|² = |ḡ|² − tr(Σ)/n removes the noise in |ḡ|².
    """
    if n < 2:
        raise NoiseError(f"the per-example estimate needs at least 2 examples per batch; got {n}")
    trace = (sum_sq - n * mean_sq) / (n - 1)
    return mean_sq - trace / n, trace


def ratio(trace: float, g2: float) -> float:
    """B_simple = tr(Σ)/|G|²; +inf when the gradient signal is not (yet) distinguishable from zero."""
    if not (math.isfinite(trace) and math.isfinite(g2)):
        return math.nan
    return trace / g2 if g2 > 0 else math.inf


@lru_cache(maxsize=8)
def _z(level: float) -> float:
    """Two-sided standard normal quantile for coverage ``level``."""
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def fieller_interval(mean_t: float, mean_g: float, var_t: float, var_g: float, cov_tg: float,
                     level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Fieller's confidence interval for the ratio mean_t/mean_g of two jointly normal means.

    ``var_*`` and ``cov_tg`` are (co)variances *of the means*. Unlike the delta method it stays
    honest when the denominator is barely above zero (early in training the signal |G|² can be
    lost in the noise): the set then becomes unbounded and ``high`` is +inf. The ratio is a noise
    scale, so the interval is clipped at 0 from below.
    """
    z2 = _z(level) ** 2
    a = mean_g * mean_g - z2 * var_g
    b = -2.0 * (mean_t * mean_g - z2 * cov_tg)
    c = mean_t * mean_t - z2 * var_t
    disc = b * b - 4.0 * a * c
    if a > 0 and disc >= 0:
        r = math.sqrt(disc)
        lo, hi = (-b - r) / (2 * a), (-b + r) / (2 * a)
        return max(0.0, lo), max(0.0, hi)
    if a < 0 and disc > 0:
        # The set is (-inf, r1] U [r2, inf): no upper bound; on [0, inf) it starts at 0 if r1 >= 0.
        r = math.sqrt(disc)
        r1, r2 = sorted(((-b - r) / (2 * a), (-b + r) / (2 * a)))
        return (0.0 if r1 >= 0 else max(0.0, r2)), math.inf
    return 0.0, math.inf  # the data cannot bound the ratio at all


class RawSample(NamedTuple):
    """One step's unbiased estimates (before smoothing); what a planner fits over windows."""

    step: int
    loss: float
    g2: float
    trace: float


@dataclass(frozen=True)
class NoisePoint:
    """The smoothed state after one step: EMA of |G|², tr(Σ) and loss, their ratio and its interval."""

    step: int
    loss: float
    g2: float
    trace: float
    b_simple: float
    low: float
    high: float
    n_samples: int

    def to_dict(self) -> dict:
        return fields_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NoisePoint":
        return from_dict(cls, d)


@dataclass(frozen=True)
class NoiseEstimate:
    """B_simple with a ``level`` (default 90%) Fieller interval [low, high] and what it rests on.

    ``g2`` and ``trace`` are the smoothed |G|² and tr(Σ); ``n_samples`` the finite steps averaged
    (``n_effective`` their EMA-weighted effective number); ``skipped`` the non-finite steps left out.
    ``batch_small``/``batch_big`` are the two batch sizes compared (per-example: 1 and B).
    """

    b_simple: float
    low: float
    high: float
    g2: float
    trace: float
    method: str
    n_samples: int
    level: float = DEFAULT_LEVEL
    n_effective: float = 0.0
    skipped: int = 0
    batch_small: int = 0
    batch_big: int = 0
    preconditioned: bool = False
    layers: Optional[dict] = field(default=None, compare=False)  # name -> {g2, trace, b_simple}
    caveats: tuple[str, ...] = ()       # what a reader should know about this estimate (batch-coupled layers)

    def to_dict(self) -> dict:
        return fields_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseEstimate":
        return from_dict(cls, d)

    def describe(self) -> str:
        hi = "inf" if math.isinf(self.high) else f"{self.high:.4g}"
        return (f"B_simple = {self.b_simple:.4g} ({self.level:.0%} interval {self.low:.4g} .. {hi}; "
                f"{self.n_samples} steps, {self.method})")


class WeightedMoments:
    """Exponentially weighted first and second moments of paired per-step estimates (t_i, g_i).

    Weights w_i = decay^(n−i), so the weighted means equal bias-corrected EMAs (Adam-style bias
    correction: dividing by Σw instead of 1). The weighted (co)variances, divided by the effective
    sample size n_eff = (Σw)²/Σw², give the variance of those means for Fieller's interval.
    The per-step estimates are treated as independent (each step draws a fresh batch); parameter
    drift is what the forgetting factor handles. ``decay=1`` is a plain running mean.
    """

    def __init__(self, decay: float = DEFAULT_DECAY):
        # decay = 0 would keep only the last step: one sample has no variance, so no interval.
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay <= 1.0:
            raise ConfigError(f"The 'decay' parameter must be in (0, 1] (1 weighs all steps equally, 0.95 "
                              f"about the last 40). Got {decay!r} instead.")
        self.decay = decay
        self.n = 0
        self._w = self._w2 = self._t = self._g = self._tt = self._gg = self._tg = self._loss = 0.0

    def update(self, trace: float, g2: float, loss: float = math.nan) -> None:
        d = self.decay
        self.n += 1
        self._w = d * self._w + 1.0
        self._w2 = d * d * self._w2 + 1.0
        self._t = d * self._t + trace
        self._g = d * self._g + g2
        self._tt = d * self._tt + trace * trace
        self._gg = d * self._gg + g2 * g2
        self._tg = d * self._tg + trace * g2
        self._loss = d * self._loss + loss

    _STATE = ("n", "_w", "_w2", "_t", "_g", "_tt", "_gg", "_tg", "_loss")

    def state_dict(self) -> dict:
        """The decay and the weighted sums: enough to resume exactly where the moments stood."""
        return {"decay": self.decay, **{k.lstrip("_"): getattr(self, k) for k in self._STATE}}

    def load_state_dict(self, state: dict) -> None:
        if state["decay"] != self.decay:
            raise ConfigError(f"the saved moments were smoothed with decay {state['decay']!r}, this monitor uses "
                              f"{self.decay!r}; create the monitor with decay={state['decay']!r} to resume")
        for k in self._STATE:
            setattr(self, k, type(getattr(self, k))(state[k.lstrip("_")]))

    @property
    def n_effective(self) -> float:
        return self._w * self._w / self._w2 if self.n else 0.0

    def means(self) -> tuple[float, float, float]:
        """(trace, g2, loss) weighted means."""
        if not self.n:
            return math.nan, math.nan, math.nan
        return self._t / self._w, self._g / self._w, self._loss / self._w

    def variances_of_means(self) -> tuple[float, float, float]:
        """(var t̄, var ḡ, cov(t̄, ḡ)) with the reliability-weights correction; nan below 2 samples."""
        if self.n < 2:
            return math.nan, math.nan, math.nan
        t, g, _ = self.means()
        n_eff = self.n_effective
        correction = n_eff / (n_eff - 1.0)  # unbiased weighted variance: 1/(1 − Σw²/(Σw)²)
        vt = max(0.0, self._tt / self._w - t * t) * correction
        vg = max(0.0, self._gg / self._w - g * g) * correction
        ctg = (self._tg / self._w - t * g) * correction
        return vt / n_eff, vg / n_eff, ctg / n_eff

    def estimate(self, method: str, level: float = DEFAULT_LEVEL, **extra) -> NoiseEstimate:
        t, g, _ = self.means()
        b = ratio(t, g)
        if self.n >= 2:
            low, high = fieller_interval(t, g, *self.variances_of_means(), level=level)
        else:
            low, high = 0.0, math.inf
        return NoiseEstimate(b_simple=b, low=low, high=high, g2=g, trace=t, method=method, n_samples=self.n,
                             level=level, n_effective=self.n_effective, **extra)


def estimate_from_samples(g2: Sequence[float], trace: Sequence[float], method: str = "microbatch",
                          level: float = DEFAULT_LEVEL, decay: float = 1.0, **extra) -> NoiseEstimate:
    """B_simple over a window of per-step estimates: ratio of the averages, with its interval.

    ``decay=1`` weighs the window equally (the planner's windows); non-finite pairs are skipped
    and counted in ``skipped``.
    """
    if len(g2) != len(trace):
        raise ConfigError(f"g2 and trace must have the same length; got {len(g2)} and {len(trace)}")
    m = WeightedMoments(decay)
    skipped = 0
    for g, t in zip(g2, trace):
        if math.isfinite(g) and math.isfinite(t):
            m.update(t, g)
        else:
            skipped += 1
    extra.setdefault("skipped", skipped)
    return m.estimate(method, level, **extra)
