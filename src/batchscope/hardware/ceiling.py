"""The memory ceiling: the largest batch whose training step fits a memory budget.

The search takes a *probe*, ``Callable[[int], ProbeResult]``: run one real training step at batch B
and say how much memory it took (or that it ran out). The search itself is pure, so it is tested with
fake probes; the PyTorch probes live in :mod:`batchscope.hardware.memory`.

Instead of trial-and-error (double until it fails, then bisect; one failure per doubling and
~2·log2(B) steps in all), :func:`find_ceiling` fits memory(B) = m0 + m1·B on a few small probes,
predicts the ceiling, confirms it with one real step and refines from the line through the probes
nearest the budget. Aiming a little under the budget keeps steps that overshoot rare.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from ..errors import BatchscopeError, check_positive_int
from .fit import LinearFit, fit_line
from .units import format_bytes


class MemoryBudgetError(BatchscopeError):
    """The model does not fit the memory budget even at batch size 1."""


@dataclass(frozen=True)
class ProbeResult:
    """One real training step at ``batch``: its peak memory in bytes, or ``oom`` when it ran out."""

    batch: int
    peak_bytes: Optional[int]
    oom: bool = False

    def fits(self, budget: int) -> bool:
        return not self.oom and self.peak_bytes is not None and self.peak_bytes <= budget

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeResult":
        return cls(int(d["batch"]), None if d.get("peak_bytes") is None else int(d["peak_bytes"]), bool(d.get("oom")))


Probe = Callable[[int], ProbeResult]

LIMITS = ("memory", "data set", "max_batch")


@dataclass(frozen=True)
class Ceiling:
    """Outcome of a ceiling search."""

    max_batch: int
    limited_by: str                        # memory | data set | max_batch
    budget: int
    probes: tuple[ProbeResult, ...]        # in the order they ran
    fit: Optional[LinearFit] = None        # memory(B) over every probe with a measured peak
    first_prediction: Optional[int] = None  # what the fit on the small probes alone predicted

    @property
    def steps(self) -> int:
        return len(self.probes)

    @property
    def over_budget(self) -> int:
        """Probe steps that ran out of memory or exceeded the budget."""
        return sum(not p.fits(self.budget) for p in self.probes)


def _check(result: ProbeResult, batch: int) -> ProbeResult:
    if not isinstance(result, ProbeResult) or result.batch != batch:
        raise TypeError(f"a probe must return ProbeResult(batch={batch}, ...); got {result!r}")
    return result


def fit_memory(probes) -> Optional[LinearFit]:
    """memory(B) = m0 + m1*B by least squares over every probe with a measured peak."""
    pts = {p.batch: p.peak_bytes for p in probes if p.peak_bytes is not None and not p.oom}
    if len(pts) < 2:
        return None
    xs = sorted(pts)
    return fit_line(xs, [pts[b] for b in xs])


def _local_line(probes, budget: int) -> Optional[LinearFit]:
    """Line through the (up to) three measured probes nearest the budget, for the next guess.

    Memory is close to linear in B but not exactly (allocator rounding, kernels that change with the
    shape), so near the ceiling a local secant beats the global fit.
    """
    pts = {p.batch: p.peak_bytes for p in probes if p.peak_bytes is not None and not p.oom}
    if len(pts) < 2:
        return None
    near = sorted(pts, key=lambda b: abs(pts[b] - budget))[:3]
    if len(set(near)) < 2:
        return None
    line = fit_line(near, [pts[b] for b in near])
    return line if line.slope > 0 else None


def _straight(probes, rel: float = 0.02) -> bool:
    """Whether the last three measured probes (by batch size) lie on one line: the two slopes
    between them agree within ``rel``."""
    pts = sorted((p.batch, p.peak_bytes) for p in probes if p.peak_bytes is not None and not p.oom)[-3:]
    if len(pts) < 3:
        return False
    (b0, m0), (b1, m1), (b2, m2) = pts
    s1, s2 = (m1 - m0) / (b1 - b0), (m2 - m1) / (b2 - b1)
    return s2 > 0 and abs(s2 - s1) <= rel * s2


# Long on purpose: the two phases of one search share its record of probes and its bracket [lo, hi];
# the docstring walks through it step by step.
def find_ceiling(probe: Probe, budget: int, limit: int, *, limit_reason: str = "data set", start: int = 2,
                 growth: int = 4, tol: float = 0.01, aim: float = 0.995, bracket: float = 0.02,
                 max_over: int = 2, max_ratio: float = 1.5, max_steps: int = 16,
                 multiple: int = 1, smallest: int = 1) -> Ceiling:
    """Largest batch size ≤ ``limit`` whose probe step fits ``budget`` bytes.

    1. Probe ``start``, ``start*growth``, ... until the probes span enough memory to fit a line
       (a quarter of the headroom, or 16 MiB), stopping early where the fit says the next probe
       would not fit.
    2. Predict the batch that fills the budget, probe ``aim`` times it (a little under, so that
       noise rarely pushes the confirming step over), and repeat from the line through the
       probes nearest the budget until the prediction is within ``tol`` of the largest batch that
       fitted, a failing and a fitting probe are within ``bracket`` of each other (so the answer
       is within that of the true ceiling), or ``max_over`` steps have gone over budget (on a
       GPU each is an out-of-memory error; the answer is then the largest batch that fitted).
       Before any step has failed, and unless the last probes lie on one line, a guess goes at
       most ``max_ratio`` times past the largest batch that fitted: a slope measured at small
       batches can be off by several percent.

    ``smallest``: the smallest batch the model can train on (2 with BatchNorm); never probed below.
    ``multiple``: the answer is rounded down to a multiple of it (8 under mixed precision on CUDA,
    where tensor cores want it) when the ceiling is at least that large.
    """
    budget = check_positive_int("budget", int(budget), where="find_ceiling")
    limit = check_positive_int("limit", int(limit), where="find_ceiling")
    multiple = check_positive_int("multiple", int(multiple), where="find_ceiling")
    if limit_reason not in LIMITS:
        raise ValueError(f"limit_reason must be one of {LIMITS}, got {limit_reason!r}")
    probes: list[ProbeResult] = []
    tried: dict[int, ProbeResult] = {}

    def run(b: int) -> ProbeResult:
        if b not in tried:
            tried[b] = _check(probe(b), b)
            probes.append(tried[b])
        return tried[b]

    def done(lo: int, hi: Optional[int], first: Optional[int]) -> Ceiling:
        best = lo if lo < multiple else lo - lo % multiple
        reason = limit_reason if hi is None and lo == limit else "memory"
        return Ceiling(best, reason, budget, tuple(probes), fit_memory(probes), first)

    # Phase 1: a few small probes, growing geometrically.
    b = min(max(start, smallest), limit)
    r = run(b)
    if not r.fits(budget):
        r1 = run(smallest) if b > smallest else r
        if not r1.fits(budget):
            need = "more memory than is available" if r1.peak_bytes is None else format_bytes(r1.peak_bytes)
            raise MemoryBudgetError(
                f"the model does not fit the memory budget even at batch size {r1.batch}: one training step needs "
                f"{need}, the budget is {format_bytes(budget)}; raise the budget (--memory-budget), "
                "use a smaller model, or train in lower precision")
        lo, hi = smallest, b
    else:
        lo, hi = b, None
        base = r.peak_bytes
        while lo < limit:
            span = tried[lo].peak_bytes - base
            if len(probes) >= 2 and span >= min(0.25 * (budget - base), 16 * 2**20):
                break
            nxt = min(lo * growth, limit)
            line = _local_line(probes, budget)
            if line is not None and line(nxt) > budget:
                break  # the fit already says it would not fit: predict instead of failing
            r = run(nxt)
            if r.fits(budget):
                lo = nxt
            else:
                hi = nxt
                break

    # Phase 2: predict, confirm, refine.
    first: Optional[int] = None

    def over() -> int:
        return sum(not p.fits(budget) for p in probes)

    while (len(probes) < max_steps and lo < limit and over() < max_over
           and (hi is None or hi - lo > max(1, bracket * hi))):
        line = _local_line(probes, budget)
        if line is None:  # no usable slope: halve the interval, or grow
            guess = (lo + hi) // 2 if hi is not None else min(lo * growth, limit)
        else:
            predicted = line.solve(budget)
            if first is None:
                first = limit if not math.isfinite(predicted) else min(max(int(predicted), 1), limit)
            if predicted <= lo * (1 + tol):
                break  # the line puts the ceiling within tol of a batch that fitted
            guess = limit if not math.isfinite(predicted) else int(math.floor(aim * predicted))
            if over():
                # A step already went over: the curve bends here, so close only part of the gap.
                guess = lo + int(0.75 * (guess - lo))
            if hi is None and not _straight(probes):
                # The slope still changes with B: extrapolating far would trust it too much, so
                # walk at most max_ratio past the last fit, then fit again.
                guess = min(guess, int(lo * max_ratio))
        if hi is not None and not lo < guess < hi:
            guess = (lo + hi) // 2  # the line points outside the bracket: bisect (a safeguarded secant)
        guess = max(lo + 1, min(guess, limit))
        r = run(guess)
        if r.fits(budget):
            lo = guess
        else:
            hi = guess
    return done(lo, hi, first)


def bisect_ceiling(probe: Probe, budget: int, limit: int, *, limit_reason: str = "data set") -> Ceiling:
    """The exact ceiling by trial and error: double from 1 until a step fails, then bisect to one example.

    This is what batch-size finders do (e.g. a 'binsearch' mode); it is the reference the
    prediction is measured against, and every doubling that fails is a step over budget.
    """
    probes: list[ProbeResult] = []

    def run(b: int) -> ProbeResult:
        probes.append(_check(probe(b), b))
        return probes[-1]

    if not run(1).fits(budget):
        raise MemoryBudgetError(f"the model does not fit the memory budget ({format_bytes(budget)}) "
                                "even at batch size 1")
    lo, hi = 1, None
    while hi is None and lo < limit:
        b = min(2 * lo, limit)
        if run(b).fits(budget):
            lo = b
        else:
            hi = b
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        if run(mid).fits(budget):
            lo = mid
        else:
            hi = mid
    reason = limit_reason if hi is None else "memory"
    return Ceiling(lo, reason, budget, tuple(probes), fit_memory(probes), None)
