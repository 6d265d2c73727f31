"""Means with Student-t confidence intervals over independent replications."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence


def student_t_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with an integer number of degrees of freedom, in closed form
    (Abramowitz & Stegun 26.7.3-4): finite sums of powers of cos(theta), theta = atan(t / sqrt(df))."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:
        if df == 1:
            return 2 * theta / math.pi
        term, total = c, c
        for k in range(3, df - 1, 2):          # next term of cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ...
            term *= (k - 1) / k * c * c
            total += term
        return 2 / math.pi * (theta + s * total)
    term, total = 1.0, 1.0
    for k in range(2, df - 1, 2):              # 1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...
        term *= (k - 1) / k * c * c
        total += term
    return s * total


def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| <= t) = level (so t_{0.975} for level 0.95), by bisection on the exact CDF."""
    lo, hi = 0.0, 1.0
    while student_t_two_sided(hi, df) < level:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if student_t_two_sided(mid, df) < level else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Estimate:
    """Mean of n replications with a two-sided Student-t interval [low, high] at ``level``.
    With one replication (or no spread) the interval has zero width."""

    mean: float
    half_width: float
    n: int
    std: float
    level: float = 0.95

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def covers(self, value: float, rel_tol: float = 1e-9) -> bool:
        """True when ``value`` lies in the interval (widened by rounding error, for exact runs)."""
        slack = rel_tol * max(abs(value), abs(self.mean), 1.0)
        return self.low - slack <= value <= self.high + slack

    @classmethod
    def of(cls, values: Sequence[float], level: float = 0.95) -> "Estimate":
        n = len(values)
        mean = math.fsum(values) / n
        if n < 2:
            return cls(mean, 0.0, n, 0.0, level)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        return cls(mean, t_quantile(level, n - 1) * std / math.sqrt(n), n, std, level)

    def to_dict(self) -> dict:
        return {**asdict(self), "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, d: dict) -> "Estimate":
        return cls(d["mean"], d["half_width"], d["n"], d["std"], d.get("level", 0.95))
