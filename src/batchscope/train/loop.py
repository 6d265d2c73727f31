"""The one training loop: :func:`train` runs a :class:`Run`, which asks its batch policy for each step.

A :class:`Run` is the whole state of a run in progress (model, optimizer, scaler, policy with its
sampler, counters, history, RNG). :meth:`Run.branch` forks it and trains the copy for a stated
number of examples, leaving the parent untouched: that is how a setting is checked before it is
recommended, or the critical batch measured at a point of a run.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..data import chunks, split_batch, take, to_device
from ..errors import ConfigError, DivergedError
from ..tasks import Task, load_task
from .config import Callback, HistoryPoint, TrainConfig, TrainContext, TrainResult, check_config
from .policy import BatchPolicy, FixedBatch
from .schedule import DIVERGE_SMOOTHING, divergence, evaluation_gap, target_crossing, total_steps
from .setup import OptimizerSettings, TrainingSetup, build_training, resolve_device
from .taskcalls import evaluate, task_loss

CHECKPOINT_FORMAT = "batchscope-run/1"


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


def as_callbacks(callbacks: Iterable) -> list[Callback]:
    """Callbacks as given; an object with ``as_callback()`` (a noise monitor) is adapted."""
    return [c if isinstance(c, Callback) or not hasattr(c, "as_callback") else c.as_callback() for c in callbacks]


def _diverged_message(why: str, step: int, lr: float, batch: int) -> str:
    where = f"at step {step} with lr={lr:g} at batch size {batch}"
    if why.startswith("became"):
        return (f"the training loss {why} {where}: a non-finite loss comes from a rate too high for the model, "
                f"or from inf/NaN in the data or the model's output; check the data, then lower the rate "
                f"(try {lr / 10:g}) or warm it up over more steps")
    return f"the training loss {why} {where}; lower the learning rate (try {lr / 10:g}) or warm it up over more steps"


@dataclass
class Branch:
    """A short run forked from a state: what it reached for the examples it was given."""

    start_step: int
    steps: int
    examples: int
    seconds: float
    batch_sizes: list[int]
    losses: list[float]                  # per-step training loss
    eval_loss: Optional[float]           # on the target split at the branch's end (None if it diverged)
    metric: Optional[float]
    diverged: str = ""                   # why it counted as diverged ('' if it did not)
    run: Optional["Run"] = field(default=None, repr=False)   # the branch's final state (to continue it)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("run", None)
        return d


class Run:
    """One run of :func:`train` between set-up and result; see the module docstring."""

    def __init__(self, task: Task, cfg: TrainConfig, policy: BatchPolicy, setup: TrainingSetup,
                 device: torch.device, callbacks: list[Callback]):
        self.task, self.cfg, self.policy, self.setup, self.callbacks = task, cfg, policy, setup, callbacks
        b0 = policy.start_batch
        self.ctx = TrainContext(task, cfg, setup.model, setup.optimizer, device, b0, *policy.start_layout(),
                                scaler=setup.scaler)
        self.total = total_steps(task, cfg, b0)     # the budget in steps at the starting batch
        self.history: list[HistoryPoint] = []
        self.reached = False
        self.initial_loss = math.nan
        self.smoothed = (0.0, 0.0)                  # EMA of the step loss and its weight (the trend rule)
        self.loss_sum, self.loss_n = 0.0, 0         # training loss since the last evaluation
        self.next_eval = 0                          # examples at which the next evaluation is due
        self.rng: Optional[dict] = None             # a fork's own RNG state (None: the global one)
        self.stop_at_examples: Optional[int] = None

    # ---- one step ---------------------------------------------------------------------------

    def step(self) -> float:
        """One optimizer step as the policy plans it; returns its training loss."""
        ctx, setup = self.ctx, self.setup
        t0 = time.perf_counter()
        plan = self.policy.plan(ctx)
        lrs = plan.lr if isinstance(plan.lr, tuple) else (plan.lr,) * len(ctx.optimizer.param_groups)
        for group, lr in zip(ctx.optimizer.param_groups, lrs):
            group["lr"] = lr
        ctx.batch_size, ctx.micro_batch, ctx.accumulation = plan.batch_size, plan.micro_batch, plan.accumulation
        ctx.step_loss = accumulate_step(ctx, setup, take(self.task.train_data, plan.indices), self.callbacks)
        recovered = self._check_diverged(ctx.step_loss, lrs[0])
        if not recovered:
            setup.scaler.unscale_(ctx.optimizer)
            for cb in (self.policy, *self.callbacks):
                cb.on_before_step(ctx)
            setup.scaler.step(ctx.optimizer)
            setup.scaler.update()
        ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds = time.perf_counter() - t0
        ctx.seconds += seconds
        ctx.step += 1
        ctx.examples += plan.batch_size
        self.policy.after_step(ctx, plan, seconds)
        if not recovered:   # a dropped step's loss is not the model's (the history shows the restored state's)
            self.loss_sum, self.loss_n = self.loss_sum + ctx.step_loss, self.loss_n + 1
        for cb in self.callbacks:
            cb.on_step_end(ctx, ctx.step_loss)
        return ctx.step_loss

    def _check_diverged(self, step_loss: float, lr: float) -> bool:
        """Raise DivergedError if the loss diverged, unless the policy recovers (True: the step is dropped)."""
        decay = 1.0 - 1.0 / DIVERGE_SMOOTHING
        loss, weight = self.smoothed
        self.smoothed = (decay * loss + step_loss, decay * weight + 1.0)
        why = divergence(step_loss, self.smoothed[0] / self.smoothed[1], self.ctx.step + 1, self.initial_loss,
                         self.cfg)
        if not why:
            return False
        message = _diverged_message(why, self.ctx.step + 1, lr, self.ctx.batch_size)
        if self.policy.recover(self.ctx, message):
            self.smoothed = (0.0, 0.0)      # the trend restarts from the restored state
            return True
        raise DivergedError(message, self.history)

    # ---- evaluations, stops, the whole run ---------------------------------------------------

    def record(self, train_loss: float) -> HistoryPoint:
        """Evaluate on the target's split, append the point and tell the callbacks."""
        ctx = self.ctx
        eval_loss, metric = evaluate(ctx.model, self.task, self.task.target.split, ctx.device, self.cfg.eval_examples)
        point = HistoryPoint(ctx.step, ctx.examples, ctx.seconds, train_loss, metric, eval_loss,
                             ctx.optimizer.param_groups[0]["lr"])
        self.history.append(point)
        self.reached = self.reached or self.task.target.reached(point.eval_loss, point.metric)
        for cb in self.callbacks:
            cb.on_evaluate(ctx, point)
        return point

    def _schedule_evaluation(self) -> None:
        """The next evaluation, in examples: ``evaluation_gap`` steps at the starting batch (at least
        one step at the batch in use), so it means the same whatever the batch grows to."""
        b0, ctx = self.policy.start_batch, self.ctx
        gap = b0 * evaluation_gap(ctx.examples // b0, self.total, self.cfg)
        self.next_eval = ctx.examples + max(ctx.batch_size, gap)

    def start(self) -> None:
        """Tell the callbacks, then resume from ``cfg.resume`` or evaluate the initial model (step 0)."""
        for cb in self.callbacks:
            cb.on_train_begin(self.ctx)
        if self.cfg.resume:
            self.load_state_dict(load_checkpoint(self.cfg.resume, self.task))
            return
        # Step 0: the training loss is measured on (up to 2,048) training examples, not a mini-batch.
        self.initial_loss = evaluate(self.ctx.model, self.task, "train", self.ctx.device, 2048)[0]
        self.record(self.initial_loss)
        self._schedule_evaluation()

    def _stop_reason(self) -> str:
        ctx, cfg = self.ctx, self.cfg
        if ctx.stop:
            return ctx.stop_reason or "stopped by a callback"
        if cfg.max_seconds is not None and ctx.seconds >= cfg.max_seconds:
            return f"time limit {cfg.max_seconds:g}s"
        if self.stop_at_examples is not None and ctx.examples >= self.stop_at_examples:
            return "examples of the branch done"
        return ""

    def loop(self) -> str:
        """Train until a stop condition; returns why it stopped."""
        cfg, policy = self.cfg, self.policy
        stopped = "target reached" if self.reached and cfg.until_target else ""
        while not stopped and not policy.exhausted(self.ctx):
            self.step()
            stopped = self._stop_reason()
            if self.ctx.examples >= self.next_eval or stopped or policy.exhausted(self.ctx):
                self.record(self.loss_sum / self.loss_n)
                self.loss_sum, self.loss_n = 0.0, 0
                self._schedule_evaluation()
                if self.reached and cfg.until_target:
                    stopped = stopped or "target reached"
            self._checkpoint()
        return stopped or "step limit"

    def result(self, stopped: str) -> TrainResult:
        ctx, task = self.ctx, self.task
        crossing = target_crossing(self.history, task.target) if self.reached else None
        settings = self.setup.settings
        resolved = {**asdict(self.cfg), "lr": settings.lr, "optimizer": settings.name, **self.policy.describe()}
        result = TrainResult(
            task=task.name, config=resolved, history=self.history, steps=ctx.step, examples=ctx.examples,
            seconds=ctx.seconds, reached_target=crossing is not None, target=task.target.describe(task.metric_name),
            target_step=crossing.step if crossing else None,
            target_examples=crossing.examples if crossing else None,
            target_seconds=crossing.seconds if crossing else None,
            target_interpolated=crossing.interpolated if crossing else False,
            stopped_because=stopped, model=ctx.model, adaptive=self.policy.summary())
        for cb in self.callbacks:
            cb.on_train_end(ctx, result)
        return result

    # ---- forks ------------------------------------------------------------------------------

    def fork(self, policy: Optional[BatchPolicy] = None) -> "Run":
        """A copy of this run's whole state (the task's data shared, no callbacks); ``policy`` replaces
        the copy's policy (it is begun on the copy's model and optimizer)."""
        memo = {id(self.task): self.task}
        callbacks, self.callbacks = self.callbacks, []
        try:
            twin = copy.deepcopy(self, memo)
        finally:
            self.callbacks = callbacks
        twin.rng = self.rng if self.rng is not None else _rng_state(self.ctx.device)
        if policy is not None:
            twin.policy = policy
            policy.begin(twin.ctx)
        return twin

    def branch(self, examples: int, policy: Optional[BatchPolicy] = None) -> Branch:
        """Fork, train the fork for ``examples`` examples (no evaluations on the way), evaluate it once.

        The parent is untouched: its model, optimizer, sampler, policy and the global RNG are as before.
        """
        twin = self.fork(policy)
        ctx, start_step, start_examples, start_seconds = twin.ctx, twin.ctx.step, twin.ctx.examples, twin.ctx.seconds
        ctx.stop, ctx.stop_reason = False, ""   # a run stopped by a callback still branches
        twin.stop_at_examples, twin.next_eval = start_examples + examples, math.inf
        losses, sizes, diverged = [], [], ""
        with twin._own_rng():
            try:
                while not twin._stop_reason() and not twin.policy.exhausted(ctx):
                    losses.append(twin.step())
                    sizes.append(ctx.batch_size)
            except DivergedError as e:
                diverged = str(e)
            loss, metric = (None, None) if diverged else evaluate(ctx.model, self.task, self.task.target.split,
                                                                  ctx.device, self.cfg.eval_examples)
        return Branch(start_step, ctx.step - start_step, ctx.examples - start_examples, ctx.seconds - start_seconds,
                      sizes, losses, loss, metric, diverged, twin)

    @contextmanager
    def _own_rng(self):
        outer = _rng_state(self.ctx.device)
        _set_rng_state(self.rng, self.ctx.device)
        try:
            yield
        finally:
            self.rng = _rng_state(self.ctx.device)
            _set_rng_state(outer, self.ctx.device)

    # ---- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        ctx = self.ctx
        return {"format": CHECKPOINT_FORMAT, "task": self.task.name, "policy": type(self.policy).__name__,
                "model": ctx.model.state_dict(), "optimizer": ctx.optimizer.state_dict(),
                "scaler": self.setup.scaler.state_dict(), "policy_state": self.policy.state_dict(),
                "counters": {"step": ctx.step, "examples": ctx.examples, "seconds": ctx.seconds,
                             "next_eval": self.next_eval, "initial_loss": self.initial_loss, "reached": self.reached,
                             "smoothed": list(self.smoothed), "loss_sum": self.loss_sum, "loss_n": self.loss_n},
                "history": [asdict(p) for p in self.history], "rng": _rng_state(ctx.device)}

    def load_state_dict(self, state: dict) -> None:
        ctx, where = self.ctx, self.cfg.resume or "the checkpoint"
        if state.get("policy") != type(self.policy).__name__:
            raise ConfigError(f"{where} holds a run with the {state.get('policy')} policy, and this run uses "
                              f"{type(self.policy).__name__}; resume with the settings that wrote it")
        try:
            ctx.model.load_state_dict(state["model"])
            ctx.optimizer.load_state_dict(state["optimizer"])
            self.policy.load_state_dict(state["policy_state"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError(f"{where} does not fit this run's model or settings ({first}); resume with the "
                              "task and settings that wrote it") from None
        self.setup.scaler.load_state_dict(state["scaler"])
        n = state["counters"]
        ctx.step, ctx.examples, ctx.seconds = n["step"], n["examples"], n["seconds"]
        self.next_eval, self.initial_loss, self.reached = n["next_eval"], n["initial_loss"], n["reached"]
        self.smoothed, self.loss_sum, self.loss_n = tuple(n["smoothed"]), n["loss_sum"], n["loss_n"]
        self.history = [HistoryPoint(**p) for p in state["history"]]
        _set_rng_state(state["rng"], ctx.device)
        self.policy.resumed(ctx)

    def _checkpoint(self) -> None:
        cfg = self.cfg
        if cfg.checkpoint and self.ctx.step % cfg.checkpoint_every == 0:
            save_checkpoint(self.state_dict(), cfg.checkpoint)


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def check_checkpoint_path(path: str) -> None:
    """Refuse a checkpoint path that cannot be written before training starts (not after hours)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"checkpoint path {path} is a directory; give a file path such as {p / 'run.pt'}")
    if not p.parent.is_dir():
        raise ConfigError(f"checkpoint path {path}: its directory {p.parent} does not exist; create it first")
    if not os.access(p.parent, os.W_OK):
        raise ConfigError(f"checkpoint path {path}: its directory {p.parent} is not writable; choose another")


def save_checkpoint(state: dict, path: str) -> None:
    """Write atomically: a run killed while writing keeps the previous checkpoint, and no ``.tmp`` is left."""
    tmp = f"{path}.tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str, task: Task) -> dict:
    """A checkpoint written by :func:`save_checkpoint` for ``task``, or a ConfigError saying what is wrong."""
    if not Path(path).is_file():
        raise ConfigError(f"resume: no checkpoint at {path}; give the path a run wrote with checkpoint=...")
    try:
        state = torch.load(path, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError) as e:
        raise ConfigError(f"resume: {path} is not a readable batchscope checkpoint ({type(e).__name__}); "
                          "give the path a run wrote with checkpoint=...") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"resume: {path} is not a batchscope run checkpoint; give the path a run wrote "
                          "with checkpoint=...")
    if state["task"] != task.name:
        raise ConfigError(f"resume: {path} is a checkpoint of task {state['task']!r}, not {task.name!r}; "
                          "resume it with that task")
    return state


def make_policy(task: Task, cfg: TrainConfig) -> BatchPolicy:
    """The policy ``cfg`` asks for: the adaptive controller's when ``cfg.adaptive`` is set, else a fixed batch."""
    if cfg.adaptive is not None:
        return cfg.adaptive.policy(task, cfg)
    return FixedBatch(task, cfg)


def start_run(task: "Task | str", config: TrainConfig, callbacks: Iterable = (),
              policy: Optional[BatchPolicy] = None) -> Run:
    """Check ``config``, build the model, optimizer and policy, and evaluate step 0 (or resume)."""
    task = load_task(task)
    check_config(config)
    if config.checkpoint:
        check_checkpoint_path(config.checkpoint)
    policy = policy or make_policy(task, config)
    device = resolve_device(config.device)
    setup = build_training(task, device, OptimizerSettings.of(task, config), config.amp, config.seed)
    policy.begin(TrainContext(task, config, setup.model, setup.optimizer, device, policy.start_batch,
                              *policy.start_layout(), scaler=setup.scaler))
    run = Run(task, config, policy, setup, device, as_callbacks(callbacks))
    run.start()
    return run


def train(task: "Task | str", config: TrainConfig, callbacks: Iterable = (),
          policy: Optional[BatchPolicy] = None) -> TrainResult:
    """Train ``task`` as ``config`` says (batch by ``policy``, default from the config) and return the
    history. Same seed, same history."""
    run = start_run(task, config, callbacks, policy)
    return run.result(run.loop())
