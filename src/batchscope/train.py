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

from .data import batch_indices, chunks, forward, split_batch, take, to_device
from .errors import ConfigError, DivergedError, check_positive_float, check_positive_int
from .tasks import Task, load_task

SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("sgd", "adam", "adamw")


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
    diverge_factor: Optional[float] = 1e3    # a step loss above this x the initial loss counts as diverged
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
    target_step: Optional[int] = None
    target_examples: Optional[int] = None
    target_seconds: Optional[float] = None
    stopped_because: str = ""
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
    step: int = 0
    examples: int = 0
    seconds: float = 0.0
    stop: bool = False            # a callback may set this to end the run after the current step
    stop_reason: str = ""


class Callback:
    """Hooks into :func:`train`. Every method is optional."""

    def on_train_begin(self, ctx: TrainContext) -> None: ...
    def on_micro_batch_end(self, ctx: TrainContext, index: int, loss: float) -> None: ...
    def on_before_step(self, ctx: TrainContext) -> None:
        """All micro-batches are back-propagated (and unscaled under AMP); grads hold the batch mean."""
    def on_step_end(self, ctx: TrainContext, loss: float) -> None: ...
    def on_evaluate(self, ctx: TrainContext, point: HistoryPoint) -> None: ...
    def on_train_end(self, ctx: TrainContext, result: TrainResult) -> None: ...


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
        out = forward(model, inputs)
        k = len(idx)
        loss_sum += float(task.loss_fn(out, target)) * k
        if task.metric_fn is not None:
            metric_sum += float(task.metric_fn(out, target)) * k
    model.train(was_training)
    return loss_sum / n, (metric_sum / n if task.metric_fn is not None else None)


def _validate(task: Task, cfg: TrainConfig) -> tuple[int, int]:
    b = check_positive_int("batch_size", cfg.batch_size)
    if b > task.n_train:
        raise ConfigError(f"batch size {b} is larger than the training set of task {task.name!r} "
                          f"({task.n_train} examples); use at most {task.n_train}")
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


def train(task: "Task | str", config: TrainConfig, callbacks: Iterable[Callback] = ()) -> TrainResult:
    """Train ``task`` as ``config`` says and return the history. Same seed, same history."""
    task = load_task(task)
    cfg = config
    if cfg.adaptive is not None:  # the batch changes during the run: batchscope.adapt drives it
        return cfg.adaptive.run(task, cfg, list(callbacks))
    b, m = _validate(task, cfg)
    device = resolve_device(cfg.device)
    if cfg.amp and device.type != "cuda":
        raise ConfigError("automatic mixed precision (--amp) needs a CUDA device; drop --amp on the CPU")
    callbacks = list(callbacks)
    total = total_steps(task, cfg, b)
    eval_every = cfg.eval_every or max(1, total // 25)
    accumulation = b // m

    torch.manual_seed(cfg.seed)
    model = task.make_model().to(device)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"the model of task {task.name!r} has no trainable parameters")
    lr = cfg.lr if cfg.lr is not None else task.lr
    opt_name = cfg.optimizer or task.optimizer
    optimizer = make_optimizer(opt_name, [p for p in model.parameters() if p.requires_grad], lr,
                               task.momentum if cfg.momentum is None else cfg.momentum,
                               task.weight_decay if cfg.weight_decay is None else cfg.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    stream = batch_indices(task.n_train, b, generator)

    amp_dtype = None
    if cfg.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if amp_dtype else nullcontext

    ctx = TrainContext(task, cfg, model, optimizer, device, b, m, accumulation)
    resolved = {**asdict(cfg), "lr": lr, "optimizer": opt_name, "micro_batch": m, "total_steps": total}
    history: list[HistoryPoint] = []
    split = task.target.split

    def record(train_loss: float) -> HistoryPoint:
        eval_loss, metric = evaluate(model, task, split, device, cfg.eval_examples)
        point = HistoryPoint(ctx.step, ctx.examples, ctx.seconds, train_loss, metric, eval_loss,
                             optimizer.param_groups[0]["lr"])
        history.append(point)
        for cb in callbacks:
            cb.on_evaluate(ctx, point)
        return point

    model.train()
    for cb in callbacks:
        cb.on_train_begin(ctx)
    # Step 0: the training loss is measured on (up to 2,048) training examples, not a mini-batch.
    initial_loss = evaluate(model, task, "train", device, 2048)[0]
    record(initial_loss)
    reached = task.target.reached(history[0].eval_loss, history[0].metric)
    target_at = (0, 0, 0.0) if reached else None
    stopped = "target reached" if reached and cfg.until_target else ""
    loss_sum, loss_n = 0.0, 0

    while not stopped and ctx.step < total:
        t0 = time.perf_counter()
        factor = lr_factor(ctx.step, total, cfg.warmup_steps, cfg.schedule)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * factor
        batch = take(task.train_data, next(stream))
        step_loss = 0.0
        for i, micro in enumerate(chunks(batch, m) if accumulation > 1 else [batch]):
            inputs, target = split_batch(to_device(micro, device))
            with autocast():
                loss = task.loss_fn(forward(model, inputs), target)
            # Each micro-batch loss is a mean over m; scaling by m/B makes the summed gradient the
            # mean over the whole batch B, exactly as if it had been one forward pass.
            scaler.scale(loss / accumulation).backward()
            lv = float(loss.detach())
            step_loss += lv / accumulation
            for cb in callbacks:
                cb.on_micro_batch_end(ctx, i, lv)
        blown_up = cfg.diverge_factor is not None and step_loss > cfg.diverge_factor * initial_loss
        if not math.isfinite(step_loss) or blown_up:
            what = f"became {step_loss}" if not blown_up else f"grew from {initial_loss:.4g} to {step_loss:.4g}"
            raise DivergedError(
                f"the training loss {what} at step {ctx.step + 1} with lr={lr:g} at batch size {b}; "
                f"lower the learning rate (try {lr / 10:g}) or add warm-up (--warmup)", history)
        scaler.unscale_(optimizer)
        for cb in callbacks:
            cb.on_before_step(ctx)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ctx.seconds += time.perf_counter() - t0
        ctx.step += 1
        ctx.examples += b
        loss_sum += step_loss
        loss_n += 1
        for cb in callbacks:
            cb.on_step_end(ctx, step_loss)
        if ctx.stop:
            stopped = ctx.stop_reason or "stopped by a callback"
        if cfg.max_seconds is not None and ctx.seconds >= cfg.max_seconds:
            stopped = stopped or f"time limit {cfg.max_seconds:g}s"
        if ctx.step % eval_every == 0 or ctx.step == total or stopped:
            point = record(loss_sum / loss_n)
            loss_sum, loss_n = 0.0, 0
            if target_at is None and task.target.reached(point.eval_loss, point.metric):
                target_at = (ctx.step, ctx.examples, ctx.seconds)
                if cfg.until_target:
                    stopped = stopped or "target reached"
    if not stopped:
        stopped = "step limit"

    result = TrainResult(
        task=task.name, config=resolved, history=history, steps=ctx.step, examples=ctx.examples,
        seconds=ctx.seconds, reached_target=target_at is not None,
        target=task.target.describe(task.metric_name),
        target_step=target_at[0] if target_at else None,
        target_examples=target_at[1] if target_at else None,
        target_seconds=target_at[2] if target_at else None,
        stopped_because=stopped, model=model,
    )
    for cb in callbacks:
        cb.on_train_end(ctx, result)
    return result
