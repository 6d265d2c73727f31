"""Named distributions for random processing times, each parameterised by its mean and its
coefficient of variation (cv = standard deviation / mean), the two numbers people quote for a
process ("about 2 minutes a unit, give or take 30%").

Every distribution draws non-negative times. ``mean_of`` gives the exact mean of the draws, which
is what the closed forms use; for the normal truncated at 0 it is slightly above the nominal mean.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError

DISTRIBUTIONS = ("deterministic", "exponential", "normal", "lognormal", "uniform", "gamma")


def check_distribution(name: str, cv: float, *, where: str = "") -> None:
    """Raise ConfigError unless ``name`` with coefficient of variation ``cv`` is a valid choice."""
    at = f" of {where}" if where else ""
    if name not in DISTRIBUTIONS:
        raise ConfigError(f"The 'distribution' parameter{at} must be one of {', '.join(DISTRIBUTIONS)}. "
                          f"Got {name!r} instead.")
    if not (isinstance(cv, (int, float)) and math.isfinite(cv) and cv >= 0):
        raise ConfigError(f"The 'cv' parameter{at} must be a non-negative finite number. Got {cv!r} instead.")
    if name in ("normal", "lognormal", "gamma") and cv == 0:
        raise ConfigError(f"The '{name}' distribution{at} needs cv > 0 (cv = standard deviation / mean). "
                          f"Got cv=0; use distribution 'deterministic' for fixed times.")
    if name == "deterministic" and cv > 0:
        raise ConfigError(f"A cv of {cv!r}{at} needs a random distribution (exponential, normal, lognormal, "
                          f"uniform, gamma); the distribution is 'deterministic'.")
    if name == "exponential" and cv not in (0, 1):
        raise ConfigError(f"The exponential distribution{at} has cv = 1. Got cv={cv!r}; leave cv out or pick "
                          f"normal, lognormal, uniform or gamma for another spread.")
    if name == "uniform" and not 0 < cv <= 1 / math.sqrt(3):
        raise ConfigError(f"The 'uniform' distribution{at} needs 0 < cv <= 1/sqrt(3) = 0.577 so that times "
                          f"stay >= 0. Got cv={cv!r} instead.")


def is_random(name: str) -> bool:
    return name != "deterministic"


def draw(name: str, mean: float, cv: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` processing times with the given mean and cv (the exponential ignores cv: its cv is 1)."""
    if name == "deterministic" or mean == 0:
        return np.full(size, float(mean))
    if name == "exponential":
        return rng.exponential(mean, size)
    if name == "normal":
        # Truncated at 0 by rejection: redraw the negatives (rare unless cv > 0.5).
        x = rng.normal(mean, cv * mean, size)
        bad = x < 0
        while bad.any():
            x[bad] = rng.normal(mean, cv * mean, int(bad.sum()))
            bad = x < 0
        return x
    if name == "lognormal":
        sigma2 = math.log1p(cv * cv)
        return rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), size)
    if name == "uniform":
        half = math.sqrt(3) * cv * mean
        return rng.uniform(mean - half, mean + half, size)
    if name == "gamma":
        shape = 1 / (cv * cv)
        return rng.gamma(shape, mean / shape, size)
    raise ConfigError(f"unknown distribution {name!r}; choose one of {', '.join(DISTRIBUTIONS)}")


def mean_of(name: str, mean: float, cv: float) -> float:
    """Exact mean of :func:`draw`. Only the normal truncated at 0 differs from ``mean``:
    E[X | X > 0] = mu + sigma * phi(a) / Phi(a) with a = mu / sigma (Johnson, Kotz & Balakrishnan)."""
    if name != "normal" or mean == 0:
        return float(mean)
    sigma = cv * mean
    a = mean / sigma
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    big_phi = 0.5 * (1 + math.erf(a / math.sqrt(2)))
    return mean + sigma * phi / big_phi
