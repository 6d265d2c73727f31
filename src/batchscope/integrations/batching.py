"""The adaptive batch in a framework's loop: a framework-free plan both callbacks share.

Two levers exist between optimizer steps of Lightning and the Hugging Face Trainer:

- the micro-batch: the ``DataLoader``'s batch sampler is built once, but its own ``batch_size`` may
  change (torch's ``BatchSampler`` re-reads it for every batch; batchscope's
  :class:`~batchscope.adapt.AdaptiveBatchSampler` has ``set_batch_size``). Both loops fetch one
  batch ahead, so a change lands one micro-batch late;
- the accumulation count k. Both loops start a window where ``batches run this epoch % k == 0``, so
  a new k is applied only where it divides the batches already run this epoch (at the latest at
  the next epoch), else old gradients would leak into a step or a step would end early.

The controller of :mod:`batchscope.adapt` decides the global batch and its layout (micro-batch x
accumulation x devices, the micro-batch under ``memory_ceiling``), as ``find`` would with the noise
scale measured now; :class:`~batchscope.adapt.ScaledLearningRate` gives the rate for the examples
the step really took. The noise scale is measured from the micro-batches of a step, so a layout of
one pass on one process is run as two half micro-batches (one more fixed cost per step: the
price of measuring).

The step time the controller plans with is the profile's grid of bare passes plus what the
framework's real steps cost beyond it: the callbacks time every optimizer step from one step's end
to the next (:class:`RealStepClock`; data loading, the framework, logging and the callbacks
included, evaluations and checkpoints left out), and once :data:`REFIT_STEPS` steps at one layout
are timed, the controller's model becomes grid + their overhead
(:func:`~batchscope.hardware.realstep.fit_overhead`, per optimizer step, refitted as steps come).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..adapt import Adaptation, AdaptiveConfig, BatchSizeController, ScaledLearningRate, StepTimeModel
from ..adapt.controller import DEFAULT_EVERY, DEFAULT_MIN_SAMPLES, DEFAULT_THRESHOLD
from ..errors import ConfigError
from ..hardware.realstep import WARMUP_STEPS, fit_overhead

REFIT_STEPS = 8        # real steps timed at one layout (after its warm-up) before the overhead is fitted on them
REFIT_WINDOW = 64      # the latest steps at the layout the fit uses


class RealStepClock:
    """Wall seconds from one optimizer step's end to the next in a framework's loop. :meth:`restart` after
    an evaluation or a checkpoint (their time is not a step's), :meth:`forget` where the next step is not a
    plain one (the first of a fit or an epoch: the data loader starts)."""

    def __init__(self):
        self._last: Optional[float] = None

    def lap(self) -> Optional[float]:
        now = time.perf_counter()
        last, self._last = self._last, now
        return None if last is None else now - last

    def restart(self) -> None:
        self._last = time.perf_counter()

    def forget(self) -> None:
        self._last = None


def optimizer_kind(optimizer) -> str:
    """'adam' for optimizers with Adam's betas (Adam, AdamW, ...), else 'sgd'."""
    groups = getattr(optimizer, "param_groups", [])
    return "adam" if groups and "betas" in groups[0] else "sgd"


def set_loader_batch_size(loader, micro_batch: int) -> None:
    """Change the micro-batch of a built DataLoader through its batch sampler."""
    sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(sampler, "batch_sampler", None)      # accelerate wraps it under several processes
    for s in (sampler, inner):
        if hasattr(s, "set_batch_size"):
            s.set_batch_size(micro_batch)
            return
        if isinstance(s, torch.utils.data.BatchSampler):
            s.batch_size = micro_batch
            return
    raise ConfigError(f"cannot change the micro-batch of a {type(loader).__name__} whose batch sampler is "
                      f"{type(sampler).__name__}; build the DataLoader with batch_size=m (torch's BatchSampler) or "
                      "batch_sampler=AdaptiveBatchSampler(...)")


def measurable_layout(micro: int, accumulation: int, world: int) -> tuple[int, int]:
    """At least two micro-batches per step in all, so the noise scale can be measured."""
    if accumulation * world < 2 and micro >= 2:
        return micro // 2, 2
    return micro, accumulation


@dataclass
class StepRecord:
    step: int
    examples: int            # examples the step really took (all processes)
    micro_batch: int         # the planned layout for it
    accumulation: int
    lr: float                # the first parameter group's rate used for the step
    b_crit: float            # the critical batch the rate rule used (nan before the first)


@dataclass
class BatchPlan:
    """The controller's batch as (micro-batch, accumulation) for the loop, and its rate gain.

    What adapts is an :class:`~batchscope.adapt.Adaptation`, the object the training loop's adaptive
    policy drives too, built from an :class:`~batchscope.adapt.AdaptiveConfig` (one default per
    setting). The frameworks' steps are all measured (their micro-batches run anyway), so the
    cadence is every step and decisions come every ``every`` steps.
    """

    adaptation: Adaptation
    micro_batch: int
    accumulation: int
    world: int
    pending: Optional[tuple[int, int]] = None
    steps: list = field(default_factory=list)     # StepRecord per optimizer step
    grid: Optional[StepTimeModel] = None          # the profile's step time; the controller's is grid + overhead
    timed: list = field(default_factory=list)     # real seconds of the steps at the current layout
    timed_layout: Optional[tuple[int, int]] = None
    overhead: Optional[dict] = None               # the latest fit: StepOverhead.to_dict() with its layout

    @property
    def controller(self) -> BatchSizeController:
        return self.adaptation.controller

    @property
    def rate(self) -> ScaledLearningRate:
        return self.adaptation.rate

    @classmethod
    def build(cls, step_time, *, micro_batch: int, accumulation: int, world: int, n_train: int, optimizer,
              memory_ceiling: Optional[int] = None, max_batch: Optional[int] = None, every: int = DEFAULT_EVERY,
              threshold: float = DEFAULT_THRESHOLD, min_samples: int = DEFAULT_MIN_SAMPLES,
              confident: bool = True) -> "BatchPlan":
        if accumulation * world < 2:
            raise ConfigError(f"the adaptive batch measures the noise scale from the micro-batches of a step, but "
                              f"it starts with {accumulation} micro-batch per step on one process; start with an "
                              "accumulation of at least 2")
        start = micro_batch * accumulation * world
        acfg = AdaptiveConfig(max_batch=max_batch, memory_ceiling=memory_ceiling, every=every, threshold=threshold,
                              min_samples=min_samples, confident=confident, measure_every=1)
        model = step_time if isinstance(step_time, StepTimeModel) else StepTimeModel.from_profile(step_time)
        adaptation = Adaptation(acfg, model, start_batch=start, n_train=n_train, lr0=optimizer.param_groups[0]["lr"],
                                optimizer=optimizer_kind(optimizer), memory_ceiling=memory_ceiling, devices=world)
        return cls(adaptation, micro_batch, accumulation, world, grid=model.with_overhead(0.0))

    def step_seconds(self, seconds: Optional[float]) -> None:
        """The wall seconds of the optimizer step just run at the current layout (None: not a plain step).

        From :data:`REFIT_STEPS` timed steps at one layout on (its first ones left out as warm-up), the
        controller plans with the grid plus their overhead over the grid's prediction there.
        """
        layout = (self.micro_batch, self.accumulation)
        if layout != self.timed_layout:
            self.timed, self.timed_layout = [], layout
        if seconds is None:
            return
        self.timed.append(seconds)
        if len(self.timed) < WARMUP_STEPS + REFIT_STEPS:
            return
        del self.timed[WARMUP_STEPS:-REFIT_WINDOW]
        predicted = self.grid.seconds(self.micro_batch, self.accumulation)
        fit = fit_overhead(self.timed, predicted)
        self.overhead = {**fit.to_dict(), "micro_batch": self.micro_batch, "accumulation": self.accumulation}
        self._use_overhead(fit.overhead)

    def _use_overhead(self, seconds: float) -> None:
        self.adaptation.controller.time_model = self.grid.with_overhead(seconds)

    def gain(self, examples: int) -> float:
        """Rate multiplier for a step of ``examples``: the rate rule over the starting batch."""
        return self.rate.gain(examples)

    def after_step(self, step: int, examples: int, lr: float, estimate, consumed: int) -> tuple[int, int]:
        """Count a finished optimizer step; decide when due; return (micro-batch, accumulation) for the next.

        estimate: the monitor's current NoiseEstimate; consumed: micro-batches run so far this epoch.
        """
        a = self.adaptation
        self.steps.append(StepRecord(step, examples, self.micro_batch, self.accumulation, lr, a.b_crit))
        if estimate is not None and estimate.n_samples:
            a.observe(estimate)
        d = a.end_step(step, examples, True, 0.0, lambda: estimate)
        if d is not None and d.changed:
            self.pending = measurable_layout(d.micro_batch, d.accumulation, self.world)
        return self.apply_if_aligned(consumed)

    def apply_if_aligned(self, consumed: int) -> tuple[int, int]:
        if self.pending is not None and consumed % self.pending[1] == 0:
            (self.micro_batch, self.accumulation), self.pending = self.pending, None
        return self.micro_batch, self.accumulation

    def state_dict(self) -> dict:
        return {"adaptation": self.adaptation.state_dict(), "micro_batch": self.micro_batch,
                "accumulation": self.accumulation, "pending": None if self.pending is None else list(self.pending),
                "steps": [vars(s).copy() for s in self.steps], "overhead": self.overhead}

    def load_state_dict(self, state: dict) -> None:
        self.adaptation.load_state_dict(state["adaptation"])
        self.micro_batch, self.accumulation = int(state["micro_batch"]), int(state["accumulation"])
        self.pending = None if state["pending"] is None else tuple(state["pending"])
        self.steps = [StepRecord(**s) for s in state["steps"]]
        self.overhead = state.get("overhead")
        if self.overhead is not None:
            self._use_overhead(self.overhead["overhead_seconds"])
