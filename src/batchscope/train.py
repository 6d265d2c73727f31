"""The one training loop every command uses.

It trains a :class:`~batchscope.tasks.Task` at batch size B, optionally as B/m micro-batches of m
with gradient accumulation, for a number of steps or epochs or until the task's target is reached,
and returns the history. Measurements (noise scale, progress bars, study probes) plug in as
:class:`Callback` objects, so the loop itself stays small and the same for everyone.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

import torch
from torch import nn

import numpy as np
from torch.nn.modules.batchnorm import _BatchNorm

from .data import batch_indices, chunks, forward, split_batch, take, to_device
from .errors import (BatchscopeError, ConfigError, DivergedError, TaskError, check_positive_float,
                     check_positive_int)
from .tasks import OPTIMIZERS, Target, Task, load_task

SCHEDULES = ("constant", "cosine", "linear")


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
    # side of it (:func:`target_crossing`); the one definition every caller uses.
    target_step: Optional[float] = None
    target_examples: Optional[float] = None
    target_seconds: Optional[float] = None
    stopped_because: str = ""
    target_interpolated: bool = False      # the target crossing lies between two evaluations
    model: Optional[nn.Module] = field(default=None, repr=False)
    adaptive: Optional[dict] = None   # adaptive runs: per-step batch, accumulation, lr, B_noise and the decisions

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
    batch_size: int
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
    """Hooks into :func:`train`. Every method is optional.

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


class StepClock(Callback):
    """Seconds of every optimizer step (evaluations excluded), for timing a run step by step."""

    def __init__(self):
        self.times: list[float] = []
        self._last = 0.0

    def on_step_end(self, ctx: TrainContext, loss: float) -> None:
        self.times.append(ctx.seconds - self._last)
        self._last = ctx.seconds


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but this machine has no CUDA device; use --device cpu")
    return device


def make_optimizer(name: str, params: Iterable, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"The 'optimizer' parameter must be one of {', '.join(OPTIMIZERS)}. Got {name!r} instead.")


# ---- the task's own code, with errors that say which part failed --------------------------------

def _passes_through(error: Exception) -> bool:
    # Allocation failures by type stay what they are: the memory probes and users catch them as such.
    oom = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), MemoryError) if t is not None)
    return isinstance(error, (oom, BatchscopeError))


_FIXES = {"make_model": "fix make_model() of the task",
          "forward": "fix the model's forward() so that it runs on a batch of the task's data",
          "loss_fn": "loss_fn(output, target) must accept the model's output and return the batch mean",
          "metric_fn": "metric_fn(output, target) must accept the model's output and return a number"}
# A forward failure's fix follows from what it says: only a shape mismatch is about the input size.
# Checked in this order (a dtype or device message may also mention shapes).
_FORWARD_FIXES = (
    (("expected scalar type", "same dtype", "found dtype", "dtype"),
     "make the model's parameters and the task's data the same dtype (for example float32)"),
    (("same device", "expected all tensors to be on", "device type"),
     "create the model's tensors in make_model() as parameters or buffers, so they move with the model"),
    (("index out of range", "out of bounds"),
     "check the task's data: an index (a token or class id) is beyond what the model's embedding or output has"),
    (("shapes cannot be multiplied", "size mismatch", "must match the size", "input size", "input (got",
      "to have", "channels", "shape"), "make the model's input size match the task's data"),
)


def _fix(part: str, error: Exception) -> str:
    if part == "forward":
        text = str(error).lower()
        for needles, fix in _FORWARD_FIXES:
            if any(n in text for n in needles):
                return fix
    return _FIXES[part]


def _task_error(task: Task, part: str, error: Exception) -> TaskError:
    """One line: which part of the task failed, the original error's first line, and the fix that error calls for."""
    first = (str(error).strip().splitlines() or [""])[0]
    return TaskError(f"task {task.name!r}: {part} failed ({type(error).__name__}: {first}); {_fix(part, error)}")


