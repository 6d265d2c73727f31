"""The real step against the grid: what a run's own steps cost beyond the bare passes the profile timed.

The profile times bare forward/backward passes (each with its optimizer update) on one probe batch
held in memory. A real step also fetches and collates its batch, runs the framework's or the
loop's own code, callbacks and logging. :func:`fit_overhead` measures that difference on a run's
timed steps at one layout (micro-batch x accumulation):

    overhead = max(0, median(real step seconds after warm-up) - grid's prediction at that layout)

with the interquartile range of the real steps as its spread. The median, not the mean: a step that
a garbage collection or another process slowed says nothing about the next one. Where bare steps of
the grid's kind were timed beside the real ones (each real step followed by one), the grid's
prediction is taken from them, at the same moment: the overhead is the median of the paired
differences real - bare, which a change in the machine's load between profiling and measuring
(other work on a shared machine) cannot fake or hide.

Assumption: the overhead is paid once per optimizer step and does not depend on the batch. From one
layout it cannot be split into a per-step and a per-micro-batch part (nor into a per-example part, a
data pipeline that costs per example): at another layout the correction is exact only for the
per-step part. And since the grid prices a step of k passes as k one-pass steps, each with its own
optimizer update, at k > 1 passes it charges k - 1 updates a real step does not make; the overhead
measured there is then a lower bound (and floored at 0 where the updates outweigh it).

:func:`same_device` decides whether an overhead measured here may be added to a profile: only a
profile of this very kind of device (same type and name) describes the machine the steps ran on.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

WARMUP_STEPS = 2      # real steps at a new layout that are not timed (allocator growth, caches)


@dataclass(frozen=True)
class TimedSteps:
    """Wall seconds of consecutive real optimizer steps of one's own loop (a framework's, say) at one
    layout, in the order run (warm-up included): what ``find(timed_steps=...)`` fits the overhead on."""

    micro_batch: int
    accumulation: int
    seconds: tuple
    source: str = "your loop"
    bare: tuple = ()          # bare steps of the grid's kind at the layout, timed beside them (see fit_overhead)
    paired: bool = False      # one bare step right after each real one (else timed around them)


@dataclass(frozen=True)
class StepOverhead:
    """The real steps at one layout against the grid's prediction there (seconds)."""

    predicted: float              # the grid's seconds for a step at the layout
    measured: float               # median real step
    spread: float                 # interquartile range of the real steps
    overhead: float               # max(0, measured - predicted), or over the bare steps timed beside them
    steps: int                    # real steps timed (warm-up excluded)
    warmup: int                   # steps left out before them
    bare: Optional[float] = None  # median bare step timed beside them (None: none were)
    raw: tuple = field(default=(), repr=False)   # the timed seconds

    def to_dict(self) -> dict:
        return {"predicted_seconds": self.predicted, "measured_seconds": self.measured,
                "spread_seconds": self.spread, "overhead_seconds": self.overhead, "steps": self.steps,
                "warmup_steps": self.warmup, "bare_seconds": self.bare}


def _median_iqr(values: list[float]) -> tuple[float, float]:
    q25, q75 = np.percentile(values, [25, 75]) if len(values) > 1 else (values[0], values[0])
    return float(statistics.median(values)), float(q75 - q25)


def fit_overhead(seconds: Sequence[float], predicted: float, warmup: int = WARMUP_STEPS,
                 bare: Sequence[float] = (), paired: bool = True) -> StepOverhead:
    """The per-step overhead of real steps (``seconds``, in the order run) over the grid's ``predicted``
    seconds at their layout; the first ``warmup`` steps are left out. Non-finite times are dropped.

    ``bare``: the grid's own kind of step (bare passes on a batch in memory) timed beside the real ones,
    so a machine's load that changed between the profile and these steps does not pass for an overhead
    (nor hide one): ``paired``, one right after each real step, the overhead is the median of the
    paired differences; else (timed around them) the difference of the medians (``warmup`` left out of
    both). Raises ValueError when no step is left to time.
    """
    if not (isinstance(predicted, (int, float)) and math.isfinite(predicted) and predicted >= 0):
        raise ValueError(f"the grid's prediction must be a finite number of seconds >= 0, got {predicted!r}")
    if paired and len(bare) and len(bare) != len(seconds):
        raise ValueError(f"paired bare steps must be one per real step: {len(bare)} for {len(seconds)}")
    paired = paired and len(bare) > 0
    pairs = list(zip(seconds, bare))[warmup:] if paired else [(t, math.nan) for t in list(seconds)[warmup:]]
    pairs = [(float(t), float(b)) for t, b in pairs if math.isfinite(t) and t >= 0 and not (math.isinf(b) or b < 0)]
    if not pairs:
        raise ValueError(f"no real step to time: {len(seconds)} step(s), of which the first {warmup} are warm-up")
    timed = [t for t, _ in pairs]
    median, spread = _median_iqr(timed)
    around = [float(b) for b in list(bare)[warmup:] if math.isfinite(b) and b >= 0] if not paired else []
    if paired:
        overhead, at_bare = float(statistics.median([t - b for t, b in pairs])), _median_iqr([b for _, b in pairs])[0]
    elif around:
        at_bare = _median_iqr(around)[0]
        overhead = median - at_bare
    else:
        overhead, at_bare = median - float(predicted), None
    return StepOverhead(float(predicted), median, spread, max(0.0, overhead), len(timed), min(warmup, len(seconds)),
                        at_bare, tuple(timed))


def same_device(profiled: dict, here: dict) -> tuple[bool, str]:
    """Whether a profile's device (its ``device`` facts) is the device whose steps were timed (``here``),
    and why not: a different type or name, or a profile that does not name its device."""
    kind, name = profiled.get("type"), profiled.get("name")
    if kind != here.get("type"):
        return False, f"the profile is of a {kind or 'unnamed'} device and the steps ran on {here.get('type')}"
    if not name:
        return False, "the profile does not name its device, so it cannot be matched to this one"
    if name != here.get("name"):
        return False, f"the profile is of {name} and the steps ran on {here.get('name')}"
    return True, f"the profile is of this device ({name})"


def describe(o: StepOverhead, batch: int, added: Optional[float]) -> str:
    """One line: grid against measured at the measuring batch, and what the step-time model adds (None: not
    added)."""
    line = f"step time at B={batch}: grid {o.predicted * 1e3:.3g} ms, measured {o.measured * 1e3:.3g} ms"
    if o.bare is not None:   # the overhead is over bare steps timed beside the real ones, not over the grid
        line += f" (bare passes beside them {o.bare * 1e3:.3g} ms)"
    if added is not None and added != o.overhead:
        return line + f": +{added * 1e3:.2g} ms added per step (stated)"
    if o.overhead == 0:
        return line + ": nothing added"
    if added is None:
        return line + f": +{o.overhead * 1e3:.2g} ms here, not added"
    return line + f": +{added * 1e3:.2g} ms added per step"
