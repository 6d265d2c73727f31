"""Clocks: what the steps of a run cost on a stated machine.

Steps to a target do not depend on the hardware; only the time of a step does. So the suite trains
for real on this CPU and charges every step on a clock, one of:

- ``measured``: this machine's step times from an interleaved timing pass, as the hardware profile
  models them (:class:`batchscope.hardware.StepTimeModel`: the medians, each lowered to the least at
  a larger batch, interpolated log-log between them, the fitted line outside);
- ``gpu_shaped``: t(B) = alpha + beta B with alpha = 4 ms and the knee alpha/beta at B = 1,024, a
  stand-in for a GPU's fixed cost per step (kernel launches, the optimizer), not a measured GPU;
- ``data_parallel``: 8 devices, each a ``gpu_shaped`` device running B/8 examples, gradients
  all-reduced over NVLink 4 (plan's one N-device step-time model,
  ``batchscope.plan.devices.DataParallelStep``, with the ``nvlink4`` preset and no overlap, gamma 1,
  as `find --devices` assumes by default).

A run's path is a list of (steps, batch) segments, steps possibly fractional (the crossing of the
target is interpolated between evaluations): its time is the sum of steps x t(batch). A segment may
carry a third number, a factor on its step time (an adaptive run's measured steps: two passes and
the noise monitor's hooks, charged at t(batch) x the measured / plain ratio). Every clock
is also a hardware profile (:func:`profile`), so `find --profile` and `train --adaptive --profile`
can be given the clock being judged.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from batchscope.hardware import HardwareProfile, ProfilePoint, StepTimeModel, fit_step_time, knee, knee_from_line
from batchscope.plan.comm import PRESETS, Cluster
from batchscope.plan.devices import DataParallelStep

GPU_ALPHA = 0.004        # seconds per step: a GPU's fixed cost, stated, not measured
GPU_KNEE = 1024          # alpha / beta: the batch at which a step costs twice its fixed part
DP_DEVICES = 8
DP_LINK = "nvlink4"
DP_GAMMA = 1.0           # no overlap of the all-reduce with the backward pass (find's default)

Path = Sequence[tuple]          # (steps, batch) or (steps, batch, factor on the step time) segments of one run


@dataclass(frozen=True)
class Clock:
    """Seconds of one optimizer step at batch B, with a name and a sentence saying what it stands for."""

    name: str
    description: str
    step_seconds: Callable[[int], float] = field(repr=False)


def path_seconds(clock: Clock, path: Path) -> float:
    """Seconds of a run: sum over its segments of steps x t(batch) (x the segment's factor, if it has one)."""
    return sum(seg[0] * clock.step_seconds(seg[1]) * (seg[2] if len(seg) > 2 else 1.0) for seg in path)


def path_steps(path: Path) -> float:
    return sum(seg[0] for seg in path)


def path_examples(path: Path) -> float:
    return sum(seg[0] * seg[1] for seg in path)


def fixed_path(steps: float, batch: int) -> list[tuple[float, int]]:
    """The path of a fixed-batch run."""
    return [(steps, batch)]


def gpu_line(alpha: float = GPU_ALPHA, knee_batch: float = GPU_KNEE) -> StepTimeModel:
    """The GPU-shaped t(B) as the one step-time model with no measured points: the line itself."""
    return StepTimeModel(alpha, alpha / knee_batch)


def gpu_shaped(alpha: float = GPU_ALPHA, knee_batch: float = GPU_KNEE) -> Clock:
    return Clock("gpu", f"GPU-shaped stand-in: t(B) = {alpha * 1e3:g} ms + {alpha * 1e6 / knee_batch:.4g} us x B "
                 f"(knee alpha/beta at B = {knee_batch:g}), a GPU's fixed cost per step, not a measured GPU",
                 gpu_line(alpha, knee_batch).seconds)


def data_parallel(grad_bytes: float, devices: int = DP_DEVICES, link: str = DP_LINK, gamma: float = DP_GAMMA,
                  per_device: StepTimeModel | None = None) -> Clock:
    """``devices`` data-parallel copies of ``per_device`` (default the GPU-shaped line) joined by ``link``."""
    step = DataParallelStep(per_device or gpu_line(), cluster=Cluster(PRESETS[link], per_node=devices),
                            grad_bytes=grad_bytes, gamma=gamma)

    def t(b: int) -> float:
        return step(b, devices).seconds
    return Clock(f"dp{devices}", f"{devices} devices data parallel over {link}, each the GPU-shaped clock on B/"
                 f"{devices} examples, {grad_bytes:,.0f} gradient bytes all-reduced per step (plan's step-time "
                 f"model, gamma {gamma:g})", t)


def stated(grad_bytes: float) -> dict[str, Clock]:
    """The two stated clocks of a model with ``grad_bytes`` gradient bytes: 'gpu' and 'dp8'."""
    return {"gpu": gpu_shaped(), "dp8": data_parallel(grad_bytes)}


def measured_model(step_seconds: Mapping[int, float]) -> StepTimeModel:
    """The hardware profile's step-time model of measured medians (the fitted line outside their range)."""
    batches = sorted(step_seconds)
    fit = fit_step_time(batches, [step_seconds[b] for b in batches])
    return StepTimeModel(fit.intercept, fit.slope, tuple((b, step_seconds[b]) for b in batches))


def measured(step_seconds: Mapping[int, float], what: str = "this machine") -> Clock:
    model = measured_model({int(b): float(s) for b, s in step_seconds.items()})
    return Clock("cpu", f"{what}: step times measured in an interleaved timing pass (one torch thread)",
                 model.seconds)


def profile(clock: Clock, task_name: str, parameters: int, batches: Iterable[int], optimizer: dict | None = None,
            device: dict | None = None) -> HardwareProfile:
    """The clock as a hardware profile: its step time at ``batches`` as the measured points, the line fitted
    to them, the largest of them as the ceiling (``limited_by`` 'max_batch'). The profile's step_time
    equals the clock at every one of ``batches``."""
    bs = sorted({int(b) for b in batches})
    secs = [clock.step_seconds(b) for b in bs]
    fit = fit_step_time(bs, secs)
    model = StepTimeModel(fit.intercept, fit.slope, tuple(zip(bs, secs)))
    return HardwareProfile(
        task=task_name, parameters=parameters, device=device or {"type": "clock", "name": clock.description},
        amp=False, max_batch=bs[-1], limited_by="max_batch", memory_budget=None,
        memory_method="none: a clock, not a memory measurement", m0=None, m1=None, memory_r2=None,
        alpha=fit.intercept, beta=fit.slope, r2=fit.r2,
        residuals=[(s - fit(b)) / s for b, s in zip(bs, secs)],
        points=[ProfilePoint(b, s, 0.0, b / s, None, 0) for b, s in zip(bs, secs)], memory_probes=[],
        ceiling_steps=0, over_budget_steps=0, knee=knee(model), knee_fit=knee_from_line(fit.intercept, fit.slope),
        seconds=0.0,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        notes=[f"clock '{clock.name}': {clock.description}"], optimizer=optimizer or {})