def build_model(task: Task) -> nn.Module:
    """``task.make_model()``, with a failure reported as the task's."""
    try:
        model = task.make_model()
    except Exception as e:
        if _passes_through(e):
            raise
        raise _task_error(task, "make_model", e) from e
    if not isinstance(model, nn.Module):
        raise TaskError(f"task {task.name!r}: make_model() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def task_output(task: Task, model: nn.Module, inputs):
    """The model's forward pass on a batch of the task's data, a failure reported as the task's."""
    try:
        return forward(model, inputs)
    except Exception as e:
        if _passes_through(e):
            raise
        raise _task_error(task, "forward", e) from e


def loss_of(task: Task, out, target) -> torch.Tensor:
    """``task.loss_fn``, checked to be a scalar (the batch mean): the accumulation arithmetic needs it."""
    try:
        loss = task.loss_fn(out, target)
    except Exception as e:
        if _passes_through(e):
            raise
        raise _task_error(task, "loss_fn", e) from e
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TaskError(f"task {task.name!r}: loss_fn must return the batch mean as a scalar tensor, got {got}; "
                        "use reduction='mean'")
    return loss


def task_loss(task: Task, model: nn.Module, inputs, target) -> torch.Tensor:
    """The task's loss of ``model`` on one batch: forward then ``loss_fn``, each failure named."""
    return loss_of(task, task_output(task, model, inputs), target)


def task_metric(task: Task, out, target) -> float:
    try:
        return float(task.metric_fn(out, target))
    except Exception as e:
        if _passes_through(e):
            raise
        raise _task_error(task, "metric_fn", e) from e


# ---- one builder for the model, optimizer and mixed precision of a training step ----------------

@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer a run uses: the task's defaults with the run's overrides applied."""

    name: str
    lr: float
    momentum: float
    weight_decay: float

    @classmethod
    def resolve(cls, task: Task, optimizer: Optional[str] = None, lr: Optional[float] = None,
                momentum: Optional[float] = None, weight_decay: Optional[float] = None) -> "OptimizerSettings":
        name = (optimizer or task.optimizer).lower()
        if name not in OPTIMIZERS:
            raise ConfigError(f"The 'optimizer' parameter must be one of {', '.join(OPTIMIZERS)}. Got {name!r} instead.")
        return cls(name, check_positive_float("lr", task.lr if lr is None else lr),
                   task.momentum if momentum is None else momentum,
                   task.weight_decay if weight_decay is None else weight_decay)

    @classmethod
    def of(cls, task: Task, cfg: "TrainConfig") -> "OptimizerSettings":
        return cls.resolve(task, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)


@dataclass
class TrainingSetup:
    """A fresh model, its optimizer and mixed-precision state: what one training step needs."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: Optional[torch.dtype]
    settings: OptimizerSettings

    def autocast(self):
        return torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()


def amp_dtype(device: torch.device, amp: bool) -> Optional[torch.dtype]:
    if not amp:
        return None
    if device.type != "cuda":
        raise ConfigError("automatic mixed precision (--amp) needs a CUDA device; drop --amp on the CPU")
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_training(task: Task, device: torch.device, settings: OptimizerSettings, amp: bool = False,
                   seed: int = 0) -> TrainingSetup:
    """Seed, build the task's model on ``device``, its optimizer and (under AMP) the gradient scaler.

    ``train()`` and the hardware probes both build their step here, so a profile describes the
    optimizer of the run it is for. bfloat16 needs no loss scaling; float16 gets a GradScaler.
    """
    dtype = amp_dtype(device, amp)
    torch.manual_seed(seed)
    model = build_model(task).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"the model of task {task.name!r} has no trainable parameters")
    optimizer = make_optimizer(settings.name, params, settings.lr, settings.momentum, settings.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
    return TrainingSetup(model, optimizer, scaler, dtype, settings)


def batch_coupled_layers(model: nn.Module) -> list[str]:
    """Names of layers whose training-mode output for one example depends on the rest of its batch."""
    return [name or "<root>" for name, mod in model.named_modules() if isinstance(mod, _BatchNorm)]


def smallest_batch(model: nn.Module) -> int:
    """The smallest batch the model trains on: BatchNorm needs two examples to form batch statistics."""
    return 2 if batch_coupled_layers(model) else 1


def check_batch(task: Task, size: int, what: str = "batch size", model: Optional[nn.Module] = None) -> int:
    """The one check of a batch against the task: positive, within the training set, and (given the
    model) at least the smallest batch its layers can train on."""
    b = check_positive_int(what.replace(" ", "_").replace("-", "_"), size)
    if b > task.n_train:
        raise ConfigError(f"{what} {b} is larger than the training set of task {task.name!r} "
                          f"({task.n_train} examples); use at most {task.n_train}")
    if model is not None and b < smallest_batch(model):
        layers = batch_coupled_layers(model)
        raise ConfigError(f"{what} {b} is too small for task {task.name!r}: its model has BatchNorm (layer "
                          f"{layers[0]!r}), which needs more than one example per batch in training; "
                          f"use a {what} of at least 2")
    return b


def lr_factor(step: int, total: Optional[int], warmup: int, schedule: str) -> float:
    """Multiplier on the base learning rate for optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup`` steps (Goyal et al. 2017), then constant, cosine or linear decay
    to zero at ``total`` steps. Without a known total (target-driven runs) decay is not possible and
    the rate stays constant after warm-up.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or not total or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str = "val", device: "torch.device | str" = "cpu",
             max_examples: Optional[int] = None, batch_size: int = 1024) -> tuple[float, Optional[float]]:
    """Mean loss and metric of ``model`` on a split ('val' or 'train'), weighted by example count."""
    device = torch.device(device)
    data = task.val_data if split == "val" and task.val_data is not None else task.train_data
    n = len(data)  # type: ignore[arg-type]
    if max_examples is not None:
        n = min(n, max_examples)
    was_training = model.training
    model.eval()
    loss_sum, metric_sum = 0.0, 0.0
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        inputs, target = split_batch(to_device(take(data, idx), device))
        out = task_output(task, model, inputs)
        k = len(idx)
        loss_sum += float(loss_of(task, out, target)) * k
        if task.metric_fn is not None:
            metric_sum += task_metric(task, out, target) * k
    model.train(was_training)
    return loss_sum / n, (metric_sum / n if task.metric_fn is not None else None)


def _validate(task: Task, cfg: TrainConfig) -> tuple[int, int]:
    b = check_batch(task, cfg.batch_size)
    m = b if cfg.micro_batch is None else check_positive_int("micro_batch", cfg.micro_batch)
    if b % m:
        raise ConfigError(f"micro-batch {m} does not divide batch size {b}; pick a divisor of {b} "
                          f"(for example {max(d for d in range(1, m + 1) if b % d == 0)})")
    if cfg.steps is None and cfg.epochs is None and not cfg.until_target:
        raise ConfigError("say how long to train: steps, epochs or until_target")
    if cfg.steps is not None:
        check_positive_int("steps", cfg.steps)
    if cfg.epochs is not None:
        check_positive_float("epochs", cfg.epochs)
    if cfg.eval_every is not None:
        check_positive_int("eval_every", cfg.eval_every)
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"The 'schedule' parameter must be one of {', '.join(SCHEDULES)}. Got {cfg.schedule!r} instead.")
    if cfg.warmup_steps < 0:
        raise ConfigError(f"The 'warmup_steps' parameter must be >= 0. Got {cfg.warmup_steps!r} instead.")
    if cfg.lr is not None:
        check_positive_float("lr", cfg.lr)
    return b, m


def total_steps(task: Task, cfg: TrainConfig, b: int) -> int:
    per_epoch = task.n_train // b
    limits = []
    if cfg.steps is not None:
        limits.append(cfg.steps)
    if cfg.epochs is not None:
        limits.append(max(1, math.ceil(cfg.epochs * per_epoch)))
    if not limits:  # until_target alone: a generous safety cap of 200 epochs (at least 2,000 steps)
        limits.append(max(2000, 200 * per_epoch))
    return min(limits)


# ---- when to evaluate, and where the target was crossed ----------------------------------------

EVALS_PER_RUN = 25           # fixed-length runs: evaluations spread evenly over the run
TARGET_RESOLUTION = 1 / 25   # target-driven runs: the gap between evaluations, as a share of the steps so far


def evaluation_gap(step: int, total: int, cfg: TrainConfig) -> int:
    """Steps from ``step`` to the next evaluation.

    ``eval_every`` when given. A run of known length evaluates ~25 times. A run that stops at its
    target has no meaningful length (its cap is only a safety net), so the gap grows with the run:
    every step for the first 25, then 1/25 of the steps so far. Steps to target, interpolated
    between evaluations, are then resolved to ~4% whatever cap was set; a run of S steps evaluates
    about 25 (1 + ln(S / 25)) times.
    """
    if cfg.eval_every is not None:
        return cfg.eval_every
    if cfg.until_target:
        return max(1, int(step * TARGET_RESOLUTION))
    return max(1, total // EVALS_PER_RUN)


def crossing_step(points: list[tuple[float, Optional[float]]], threshold: float, higher_is_better: bool) -> Optional[float]:
    """First step at which a measured series reaches ``threshold``, interpolated linearly between evaluations.

    ``points`` are (step, value) in step order. Evaluations are sparse, so taking the evaluation's
    own step would round every steps-to-target up to the evaluation grid. This is the one
    definition of "steps to target" (``TrainResult.target_step`` and the study's runs use it).
    """
    prev = None
    for step, value in points:
        if value is None or not math.isfinite(value):
            prev = None
            continue
        ok = value >= threshold if higher_is_better else value <= threshold
        if ok:
            if prev is None or prev[1] == value:
                return float(step)
            s0, v0 = prev
            return float(s0 + (threshold - v0) / (value - v0) * (step - s0))
        prev = (step, value)
    return None


@dataclass(frozen=True)
class TargetCrossing:
    step: float                 # optimizer steps, interpolated between the evaluations either side
    examples: float             # step x batch size
    seconds: float              # training seconds, interpolated the same way
    interpolated: bool          # False when an evaluation sat exactly on the crossing (or at step 0)


def target_crossing(history: list[HistoryPoint], target: Target, batch_size: int) -> Optional[TargetCrossing]:
    """Where ``history`` first reached ``target`` (None if it never did)."""
    values = [(p.step, p.metric if target.kind == "metric" else p.eval_loss) for p in history]
    step = crossing_step(values, target.value, target.kind == "metric")
    if step is None:
        return None
    steps = [p.step for p in history]
    seconds = float(np.interp(step, steps, [p.seconds for p in history]))
    return TargetCrossing(step, step * batch_size, seconds, step not in steps)


# ---- the loop ----------------------------------------------------------------------------------

DIVERGE_SMOOTHING = 20       # steps: the window of the smoothed loss the trend rule watches


def divergence(step_loss: float, smoothed: float, steps: int, initial: float, cfg: TrainConfig) -> Optional[str]:
    """Why the run counts as diverged after this step, or None.

    Three rules: a non-finite loss; one step's loss above ``diverge_factor`` (1000x) the initial
    loss; or, after the first ``DIVERGE_SMOOTHING`` steps, the smoothed loss (an EMA over ~20 steps)
    above ``diverge_trend`` (10x) the initial loss. Normal training, however noisy, brings the
    loss *down* from its start: a 20-step average ten times above it means the run is climbing,
    not fluctuating (``--lr 5`` on dots takes the loss from 0.71 to 177). Both ratios are skipped
    when the initial loss is not positive (a loss that can be negative has no scale to compare to).
    """
    if not math.isfinite(step_loss):
        return f"became {step_loss}"
    if initial <= 0:
        return None
    if cfg.diverge_factor is not None and step_loss > cfg.diverge_factor * initial:
        return f"grew from {initial:.4g} to {step_loss:.4g}"
    if cfg.diverge_trend is not None and steps >= DIVERGE_SMOOTHING and smoothed > cfg.diverge_trend * initial:
        return f"grew from {initial:.4g} to {smoothed:.4g} (mean of the last ~{DIVERGE_SMOOTHING} steps)"
    return None


def accumulate_step(ctx: TrainContext, setup: TrainingSetup, batch, callbacks: list[Callback]) -> float:
    """Forward and backward over the micro-batches of one batch; returns the batch's mean loss."""
    task, m, k = ctx.task, ctx.micro_batch, ctx.accumulation
    step_loss = 0.0
    for i, micro in enumerate(chunks(batch, m) if k > 1 else [batch]):
        inputs, target = split_batch(to_device(micro, ctx.device))
        with setup.autocast():
            loss = task_loss(task, ctx.model, inputs, target)
        # Each micro-batch loss is a mean over m; scaling by m/B makes the summed gradient the
        # mean over the whole batch B, exactly as if it had been one forward pass.
        setup.scaler.scale(loss / k).backward()
        lv = float(loss.detach())
        step_loss += lv / k
        for cb in callbacks:
            cb.on_micro_batch_end(ctx, i, lv)
    return step_loss


def record_evaluation(ctx: TrainContext, train_loss: float, history: list[HistoryPoint],
                      callbacks: list[Callback]) -> HistoryPoint:
    """Evaluate on the target's split, append the point to ``history`` and tell the callbacks."""
    eval_loss, metric = evaluate(ctx.model, ctx.task, ctx.task.target.split, ctx.device, ctx.config.eval_examples)
    point = HistoryPoint(ctx.step, ctx.examples, ctx.seconds, train_loss, metric, eval_loss,
                         ctx.optimizer.param_groups[0]["lr"])
    history.append(point)
    for cb in callbacks:
        cb.on_evaluate(ctx, point)
    return point


def as_callbacks(callbacks: Iterable) -> list[Callback]:
    """Callbacks as given; an object with ``as_callback()`` (a noise monitor) is adapted."""
    return [c if isinstance(c, Callback) or not hasattr(c, "as_callback") else c.as_callback() for c in callbacks]


def train(task: "Task | str", config: TrainConfig, callbacks: Iterable = ()) -> TrainResult:
    """Train ``task`` as ``config`` says and return the history. Same seed, same history."""
    task = load_task(task)
    cfg = config
    if cfg.adaptive is not None:  # the batch changes during the run: batchscope.adapt drives it
        return cfg.adaptive.run(task, cfg, list(callbacks))
    b, m = _validate(task, cfg)
    device = resolve_device(cfg.device)
    settings = OptimizerSettings.of(task, cfg)
    setup = build_training(task, device, settings, cfg.amp, cfg.seed)
    check_batch(task, m, "micro-batch" if m < b else "batch size", setup.model)
    callbacks = as_callbacks(callbacks)
    total = total_steps(task, cfg, b)
    ctx = TrainContext(task, cfg, setup.model, setup.optimizer, device, b, m, b // m, scaler=setup.scaler)
    resolved = {**asdict(cfg), "lr": settings.lr, "optimizer": settings.name, "micro_batch": m, "total_steps": total}
    run = _Run(ctx, setup, callbacks, total)
    for cb in callbacks:
        cb.on_train_begin(ctx)
    stopped = run.loop()
    crossing = target_crossing(run.history, task.target, b) if run.reached else None
    result = TrainResult(
        task=task.name, config=resolved, history=run.history, steps=ctx.step, examples=ctx.examples,
        seconds=ctx.seconds, reached_target=crossing is not None,
        target=task.target.describe(task.metric_name),
        target_step=crossing.step if crossing else None,
        target_examples=crossing.examples if crossing else None,
        target_seconds=crossing.seconds if crossing else None,
        target_interpolated=crossing.interpolated if crossing else False,
        stopped_because=stopped, model=setup.model,
    )
    for cb in callbacks:
        cb.on_train_end(ctx, result)
    return result


class _Run:
    """The state of one call of :func:`train` between set-up and result: the history and the loop."""

    def __init__(self, ctx: TrainContext, setup: TrainingSetup, callbacks: list[Callback], total: int):
        self.ctx, self.setup, self.callbacks, self.total = ctx, setup, callbacks, total
        self.history: list[HistoryPoint] = []
        self.reached = False

    def record(self, train_loss: float) -> HistoryPoint:
        point = record_evaluation(self.ctx, train_loss, self.history, self.callbacks)
        self.reached = self.reached or self.ctx.task.target.reached(point.eval_loss, point.metric)
        return point

    def loop(self) -> str:
        """Train until a stop condition; returns why it stopped."""
        ctx, cfg, setup, total = self.ctx, self.ctx.config, self.setup, self.total
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        stream = batch_indices(ctx.task.n_train, ctx.batch_size, generator)
        base_lrs = [g["lr"] for g in ctx.optimizer.param_groups]
        # Step 0: the training loss is measured on (up to 2,048) training examples, not a mini-batch.
        initial = evaluate(ctx.model, ctx.task, "train", ctx.device, 2048)[0]
        self.record(initial)
        stopped = "target reached" if self.reached and cfg.until_target else ""
        loss_sum, loss_n, smoothed, weight = 0.0, 0, 0.0, 0.0
        next_eval = evaluation_gap(0, total, cfg)
        while not stopped and ctx.step < total:
            t0 = time.perf_counter()
            factor = lr_factor(ctx.step, total, cfg.warmup_steps, cfg.schedule)
            for group, base in zip(ctx.optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            ctx.step_loss = accumulate_step(ctx, setup, take(ctx.task.train_data, next(stream)), self.callbacks)
            decay = 1.0 - 1.0 / DIVERGE_SMOOTHING
            smoothed, weight = decay * smoothed + ctx.step_loss, decay * weight + 1.0
            why = divergence(ctx.step_loss, smoothed / weight, ctx.step + 1, initial, cfg)
            if why:
                lr = base_lrs[0]
                raise DivergedError(
                    f"the training loss {why} at step {ctx.step + 1} with lr={lr:g} at batch size {ctx.batch_size}; "
                    f"lower the learning rate (try {lr / 10:g}) or warm it up over more steps", self.history)
            setup.scaler.unscale_(ctx.optimizer)
            for cb in self.callbacks:
                cb.on_before_step(ctx)
            setup.scaler.step(ctx.optimizer)
            setup.scaler.update()
            ctx.optimizer.zero_grad(set_to_none=True)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            ctx.seconds += time.perf_counter() - t0
            ctx.step += 1
            ctx.examples += ctx.batch_size
            loss_sum, loss_n = loss_sum + ctx.step_loss, loss_n + 1
            for cb in self.callbacks:
                cb.on_step_end(ctx, ctx.step_loss)
            if ctx.stop:
                stopped = ctx.stop_reason or "stopped by a callback"
            if cfg.max_seconds is not None and ctx.seconds >= cfg.max_seconds:
                stopped = stopped or f"time limit {cfg.max_seconds:g}s"
            if ctx.step >= next_eval or ctx.step == total or stopped:
                self.record(loss_sum / loss_n)
                loss_sum, loss_n = 0.0, 0
                next_eval = ctx.step + evaluation_gap(ctx.step, total, cfg)
                if self.reached and cfg.until_target:
                    stopped = stopped or "target reached"
        return stopped or "step limit"
