"""Step time: the median wall-clock seconds of one full training step after warm-up."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from .step import StepRunner


@dataclass(frozen=True)
class StepTiming:
    batch: int
    seconds: float      # median over the timed steps
    spread: float       # interquartile range of the timed steps, seconds
    repeats: int        # timed steps (warm-up excluded)

    def to_dict(self) -> dict:
        return asdict(self)


TimeProbe = Callable[[int], StepTiming]


def summarize(batch: int, times: list[float]) -> StepTiming:
    q25, q75 = np.percentile(times, [25, 75]) if len(times) > 1 else (times[0], times[0])
    return StepTiming(batch, float(statistics.median(times)), float(q75 - q25), len(times))


def step_time_probe(runner: StepRunner, warmup: int = 2, repeats: int = 7, max_seconds: float = 1.0) -> TimeProbe:
    """A probe timing ``runner`` at a batch size: ``warmup`` untimed steps, then up to ``repeats``.

    The first steps at a new shape pay for allocator growth, kernel selection and caches, so they
    are not timed. Timing stops early (after at least 3 steps) once ``max_seconds`` have been spent,
    which keeps large, slow batches affordable. On CUDA every step is synchronised before the
    clock is read, otherwise the clock measures only the kernel launches.
    """

    def probe(batch: int) -> StepTiming:
        data = runner.batch(batch)
        for _ in range(warmup):
            runner.step(data)
        runner.synchronize()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < repeats:
            t0 = time.perf_counter()
            runner.step(data)
            runner.synchronize()
            times.append(time.perf_counter() - t0)
            if len(times) >= 3 and time.perf_counter() - start > max_seconds:
                break
        return summarize(batch, times)

    return probe
