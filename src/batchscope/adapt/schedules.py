"""Batch schedules fixed in advance: the batch and the rate change at stated example counts.

:class:`BatchSchedule` is a batch policy of :func:`batchscope.train.train` given breakpoints
``(examples, batch, lr)``: a step that starts once ``examples`` examples have been seen uses that
batch and rate, until the next breakpoint. Two schedules from the literature are built on it:

- :func:`seesaw` (Meterez et al. 2025): wherever a step-decay schedule would halve the rate, double
  the batch and multiply the rate by ``gain(2) / 2`` instead, ``gain`` being the optimizer's batch
  rule. Halving the rate at batch B and doubling the batch at rate x gain(2)/2 leave the same
  quantity unchanged: eta/sqrt(B) for Adam-type optimizers (the square-root rule; normalized SGD,
  the proxy for Adam in that paper) gives Seesaw's own factor 1/sqrt(2); eta/B for SGD (the linear
  rule while B << B_crit, the equivalence that paper proves for SGD) gives 1, the rate unchanged.
  ``rate_factor`` overrides it (``1 / math.sqrt(2)`` applies Seesaw's Adam factor to SGD too).
- :func:`batch_warmup` (as OLMo's): the batch doubles at fixed example counts and the rate follows by
  the optimizer's rule, x sqrt(2) for Adam-type, x 2 for SGD (linear, no AdaScale saturation: a
  warm-up stays below the noise scale, where the linear rule holds).

The sampler is an :class:`AdaptiveBatchSampler`: every example once per epoch whatever the batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import torch

from ..errors import ConfigError, check_positive_float, check_positive_int
from ..tasks import Task
from ..train import (BatchPolicy, OptimizerSettings, StepPlan, TrainConfig, TrainContext, check_batch, lr_factor,
                     total_steps)
from .rules import ADAM_TYPE
from .sampler import AdaptiveBatchSampler


@dataclass(frozen=True)
class Breakpoint:
    """From the step that starts at ``examples`` examples seen (or later) on: ``batch`` at rate ``lr``."""

    examples: int
    batch: int
    lr: float


@dataclass
class ScheduleLog:
    """Per optimizer step: the batch and rate used (columns, so the JSON stays small)."""

    batch_size: list[int] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)


def check_breakpoints(task: Task, points: Sequence) -> tuple[Breakpoint, ...]:
    """Breakpoints as given, checked: the first at 0 examples, strictly increasing counts, batches
    that fit the task, positive rates."""
    if not points:
        raise ConfigError("a batch schedule needs at least one breakpoint (examples, batch, lr); "
                          "give [(0, batch, lr)] for a fixed batch")
    out = []
    for i, p in enumerate(points):
        try:
            e, b, lr = p
        except (TypeError, ValueError):
            raise ConfigError(f"breakpoint {i} of the batch schedule must be (examples, batch, lr). "
                              f"Got {p!r} instead.") from None
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise ConfigError(f"The 'examples' of breakpoint {i} must be an integer >= 0. Got {e!r} instead.")
        out.append(Breakpoint(e, check_batch(task, b, f"batch of breakpoint {i}"),
                              check_positive_float("lr", lr, where=f"breakpoint {i}")))
    if out[0].examples != 0:
        raise ConfigError(f"the first breakpoint of a batch schedule must be at 0 examples (the start). "
                          f"Got {out[0].examples} instead; add (0, batch, lr) in front")
    for a, b in zip(out, out[1:]):
        if b.examples <= a.examples:
            raise ConfigError(f"breakpoints must be at increasing example counts; {b.examples} follows {a.examples}. "
                              "Sort them and drop repeats")
    return tuple(out)


class BatchSchedule(BatchPolicy):
    """Batch and rate piecewise constant in examples seen; see the module docstring.

    ``cfg`` gives the budget (steps, epochs or until_target), the seed of the data order, an
    optional micro-batch (it must divide every batch of the schedule) and an optional linear
    warm-up (``warmup_steps``, on top of the breakpoints' rates). The breakpoints are the schedule,
    so ``cfg.schedule`` must be 'constant'.
    """

    def __init__(self, task: Task, cfg: TrainConfig, breakpoints: Sequence):
        self.points = check_breakpoints(task, breakpoints)
        if cfg.schedule != "constant":
            raise ConfigError(f"a batch schedule sets the rate itself; the 'schedule' parameter must be 'constant' "
                              f"with it. Got {cfg.schedule!r} instead")
        m = cfg.micro_batch
        if m is not None:
            check_positive_int("micro_batch", m)
            bad = sorted({p.batch for p in self.points if p.batch % m})
            if bad:
                raise ConfigError(f"micro-batch {m} does not divide batch {bad[0]} of the schedule; give a "
                                  f"micro-batch that divides every batch "
                                  f"({math.gcd(*[p.batch for p in self.points])} does)")
        self.task, self.micro, self.warmup = task, m, cfg.warmup_steps
        self.start_batch = self.points[0].batch
        budget = total_steps(task, cfg, self.start_batch)
        self.max_steps = cfg.steps
        self.max_examples = (math.ceil(cfg.epochs * task.n_train) if cfg.epochs is not None else
                             None if cfg.steps is not None else budget * self.start_batch)
        self.sampler = AdaptiveBatchSampler(task.n_train, self.start_batch, seed=cfg.seed + 1)
        self.log = ScheduleLog()

    def at(self, examples: int) -> Breakpoint:
        """The breakpoint in force for a step that starts after ``examples`` examples."""
        return [p for p in self.points if p.examples <= examples][-1]

    def _layout(self, b: int) -> tuple[int, int]:
        m = self.micro or b
        return m, b // m

    def start_layout(self) -> tuple[int, int]:
        return self._layout(self.start_batch)

    def begin(self, ctx: TrainContext) -> None:
        smallest = min(self._layout(p.batch)[0] for p in self.points)
        check_batch(self.task, smallest, "micro-batch" if self.micro else "batch size", ctx.model)

    def plan(self, ctx: TrainContext) -> StepPlan:
        point = self.at(ctx.examples)
        self.sampler.set_batch_size(point.batch)    # no prefetching: the next draw has this size
        idx = torch.tensor(self.sampler.draw())
        lr = point.lr * lr_factor(ctx.step, None, self.warmup, "constant")
        return StepPlan(idx, *self._layout(len(idx)), lr)

    def after_step(self, ctx: TrainContext, plan: StepPlan, seconds: float) -> None:
        self.log.batch_size.append(plan.batch_size)
        self.log.lr.append(plan.lr)

    def exhausted(self, ctx: TrainContext) -> bool:
        return ((self.max_steps is not None and ctx.step >= self.max_steps)
                or (self.max_examples is not None and ctx.examples + self.at(ctx.examples).batch > self.max_examples))

    def describe(self) -> dict:
        return {"micro_batch": self.micro, "batch_schedule": [asdict(p) for p in self.points]}

    def summary(self) -> dict:
        """The breakpoints and, per step, the batch and rate used."""
        return {"policy": "batch_schedule", "breakpoints": [asdict(p) for p in self.points], "steps": asdict(self.log)}

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "log": asdict(self.log)}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.log = ScheduleLog(**state["log"])


def doubling_gain(optimizer: str) -> float:
    """The rate's factor when the batch doubles, by the optimizer's rule: sqrt(2) Adam-type, 2 SGD."""
    return math.sqrt(2.0) if optimizer in ADAM_TYPE else 2.0


def _counts(name: str, counts: Sequence[int]) -> list[int]:
    out = []
    for c in counts:
        if isinstance(c, bool) or not isinstance(c, int) or c <= 0:
            raise ConfigError(f"The '{name}' parameter must hold positive integer example counts. Got {c!r} instead.")
        out.append(c)
    if out != sorted(set(out)):
        raise ConfigError(f"The '{name}' parameter must be increasing example counts. Got {list(counts)!r} instead.")
    return out


def _start(task: Task, cfg: TrainConfig) -> tuple[int, float, str]:
    settings = OptimizerSettings.of(task, cfg)
    return check_batch(task, cfg.batch_size), settings.lr, settings.name


def seesaw(task: Task, cfg: TrainConfig, halve_at: Sequence[int], *,
           rate_factor: Optional[float] = None) -> BatchSchedule:
    """Seesaw: at each count of ``halve_at`` (examples at which a step-decay schedule would halve the
    rate) the batch doubles and the rate is multiplied by ``rate_factor``, by default gain(2)/2 of the
    optimizer's rule: 1/sqrt(2) for Adam-type, 1 for SGD (see the module docstring). Starts at
    ``cfg.batch_size`` and the run's rate (``cfg.lr`` or the task's)."""
    b, lr, optimizer = _start(task, cfg)
    factor = doubling_gain(optimizer) / 2.0 if rate_factor is None else check_positive_float("rate_factor", rate_factor)
    points = [(0, b, lr)] + [(e, b * 2 ** (i + 1), lr * factor ** (i + 1))
                             for i, e in enumerate(_counts("halve_at", halve_at))]
    return BatchSchedule(task, cfg, points)


def batch_warmup(task: Task, cfg: TrainConfig, double_at: Sequence[int]) -> BatchSchedule:
    """A batch warm-up (as OLMo's): at each count of ``double_at`` the batch doubles and the rate is
    multiplied by the optimizer's rule, sqrt(2) for Adam-type, 2 for SGD (linear)."""
    b, lr, optimizer = _start(task, cfg)
    g = doubling_gain(optimizer)
    points = [(0, b, lr)] + [(e, b * 2 ** (i + 1), lr * g ** (i + 1))
                             for i, e in enumerate(_counts("double_at", double_at))]
    return BatchSchedule(task, cfg, points)
