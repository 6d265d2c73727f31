"""What a run is asked to do (:class:`TrainConfig`), what it returns, and the hooks into it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ..errors import ConfigError, check_lr, check_positive_float, check_positive_int
from ..tasks import Task
from .schedule import SCHEDULES


@dataclass
class TrainConfig:
    """How to train. ``None`` means "the task's default" where a task has one."""

    batch_size: int
    lr: Optional[float] = None
    optimizer: Optional[str] = None          # sgd | adam | adamw
    momentum: Optional[float] = None
    weight_decay: Optional[float] = None
    micro_batch: Optional[int] = None        # m: B/m micro-batches per step (gradient accumulation)
    steps: Optional[int] = None              # stop after this many optimizer steps ...
    epochs: Optional[float] = None           # ... or this many passes over the training set
    until_target: bool = False               # ... or as soon as an evaluation reaches the target
    warmup_steps: int = 0                    # linear warm-up from lr/warmup_steps to lr
    schedule: str = "constant"               # after warm-up: constant | cosine | linear decay to 0
    eval_every: Optional[int] = None         # steps between evaluations (default: ~25 per run)
    eval_examples: Optional[int] = None      # cap on examples per evaluation (None: the whole split)
    seed: int = 0
    device: str = "cpu"                      # cpu | cuda | cuda:N | auto
    amp: bool = False                        # automatic mixed precision (CUDA only)
    max_seconds: Optional[float] = None      # wall-clock cap on training time
    diverge_factor: Optional[float] = 1e3    # one step's loss above this x the initial loss: diverged
    diverge_trend: Optional[float] = 10.0    # the smoothed loss (~20 steps) above this x the initial: diverged
    adaptive: Optional[Any] = None           # batchscope.adapt.AdaptiveConfig: the batch follows the noise scale
    checkpoint: Optional[str] = None         # write the run's whole state here every checkpoint_every steps
    checkpoint_every: Optional[int] = None
    resume: Optional[str] = None             # continue the run saved at this path (same config)


def _optional(check):
    return lambda name, v: None if v is None else check(name, v)


def _non_negative_int(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(f"The '{name}' parameter must be an integer >= 0. Got {v!r} instead.")


def _schedule(name: str, v) -> None:
    if v not in SCHEDULES:
        raise ConfigError(f"The '{name}' parameter must be one of {', '.join(SCHEDULES)}. Got {v!r} instead.")


# The declared checks of TrainConfig: each field once, one message template (errors.check_*).
_CHECKS = {"steps": _optional(check_positive_int), "epochs": _optional(check_positive_float),
           "eval_every": _optional(check_positive_int), "eval_examples": _optional(check_positive_int),
           "lr": _optional(check_lr), "max_seconds": _optional(check_positive_float),
           "micro_batch": _optional(check_positive_int), "checkpoint_every": _optional(check_positive_int),
           "warmup_steps": _non_negative_int, "schedule": _schedule}


def check_config(cfg: TrainConfig) -> None:
    """Every field of ``cfg`` against its declared check; a run must also say how long it lasts."""
    for name, check in _CHECKS.items():
        check(name, getattr(cfg, name))
    if cfg.steps is None and cfg.epochs is None and not cfg.until_target:
        raise ConfigError("say how long to train: steps, epochs or until_target")
    if bool(cfg.checkpoint) != bool(cfg.checkpoint_every):
        raise ConfigError("a checkpoint needs both a path (checkpoint) and a cadence (checkpoint_every); "
                          f"got checkpoint={cfg.checkpoint!r}, checkpoint_every={cfg.checkpoint_every!r}")


@dataclass
class HistoryPoint:
    step: int
    examples: int
    seconds: float                # training time so far, evaluations excluded
    loss: float                   # mean training loss over the steps since the previous point
    metric: Optional[float]       # the task metric on the target split (None if the task has none)
    eval_loss: Optional[float]    # the loss on the target split
    lr: float


@dataclass
class TrainResult:
    task: str
    config: dict
    history: list[HistoryPoint]
    steps: int
    examples: int
    seconds: float
    reached_target: bool
    target: str
    # Steps to target: the first crossing of the target, interpolated between the evaluations either
    # side of it (:func:`batchscope.train.schedule.target_crossing`); the one definition every caller uses.
    target_step: Optional[float] = None
    target_examples: Optional[float] = None
    target_seconds: Optional[float] = None
    stopped_because: str = ""
    target_interpolated: bool = False      # the target crossing lies between two evaluations
    model: Optional[nn.Module] = field(default=None, repr=False)
    adaptive: Optional[dict] = None   # adaptive runs: per-step batch, accumulation, lr, B_crit and the decisions

    @property
    def final(self) -> HistoryPoint:
        return self.history[-1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("model", None)
        return d


@dataclass
class TrainContext:
    """What callbacks can see: live objects of the run in progress."""

    task: Task
    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    batch_size: int               # the batch, micro-batch and accumulation of the current step
    micro_batch: int
    accumulation: int
    scaler: Optional[torch.amp.GradScaler] = None   # the run's loss scaler (enabled under float16 AMP)
    step: int = 0
    examples: int = 0
    seconds: float = 0.0
    step_loss: float = math.nan   # the current step's mean loss, set after its backward passes
    stop: bool = False            # a callback may set this to end the run after the current step
    stop_reason: str = ""


class Callback:
    """Hooks into :func:`batchscope.train.train`. Every method is optional.

    :func:`train` also accepts an object with an ``as_callback()`` method returning a Callback
    (``NoiseScaleMonitor`` is one), so a measurement can keep a plain API of its own.
    """

    def on_train_begin(self, ctx: TrainContext) -> None: ...
    def on_micro_batch_end(self, ctx: TrainContext, index: int, loss: float) -> None: ...
    def on_before_step(self, ctx: TrainContext) -> None:
        """All micro-batches are back-propagated (and unscaled under AMP); grads hold the batch mean,
        ``ctx.step_loss`` the batch's mean loss and ``ctx.scaler.get_scale()`` the scale used."""
    def on_step_end(self, ctx: TrainContext, loss: float) -> None: ...
    def on_evaluate(self, ctx: TrainContext, point: HistoryPoint) -> None: ...
    def on_train_end(self, ctx: TrainContext, result: TrainResult) -> None: ...


class StepLosses(Callback):
    """Every optimizer step's training loss and the run's start (the first evaluation's training loss:
    at step 0, the loss at initialisation), for judging a run's loss curve after it."""

    def __init__(self):
        self.losses: list[float] = []
        self.start = math.nan

    def on_evaluate(self, ctx: TrainContext, point: HistoryPoint) -> None:
        if math.isnan(self.start):
            self.start = float(point.loss)

    def on_step_end(self, ctx: TrainContext, loss: float) -> None:
        self.losses.append(float(loss))


class StepClock(Callback):
    """Seconds of every optimizer step (evaluations excluded), for timing a run step by step."""

    def __init__(self):
        self.times: list[float] = []
        self._last = 0.0

    def on_step_end(self, ctx: TrainContext, loss: float) -> None:
        self.times.append(ctx.seconds - self._last)
        self._last = ctx.seconds
