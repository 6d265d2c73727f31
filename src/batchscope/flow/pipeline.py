r"""Pipeline-parallel training as a production line (GPipe, Huang et al. 2019, arXiv 1811.06965).

The model is cut into P stages, one per device; a mini-batch (the order) is split into M
micro-batches (the transfer batches) of ``micro_batch_size`` examples (the units). What is simulated
is GPipe's schedule for one training step:

* a forward line F_1 .. F_P: stage i needs f_i per example; a micro-batch moves on as soon as a
  stage has done it;
* the flush: the last stage hands the backward pass the whole mini-batch (station F_P's transfer
  batch is the order), so every forward is done before any backward starts;
* a backward line B_P .. B_1 with b_i = r f_i per example (r = ``backward_ratio``, about 2 because
  a backward computes gradients for both the activations and the weights);
* device i runs F_i and B_i; under the flush they never overlap, which the simulation checks.
  There are no set-ups (launch overheads) and no communication time.

The step takes mb (1 + r) (sum_i f_i + (M - 1) max_i f_i) (both lines are one-piece flows of M
micro-batches, the closed form in :mod:`batchscope.flow.closed_form`), while device i is busy
M mb (1 + r) f_i. The idle ("bubble") fraction over all devices is therefore

    1 - M sum_i f_i / (P (sum_i f_i + (M - 1) max_i f_i)),

which for P equal stages is (P - 1) / (M + P - 1), GPipe's bubble, whatever r is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import ConfigError, check_positive_int
from .line import Line, Station
from .simulate import simulate
from .trace import Trace


def bubble_formula(stage_times: Sequence[float], micro_batches: int) -> float:
    """The idle fraction for stages of any (forward) times; GPipe's (P - 1) / (M + P - 1) for P equal stages."""
    total, slowest, p = math.fsum(stage_times), max(stage_times), len(stage_times)
    return 1 - micro_batches * total / (p * (total + (micro_batches - 1) * slowest))


def pipeline_line(stage_times: Sequence[float], micro_batches: int, micro_batch_size: int = 1,
                  backward_ratio: float = 2.0) -> Line:
    """The GPipe step as a line: F_1..F_P then B_P..B_1, flushing at F_P."""
    if not stage_times:
        raise ConfigError("A pipeline needs at least one stage. Got 0 stages.")
    check_positive_int("micro_batches", micro_batches)
    check_positive_int("micro_batch_size", micro_batch_size)
    if not (isinstance(backward_ratio, (int, float)) and math.isfinite(backward_ratio) and backward_ratio > 0):
        raise ConfigError(f"The 'backward_ratio' parameter must be a positive finite number. Got {backward_ratio!r}.")
    p = len(stage_times)
    order = micro_batches * micro_batch_size
    forward = [Station(f"F{i + 1}", unit_time=f, transfer_batch=order if i == p - 1 else None)
               for i, f in enumerate(stage_times)]
    backward = [Station(f"B{i + 1}", unit_time=backward_ratio * stage_times[i]) for i in reversed(range(p))]
    return Line(tuple(forward + backward), order_quantity=order, process_batch=order,
                transfer_batch=micro_batch_size, name=f"GPipe P={p} M={micro_batches}", time_unit="time")


@dataclass
class PipelineResult:
    stages: int
    micro_batches: int
    micro_batch_size: int
    backward_ratio: float
    stage_times: list[float]
    step_time: float                 # simulated time of one training step (the order's lead time)
    device_busy: list[float]
    device_idle: list[float]
    bubble_fraction: float           # simulated: total device idle time / (P * step_time)
    bubble_fraction_formula: float   # the closed form above
    equal_stages: bool
    trace: Optional[Trace] = field(default=None, repr=False)

    @property
    def agrees(self) -> bool:
        return math.isclose(self.bubble_fraction, self.bubble_fraction_formula, rel_tol=1e-9, abs_tol=1e-12)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("stages", "micro_batches", "micro_batch_size", "backward_ratio",
                                            "stage_times", "step_time", "device_busy", "device_idle",
                                            "bubble_fraction", "bubble_fraction_formula", "equal_stages")}
        d["agrees"] = self.agrees
        if self.equal_stages:
            d["gpipe_formula"] = "(P - 1) / (M + P - 1)"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineResult":
        keys = ("stages", "micro_batches", "micro_batch_size", "backward_ratio", "stage_times", "step_time",
                "device_busy", "device_idle", "bubble_fraction", "bubble_fraction_formula", "equal_stages")
        return cls(**{k: d[k] for k in keys})


def simulate_pipeline(stages: int = 4, micro_batches: int = 8, *, stage_times: Optional[Sequence[float]] = None,
                      micro_batch_size: int = 1, backward_ratio: float = 2.0) -> PipelineResult:
    """Simulate one GPipe step and measure the bubble. ``stage_times`` (forward time per example of
    each stage) defaults to P equal stages of 1."""
    check_positive_int("stages", stages)
    if stage_times is None:
        stage_times = [1.0] * stages
    elif len(stage_times) != stages:
        raise ConfigError(f"Give one forward time per stage: {stages} stage(s), got {len(stage_times)} "
                          f"({list(stage_times)}).")
    line = pipeline_line(stage_times, micro_batches, micro_batch_size, backward_ratio)
    sim = simulate(line, replications=1, keep_traces=1, record_intervals=True)
    trace = sim.traces[0]
    step = sim["lead_time"].mean
    busy = []
    for i in range(stages):
        f, b = i, 2 * stages - 1 - i                    # station indices of F_{i+1} and B_{i+1}
        f_end = max(e for (s, _, _, e, _) in trace.intervals if s == f)
        b_start = min(t0 for (s, _, t0, _, _) in trace.intervals if s == b)
        if b_start < f_end:                             # the flush makes this impossible; guard the model
            raise RuntimeError(f"device {i + 1} runs a backward before its last forward ({b_start} < {f_end})")
        busy.append(float(trace.busy[f].sum() + trace.busy[b].sum()))
    idle = [step - x for x in busy]
    return PipelineResult(stages, micro_batches, micro_batch_size, float(backward_ratio),
                          [float(x) for x in stage_times], step, busy, idle,
                          math.fsum(idle) / (stages * step), bubble_formula(stage_times, micro_batches),
                          len(set(stage_times)) == 1, trace)
