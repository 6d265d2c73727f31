"""The real step against the grid: what a run's own steps cost beyond the bare passes the profile timed.

The profile times bare forward/backward passes (each with its optimizer update) on one probe batch
held in memory. A real step also fetches and collates its batch, runs the framework's or the
loop's own code, callbacks and logging. :func:`fit_overhead` measures that difference on a run's
timed steps at one layout (micro-batch x accumulation):

    overhead = max(0, median(real step seconds after warm-up) - grid's prediction at that layout)

with the interquartile range of the real steps as its spread. The median, not the mean: a step that
a garbage collection or another process slowed says nothing about the next one.

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


@dataclass(frozen=True)
class StepOverhead:
    """The real steps at one layout against the grid's prediction there (seconds)."""

    predicted: float              # the grid's seconds for a step at the layout
    measured: float               # median real step
    spread: float                 # interquartile range of the real steps
    overhead: float               # max(0, measured - predicted)
    steps: int                    # real steps timed (warm-up excluded)
    warmup: int                   # steps left out before them
    raw: tuple = field(default=(), repr=False)   # the timed seconds

    def to_dict(self) -> dict:
        return {"predicted_seconds": self.predicted, "measured_seconds": self.measured,
                "spread_seconds": self.spread, "overhead_seconds": self.overhead, "steps": self.steps,
                "warmup_steps": self.warmup}


def fit_overhead(seconds: Sequence[float], predicted: float, warmup: int = WARMUP_STEPS) -> StepOverhead:
    """The per-step overhead of real steps (``seconds``, in the order run) over the grid's ``predicted``
    seconds at their layout; the first ``warmup`` steps are left out. Non-finite times are dropped.

    Raises ValueError when no step is left to time.
    """
    if not (isinstance(predicted, (int, float)) and math.isfinite(predicted) and predicted >= 0):
        raise ValueError(f"the grid's prediction must be a finite number of seconds >= 0, got {predicted!r}")
    timed = [float(t) for t in list(seconds)[warmup:] if math.isfinite(t) and t >= 0]
    if not timed:
        raise ValueError(f"no real step to time: {len(seconds)} step(s), of which the first {warmup} are warm-up")
    median = float(statistics.median(timed))
    q25, q75 = np.percentile(timed, [25, 75]) if len(timed) > 1 else (timed[0], timed[0])
    return StepOverhead(float(predicted), median, float(q75 - q25), max(0.0, median - float(predicted)),
                        len(timed), min(warmup, len(seconds)), tuple(timed))


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
    if added is not None and added != o.overhead:
        return line + f" -> +{added * 1e3:.3g} ms per step added (stated)"
    if o.overhead == 0:
        return line + ": nothing added"
    if added is None:
        return line + f", +{o.overhead * 1e3:.3g} ms here, not added"
    return line + f" -> +{added * 1e3:.3g} ms per step added"
