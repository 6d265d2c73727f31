"""Batch policies: what the next optimizer step of :func:`batchscope.train.train` uses.

A policy answers, before each step, which examples it trains on (so the batch size), how they are
split into micro-batches (accumulation), the learning rate, and whether the step is measured; after
the step it sees how long it took. A fixed batch (:class:`FixedBatch`) and the adaptive controller
(:class:`batchscope.adapt.AdaptivePolicy`) are two policies of the one loop, so divergence, stop
reasons, evaluations, the target crossing, the clock, checkpoints and forks are written once.

A policy is also a :class:`~batchscope.train.Callback`: the loop calls its hooks before the user's
(a measuring policy reads the gradients in ``on_before_step``). Its whole state must survive
``copy.deepcopy`` (a fork) and ``state_dict``/``load_state_dict`` (a checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..data import IndexStream
from ..errors import ConfigError, check_positive_float, check_positive_int
from ..tasks import Task
from .config import Callback, TrainConfig, TrainContext
from .schedule import lr_factor, total_steps
from .setup import check_batch


@dataclass(frozen=True)
class StepPlan:
    """What one optimizer step uses."""

    indices: torch.Tensor            # the examples of the step (its batch size is their number)
    micro_batch: int                 # examples per forward/backward pass
    accumulation: int                # passes per step: batch = micro_batch x accumulation
    lr: Union[float, tuple]          # one rate for every parameter group, or one per group
    measure: bool = False            # the policy measures this step (its hooks are attached)

    @property
    def batch_size(self) -> int:
        return len(self.indices)


class BatchPolicy(Callback):
    """The protocol :func:`train` drives; see the module docstring."""

    start_batch: int                 # the first step's batch: the unit of evaluation gaps and budgets

    def start_layout(self) -> tuple[int, int]:
        """(micro-batch, accumulation) of the first step, what callbacks see before it."""
        return self.start_batch, 1

    def begin(self, ctx: TrainContext) -> None:
        """Once, when the run's model and optimizer exist (before any step or a resume)."""

    def plan(self, ctx: TrainContext) -> StepPlan:
        raise NotImplementedError

    def after_step(self, ctx: TrainContext, plan: StepPlan, seconds: float) -> None:
        """The step is done (``ctx.step`` and ``ctx.examples`` count it); it took ``seconds``."""

    def exhausted(self, ctx: TrainContext) -> bool:
        """Whether the run's budget (steps, epochs or the target's cap) is spent."""
        raise NotImplementedError

    def recover(self, ctx: TrainContext, why: str) -> bool:
        """The loop's divergence check fired on this step's loss (``why``, before the update). A policy that
        restores a state it kept (model, optimizer, its own) returns True: the loop drops the step's update,
        counts its examples and time, and goes on. False (the default): the run ends with DivergedError."""
        return False

    def describe(self) -> dict:
        """Entries of the result's ``config`` that this policy resolved."""
        return {}

    def summary(self) -> Optional[dict]:
        """What the policy did, for ``TrainResult.adaptive`` (None: nothing beyond the history)."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...

    def resumed(self, ctx: TrainContext) -> None:
        """A saved state was loaded (its counters are in ``ctx``), before the first step from it."""


class FixedBatch(BatchPolicy):
    """Batch B every step, as B/m micro-batches of m, at the base rates x warm-up and schedule.

    Loaded from a state saved at another batch or base rate (a ``find`` measuring run, continued at
    its recommendation), it *continues* that run: the data go on from the example where it stopped,
    the rates are this policy's, the warm-up and schedule count from the first step after the state,
    and the budget counts the whole run (:func:`~batchscope.train.schedule.total_steps`).
    """

    def __init__(self, task: Task, cfg: TrainConfig, batch_size: Optional[int] = None,
                 micro_batch: Optional[int] = None, lr: Optional[float] = None):
        b = check_batch(task, cfg.batch_size if batch_size is None else batch_size)
        m = micro_batch or cfg.micro_batch or b
        check_positive_int("micro_batch", m)
        if b % m:
            raise ConfigError(f"micro-batch {m} does not divide batch size {b}; pick a divisor of {b} "
                              f"(for example {max(d for d in range(1, min(m, b) + 1) if b % d == 0)})")
        self.task, self.start_batch, self.micro_batch = task, b, m
        self.total = total_steps(task, cfg, b)
        self.warmup, self.schedule = cfg.warmup_steps, cfg.schedule
        self.stream = IndexStream(task.n_train, b, cfg.seed + 1)
        self.lr = None if lr is None else check_positive_float("lr", lr)
        self.base_lrs: tuple = ()
        self.cfg = cfg
        self.first_step = 0                       # the step the warm-up and schedule count from
        self.continued: Optional[dict] = None     # the saved run this one continues (step, examples, batch, lr)

    def begin(self, ctx: TrainContext) -> None:
        """Check the micro-batch against the model; the base rates are the optimizer's as built, or
        ``lr`` for every group (a branch forked mid-run, whose groups hold the last step's rates)."""
        m = self.micro_batch
        check_batch(self.task, m, "micro-batch" if m < self.start_batch else "batch size", ctx.model)
        groups = ctx.optimizer.param_groups
        self.base_lrs = tuple(self.lr if self.lr is not None else g["lr"] for g in groups)

    def start_layout(self) -> tuple[int, int]:
        return self.micro_batch, self.start_batch // self.micro_batch

    def plan(self, ctx: TrainContext) -> StepPlan:
        s0 = self.first_step
        factor = lr_factor(ctx.step - s0, self.total - s0, self.warmup, self.schedule)
        return StepPlan(self.stream.next(), self.micro_batch, self.start_batch // self.micro_batch,
                        tuple(base * factor for base in self.base_lrs))

    def exhausted(self, ctx: TrainContext) -> bool:
        return ctx.step >= self.total

    def describe(self) -> dict:
        out = {"micro_batch": self.micro_batch, "total_steps": self.total}
        if self.continued:
            out["continued"] = self.continued
        return out

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(), "base_lrs": list(self.base_lrs), "batch_size": self.start_batch,
                "first_step": self.first_step, "continued": self.continued}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        saved_lrs = tuple(state["base_lrs"])
        saved_batch = int(state.get("batch_size", self.start_batch))
        same_lrs = len(saved_lrs) == len(self.base_lrs) and all(
            math.isclose(a, b, rel_tol=1e-9) for a, b in zip(saved_lrs, self.base_lrs))
        if saved_batch == self.start_batch and (same_lrs or not self.base_lrs):
            self.base_lrs = saved_lrs                     # the same run, resumed (its budget from this config)
            self.first_step = int(state.get("first_step", 0))
            self.continued = state.get("continued")
            if self.continued:
                self.total = total_steps(self.task, self.cfg, self.start_batch, self.continued["step"],
                                         self.continued["examples"])
            return
        # another batch or rate: this run continues the saved one (resumed() sets the budget)
        self.continued = {"batch_size": saved_batch, "lr": saved_lrs[0] if saved_lrs else None}

    def resumed(self, ctx: TrainContext) -> None:
        if self.continued is None or "step" in self.continued:
            return
        self.first_step = ctx.step
        self.total = total_steps(self.task, self.cfg, self.start_batch, ctx.step, ctx.examples)
        self.continued = {**self.continued, "step": ctx.step, "examples": ctx.examples}
