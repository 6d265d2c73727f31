"""The critical batch predicted from a short measuring run, calibrated on the validation suite.

A measuring run of ~5% of a training run sees the simple noise scale B_simple = tr(Σ)/|G|² only
near the start, and B_simple grows as the loss falls (McCandlish et al. 2018, Fig. 5), so the raw
number under-predicts the critical batch B_crit = E_min/S_min that a whole run to the target shows.
Extrapolating a power law of B_simple in the loss from so short a run moved the prediction by
orders of magnitude between seeds (benchmarks/results/suite_calibration.md). What held across the
suite's tasks is a ratio: B_crit ≈ c · B_simple measured over the second half of the measuring run,
c the geometric mean of B_crit / B_simple over the suite's tasks. One factor serves SGD and Adam:
separate factors per optimizer family predicted worse leave-one-task-out (fewer tasks behind each).

The interval has two parts, combined in log space: the sampling noise of the window's estimate
(a bootstrap over its steps) and how far B_crit / (c · B_simple) scattered from task to task in
the suite (the spread of log ratios, as a prediction interval). The second dominates; it is what
makes the stated 90% mean 90% on a model the suite has not seen (checked leave-one-task-out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# benchmarks/suite/calibrate.py ("Constants", all): geometric mean of B_crit / B_simple(window) and the
# standard deviation of log(B_crit / (c B_simple)) over the suite's tasks; tests/test_suite_calibration.py
# recomputes every figure here from the stored suite data. Prose quoting them is built from these names.
SUITE_FACTOR = 3.21
SUITE_LOG_SPREAD = 0.59
SUITE_TASKS = 11
SUITE_COVERED = 9         # tasks whose measured B_crit fell inside the 90% interval, leave-one-task-out
# The same for B_simple over a whole run to the target ("path" estimate), what a controller that keeps
# measuring sees. The adaptive controller plans with it.
LIVE_FACTOR = 2.28
LIVE_LOG_SPREAD = 0.48
LIVE_WITHIN_2X = 9        # tasks predicted within 2x of the measured B_crit, leave-one-task-out
WINDOW_START = 0.5        # the second half of the measuring run: the latest, largest noise scale it saw
CALIBRATION = "benchmarks/results/suite_calibration.md"


def find_calibration() -> str:
    """Where find's factor and interval come from, in words (the figures are the constants above)."""
    return (f"B_crit = {SUITE_FACTOR:.2f} x B_simple, B_simple = tr(Sigma)/|G|^2 over the measuring run's second "
            f"half: {SUITE_FACTOR:.2f} is the geometric mean of B_crit / B_simple over the validation suite's "
            f"{SUITE_TASKS} tasks (B_simple grows as the loss falls, and the measuring run sees only the start of "
            f"training); the interval adds the suite's task-to-task spread of that ratio to the sampling noise, "
            f"and held the measured B_crit on {SUITE_COVERED} of {SUITE_TASKS} tasks left out of the fit "
            f"({CALIBRATION})")


def live_calibration() -> str:
    """The same for the factor a controller applies to B_simple measured along the whole run."""
    return (f"B_crit = {LIVE_FACTOR:.2f} x B_simple averaged over a whole run to the target: the geometric mean "
            f"over the validation suite's {SUITE_TASKS} tasks, within 2x of the measured B_crit on "
            f"{LIVE_WITHIN_2X} of {SUITE_TASKS} left out of the fit ({CALIBRATION})")


@dataclass(frozen=True)
class CriticalBatch:
    value: float          # predicted B_crit
    low: float
    high: float
    level: float
    b_simple: float       # tr(Σ)/|G|² over the window, before the suite's factor
    factor: float
    steps: int            # steps in the window

    def describe(self) -> str:
        return (f"{self.factor:.2f} x B_simple {self.b_simple:.3g} (tr(Sigma)/|G|^2 over the last {self.steps} steps "
                f"of the measuring run); {self.level:.0%} interval from the step-to-step noise and the spread "
                "of B_crit / prediction over the validation suite's tasks")


def ratio_of_sums(g2: Sequence[float], trace: Sequence[float]) -> float:
    """tr(Σ)/|G|² from per-step unbiased estimates: sums first, then the ratio (a mean of per-step
    ratios is biased, DESIGN.md 'Smoothing'). NaN when the summed |G|² or tr(Σ) is not positive."""
    g, t = float(np.sum(g2)), float(np.sum(trace))
    return t / g if g > 0 and t > 0 else math.nan


def window_start(n: int, start: float = WINDOW_START) -> int:
    """Index of the first of ``n`` finite steps in the window (at least two steps stay in it)."""
    return min(int(start * n), max(0, n - 2))


def window(g2: Sequence[float], trace: Sequence[float], start: float = WINDOW_START) -> tuple[np.ndarray, np.ndarray]:
    g2, trace = np.asarray(g2, dtype=float), np.asarray(trace, dtype=float)
    keep = np.isfinite(g2) & np.isfinite(trace)
    g2, trace = g2[keep], trace[keep]
    first = window_start(len(g2), start)
    return g2[first:], trace[first:]


def bootstrap_log_sd(g2: np.ndarray, trace: np.ndarray, n_boot: int = 400, seed: int = 0) -> float:
    """Standard deviation of log(ratio of sums) over resampled steps: the window's sampling noise."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(g2), size=(n_boot, len(g2)))
    g, t = g2[idx].sum(1), trace[idx].sum(1)
    ok = (g > 0) & (t > 0)
    if ok.sum() < n_boot // 2:
        return math.inf
    return float(np.std(np.log(t[ok] / g[ok]), ddof=1))


def predict(g2: Sequence[float], trace: Sequence[float], level: float = 0.9, seed: int = 0) -> CriticalBatch:
    """B_crit from a measuring run's per-step |G|² and tr(Σ) (in step order)."""
    from statistics import NormalDist

    g, t = window(g2, trace)
    raw = ratio_of_sums(g, t)
    if not math.isfinite(raw):
        raise ValueError("the summed |G|^2 or tr(Sigma) over the measuring window is not positive")
    c, spread, k = SUITE_FACTOR, SUITE_LOG_SPREAD, SUITE_TASKS
    z = NormalDist().inv_cdf(0.5 + level / 2)
    # a prediction interval for a new task: the suite's spread, widened for having k tasks behind it
    half = z * math.sqrt(spread ** 2 * (1 + 1 / max(k, 1)) + bootstrap_log_sd(g, t, seed=seed) ** 2)
    value = c * raw
    return CriticalBatch(value=value, low=value * math.exp(-half), high=value * math.exp(half), level=level,
                         b_simple=raw, factor=c, steps=len(g))
