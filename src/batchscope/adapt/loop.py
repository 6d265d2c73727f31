"""``train(task, TrainConfig(..., adaptive=AdaptiveConfig()))``: a run whose batch follows the noise scale.

Each optimizer step: the sampler draws the controller's current global batch; it is run as the
controller's micro-batches (accumulation beyond the memory ceiling); the monitor measures the
gradient noise scale on a sampled subset of steps (a measured step is split into at least two
micro-batches, which is what the micro-batch estimator needs, so measuring costs about one extra
fixed cost alpha per measured step; the first ``min_samples`` steps are measured, then every
``measure_every``-th, which spreads the cost to ``overhead`` of a long run); after each measurement
the controller re-decides from the monitor's estimate, and the learning rate follows
the batch (:class:`ScaledLearningRate`). Warm-up counts steps at the starting batch (progress),
evaluations come every ``eval_every`` x starting-batch examples, so both mean the same thing
whatever the batch grows to.

The whole state (model, optimizer, sampler, controller, monitor, rate, counters, RNG) is one
``state_dict``; with ``checkpoint`` it is written every ``checkpoint_every`` steps, and ``resume``
continues a killed run on the same batches, rates and examples as the uninterrupted run.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..data import take
from ..errors import ConfigError, DivergedError, check_positive_float, check_positive_int
from ..hardware import HardwareProfile, profile_hardware
from ..noise import NoiseScaleMonitor
from ..plan.critical_batch import LIVE_FACTOR
from ..tasks import Task
from ..train import (DIVERGE_SMOOTHING, EVALS_PER_RUN, TARGET_RESOLUTION, Callback, HistoryPoint,
                     OptimizerSettings, TrainConfig, TrainContext, TrainResult, accumulate_step, as_callbacks,
                     build_training, check_batch, crossing_step, divergence, evaluate, record_evaluation,
                     resolve_device, total_steps)
from .controller import BatchSizeController, StepTimeModel
from .rules import ADAM_TYPE, ScaledLearningRate
from .sampler import AdaptiveBatchSampler
from .state import adapt_state, load_adapt_state, load_monitor_state, monitor_state  # noqa: F401 (kept importable here)

NOISE_KINDS = ("raw", "preconditioned")


@dataclass
class AdaptiveConfig:
    """How the batch adapts. The starting batch and rate are ``TrainConfig.batch_size`` and ``lr``.

    profile: a :class:`HardwareProfile`, the path of one saved by ``batchscope profile --out``, or
        None to measure one first (its step-time curve and memory ceiling drive the controller).
    memory_ceiling: examples per device pass (default: the profile's ceiling when memory limited it).
    every: steps between decisions (default: after every measured step, from the ``min_samples``-th on).
    measure_every: measure the noise every this many steps (default: first the fewest that keep the
        profile's predicted cost within ``overhead``, then the same from the run's own step times).
    noise: 'raw' gradient noise, or 'preconditioned' by Adam's second moments (Adam-type only).
    decision_level: with ``confident``, a move must still pay off at the end of the B_noise interval
        of this level that argues against it. The quartiles, not the 90% interval: five
        measurements' 90% interval spans a factor of 10 or more (a ratio of two noisy sums) and held
        every move of the short runs of benchmarks/adaptive_vs_fixed.py; 3 to 1 odds, with
        ``threshold`` on top, and a wrong move is undone at a later measurement.
    noise_factor: B_noise = noise_factor x the monitor's B_simple (default: the suite-calibrated
        ``plan.critical_batch.LIVE_FACTOR`` for raw noise; 1 for preconditioned noise, which the
        suite could not calibrate: 4 tasks, within 2x of B_crit on 2).
    min_batch: the smallest global batch (default: a quarter of the starting batch).
    """

    profile: Union[HardwareProfile, str, Path, None] = None
    max_batch: Optional[int] = None
    memory_ceiling: Optional[int] = None
    every: Optional[int] = None
    threshold: float = 0.05
    measure_every: Optional[int] = None
    overhead: float = 0.02
    min_samples: int = 5
    confident: bool = True        # a move must also pay off at the interval's end against it
    decision_level: float = 0.5   # ... of this interval (the quartiles: 3 to 1 odds that the move pays)
    noise: str = "raw"
    noise_factor: Optional[float] = None
    min_batch: Optional[int] = None
    checkpoint: Optional[str] = None
    checkpoint_every: Optional[int] = None
    resume: Optional[str] = None

    def run(self, task: Task, cfg: TrainConfig, callbacks: list[Callback]) -> TrainResult:
        """Called by :func:`batchscope.train.train` when ``TrainConfig.adaptive`` is set."""
        return AdaptiveRun(task, cfg, self, callbacks).run()

    def describe(self) -> dict:
        """The settings as JSON-able values (a profile object is named, not copied)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        p = self.profile
        d["profile"] = str(p) if isinstance(p, (str, Path)) else ("given" if p is not None else "measured")
        return d


def resolve_profile(task: Task, acfg: AdaptiveConfig, device: str) -> HardwareProfile:
    if isinstance(acfg.profile, HardwareProfile):
        return acfg.profile.check_task(task)
    if acfg.profile is not None:
        from ..hardware import load_profile_for
        return load_profile_for(task, acfg.profile)
    return profile_hardware(task, device=device, max_batch=acfg.max_batch)


def noise_factor_of(acfg: AdaptiveConfig) -> float:
    if acfg.noise_factor is not None:
        return acfg.noise_factor
    return LIVE_FACTOR if acfg.noise == "raw" else 1.0


def memory_ceiling_of(profile: HardwareProfile, acfg: AdaptiveConfig) -> Optional[int]:
    if acfg.memory_ceiling is not None:
        return acfg.memory_ceiling
    return profile.max_batch if profile.limited_by == "memory" else None


def measured_layout(b: int, micro: int, accumulation: int) -> tuple[int, int]:
    """(micro-batch, passes) for a measured step: the estimator needs at least two equal micro-batches."""
    if accumulation >= 2:
        return micro, accumulation
    d = next(k for k in range(2, b + 1) if b % k == 0)
    return b // d, d


MIN_CADENCE = 2   # an automatic cadence leaves every other step unmeasured, so plain steps keep being timed
HOOK_FACTOR = 2.0   # measured step's extra cost / the extra pass alone (benchmarks/noise_overhead.py, CPU)


def auto_measure_every(time_model: StepTimeModel, b: int, overhead: float) -> int:
    """Steps between measurements so that measuring costs ``overhead`` of the training time.

    A measured step runs its batch as two passes instead of one: the extra pass costs the fixed
    cost alpha of the profile's fitted line (measured medians are too noisy for a difference of two
    of them); the norm hooks cost about as much again on a CPU (HOOK_FACTOR, measured by
    benchmarks/noise_overhead.py). The cadence is fixed by the profile, not by timing the run, so
    the same seed gives the same run.
    """
    extra = HOOK_FACTOR * time_model.alpha
    return max(MIN_CADENCE, math.ceil(extra / (overhead * time_model.seconds(b))))


def cadence_from_times(measured: Sequence[float], plain: Sequence[float], overhead: float) -> int:
    """Steps between measurements so that a measured step's excess over a plain one costs ``overhead``.

    The least of each (load only ever slows a step). Never below :data:`MIN_CADENCE`: at 1 no plain
    step would be timed again, so one comparison spoilt by load (plain steps that all caught a
    pause make measuring look free) would fix the cadence at every step for the rest of the run.
    """
    excess = min(measured) / min(plain) - 1.0
    return max(MIN_CADENCE, math.ceil(excess / overhead))


@dataclass
class StepLog:
    """Per optimizer step: what was used (columns, so the JSON stays small)."""

    batch_size: list[int] = field(default_factory=list)
    micro_batch: list[int] = field(default_factory=list)
    accumulation: list[int] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    b_noise: list[Optional[float]] = field(default_factory=list)   # latest estimate after the step
    measured: list[bool] = field(default_factory=list)

    def add(self, b: int, m: int, k: int, lr: float, bn: float, measured: bool) -> None:
        self.batch_size.append(b)
        self.micro_batch.append(m)
        self.accumulation.append(k)
        self.lr.append(lr)
        self.b_noise.append(bn if math.isfinite(bn) else None)
        self.measured.append(measured)


class AdaptiveRun:
    """One adaptive training run: built from the configs, driven by :meth:`run`."""

    def __init__(self, task: Task, cfg: TrainConfig, acfg: AdaptiveConfig, callbacks: list[Callback]):
        self.task, self.cfg, self.acfg, self.callbacks = task, cfg, acfg, as_callbacks(callbacks)
        b0 = self._validate()
        self.device = resolve_device(cfg.device)
        profile = resolve_profile(task, acfg, cfg.device)
        time_model = StepTimeModel.from_profile(profile)
        ceiling = memory_ceiling_of(profile, acfg)
        self.measure_every = acfg.measure_every or auto_measure_every(time_model, b0, acfg.overhead)
        self.controller = BatchSizeController(
            time_model, start_batch=b0, n_train=task.n_train, memory_ceiling=ceiling, max_batch=acfg.max_batch,
            every=acfg.every or self.measure_every, threshold=acfg.threshold, min_samples=acfg.min_samples,
            confident=acfg.confident, min_batch=acfg.min_batch, noise_factor=noise_factor_of(acfg))
        settings = OptimizerSettings.of(task, cfg)
        self.setup = build_training(task, self.device, settings, cfg.amp, cfg.seed)   # train()'s own builder
        self.model, self.optimizer = self.setup.model, self.setup.optimizer
        self.lr0, self.opt_name = settings.lr, settings.name
        check_batch(task, measured_layout(self.controller.min_batch, self.controller.min_batch, 1)[0],
                    "micro-batch of a measured step at the smallest batch", self.model)
        self.sampler = AdaptiveBatchSampler(task.n_train, b0, seed=cfg.seed + 1)
        self.batches = iter(self.sampler)
        # Hooks only while a step is measured: attached, even idle ones cost a Python call per
        # parameter and pass (benchmarks/noise_overhead.py), so they are removed in between.
        self.monitor = NoiseScaleMonitor(self.model, micro_batch=b0, optimizer=self.optimizer,
                                         preconditioned=acfg.noise == "preconditioned")
        self.monitor.close()
        budget_steps = total_steps(task, cfg, b0)
        self.max_steps = cfg.steps
        self.max_examples = (math.ceil(cfg.epochs * task.n_train) if cfg.epochs is not None else
                             None if cfg.steps is not None else budget_steps * b0)
        self.rate = ScaledLearningRate(self.lr0, b0, self.opt_name, warmup=cfg.warmup_steps,
                                       total=budget_steps if cfg.schedule != "constant" else None,
                                       schedule=cfg.schedule)
        self.budget_examples = budget_steps * b0
        self.ctx = TrainContext(task, cfg, self.model, self.optimizer, self.device, b0, b0, 1, scaler=self.setup.scaler)
        self.log = StepLog()
        self.history: list[HistoryPoint] = []
        self.next_eval = self._evaluation_gap(0)
        self.reached = False
        self.smoothed = (0.0, 0.0)                # EMA of the step loss and its weight (the divergence trend rule)
        self.initial_loss = math.nan
        self.loss_sum, self.loss_n = 0.0, 0      # training loss since the last evaluation
        self.b_noise = math.nan                  # the monitor's latest estimate
        self.last_measured = -1                  # the last measured step (0-based)
        self.step_times: dict[int, tuple[list, list]] = {}   # batch -> (measured, unmeasured) seconds
        self.profile_summary = {"alpha": profile.alpha, "beta": profile.beta, "memory_ceiling": ceiling,
                                "limited_by": profile.limited_by}

    def _validate(self) -> int:
        cfg, acfg, task = self.cfg, self.acfg, self.task
        b0 = check_positive_int("batch_size", cfg.batch_size)
        if b0 < 2:
            raise ConfigError("an adaptive run measures the noise on two micro-batches, so it starts from a batch of "
                              "at least 2; use --batch-size 2 or more")
        if b0 > task.n_train:
            raise ConfigError(f"batch size {b0} is larger than the training set of task {task.name!r} "
                              f"({task.n_train} examples); use at most {task.n_train}")
        if acfg.max_batch is not None and acfg.max_batch < b0:
            raise ConfigError(f"--max-batch {acfg.max_batch} is below the starting batch {b0}; raise --max-batch to "
                              f"at least {b0} or start from a smaller --batch-size")
        if acfg.min_batch is not None and not 2 <= acfg.min_batch <= b0:
            raise ConfigError(f"--min-batch {acfg.min_batch} is outside 2..{b0}: the batch may shrink to it from the "
                              f"starting batch {b0}, and a measured step needs two examples; use 2 to {b0}")
        if acfg.memory_ceiling is not None and acfg.memory_ceiling < 1:
            raise ConfigError(f"the memory ceiling is {acfg.memory_ceiling} examples: not even one example fits a "
                              "device; free memory or use a smaller model")
        if cfg.micro_batch is not None:
            raise ConfigError("an adaptive run picks its own micro-batches (from the memory ceiling); drop "
                              "--micro-batch, or give the ceiling with AdaptiveConfig(memory_ceiling=...)")
        if cfg.amp:
            raise ConfigError("adaptive runs do not support --amp yet; drop --amp or --adaptive")
        if acfg.noise not in NOISE_KINDS:
            raise ConfigError(f"The 'noise' parameter must be one of {', '.join(NOISE_KINDS)}. Got {acfg.noise!r} instead.")
        opt = (cfg.optimizer or task.optimizer).lower()
        if acfg.noise == "preconditioned" and opt not in ADAM_TYPE:
            raise ConfigError(f"preconditioned noise needs an Adam-type optimizer; the run uses {opt}; "
                              "use noise='raw'")
        if cfg.steps is None and cfg.epochs is None and not cfg.until_target:
            raise ConfigError("say how long to train: steps, epochs or until_target")
        check_positive_float("overhead", self.acfg.overhead)
        if not 0 < acfg.decision_level < 1:
            raise ConfigError(f"The 'decision_level' parameter must be in (0, 1). Got {acfg.decision_level!r} instead.")
        if acfg.checkpoint_every is not None:
            check_positive_int("checkpoint_every", acfg.checkpoint_every)
        return b0

    # ---- one step ---------------------------------------------------------------------------

    def _draw(self) -> torch.Tensor:
        try:
            return torch.tensor(next(self.batches))
        except StopIteration:  # end of an epoch: the sampler starts the next one
            self.batches = iter(self.sampler)
            return torch.tensor(next(self.batches))

    def step(self) -> float:
        """One optimizer step; returns its training loss."""
        ctx, c = self.ctx, self.controller
        measured = self.is_measured(ctx.step)
        if measured:
            self.last_measured = ctx.step
        idx = self._draw()
        b = len(idx)
        m, k = (c.micro_batch, c.accumulation) if b == c.batch_size else (b, 1)
        if measured:
            m, k = measured_layout(b, m, k)
        lr = self.rate.lr(b)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        ctx.batch_size, ctx.micro_batch, ctx.accumulation = b, m, k
        if measured:
            self.monitor.bind(self.model, self.optimizer)
        step_loss = ctx.step_loss = accumulate_step(ctx, self.setup, take(self.task.train_data, idx), self.callbacks)
        self._check_diverged(step_loss, b, lr)
        for cb in self.callbacks:
            cb.on_before_step(ctx)
        if measured:
            self.monitor.micro_batch = m
            if self.monitor.update(step_loss, step=ctx.step + 1) is not None:
                self.b_noise = self.controller.b_noise(self.monitor.estimate())
                self.rate.observe(self.b_noise)
            self.monitor.close()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.rate.advance(b)
        self.log.add(b, m, k, lr, self.b_noise, measured)
        return step_loss

    def _check_diverged(self, step_loss: float, b: int, lr: float) -> None:
        decay = 1.0 - 1.0 / DIVERGE_SMOOTHING
        loss, weight = self.smoothed
        self.smoothed = (decay * loss + step_loss, decay * weight + 1.0)
        what = divergence(step_loss, self.smoothed[0] / self.smoothed[1], self.ctx.step + 1, self.initial_loss, self.cfg)
        if what:
            raise DivergedError(
                f"the training loss {what} at step {self.ctx.step + 1} with lr={lr:g} at batch size {b} (adaptive); "
                f"lower the starting learning rate (try {self.lr0 / 10:g}) or add warm-up (--warmup)", self.history)

    def is_measured(self, step: int) -> bool:
        """The first ``min_samples`` steps are measured, so the first decision comes early; then every
        ``measure_every``-th. Up-front cost: about ``min_samples`` steps, once per run."""
        return step < self.acfg.min_samples or step - self.last_measured >= self.measure_every

    def _calibrate(self, b: int, measured: bool, seconds: float) -> None:
        """Set the cadence from this run's own step times: a measured step's excess over an unmeasured
        one at the same batch, spread so that it costs ``overhead`` (the profile's guess until then).

        Only when ``measure_every`` was not given: timing varies between runs, so then the measured
        steps (not the data, rates or model) can differ between two runs of the same seed.
        """
        times = self.step_times.setdefault(b, ([], []))
        times[0 if measured else 1].append(seconds)
        del times[0][:-5], times[1][:-5]                # the latest five of each: the machine's state now
        if self.acfg.measure_every is None and measured and min(len(times[0]), len(times[1])) >= 3:
            self.measure_every = cadence_from_times(times[0], times[1], self.acfg.overhead)

    def _decide(self) -> None:
        c, step = self.controller, self.ctx.step
        due = c.due(step) if self.acfg.every else (self.last_measured == step - 1 and step >= self.acfg.min_samples)
        if due:
            d = c.decide(self.ctx.step, self.monitor.estimate(self.acfg.decision_level))
            if d.changed:
                self.sampler.set_batch_size(d.batch_size)

    # ---- evaluation and the run -------------------------------------------------------------

    def _record(self, train_loss: float) -> HistoryPoint:
        point = record_evaluation(self.ctx, train_loss, self.history, self.callbacks)
        self.reached = self.reached or self.task.target.reached(point.eval_loss, point.metric)
        return point

    def _evaluation_gap(self, examples: int) -> int:
        """Examples to the next evaluation: ``eval_every`` steps at the starting batch; for target-driven
        runs 1/25 of the examples so far (at least one batch), as ``train`` does in steps."""
        cfg, b0 = self.cfg, self.controller.start_batch
        if cfg.eval_every is not None:
            return cfg.eval_every * b0
        if cfg.until_target:
            return max(self.sampler.batch_size, int(examples * TARGET_RESOLUTION))
        return max(b0, (self.max_examples or self.max_steps * b0) // EVALS_PER_RUN)

    def crossing(self) -> Optional[tuple[float, float, float]]:
        """(step, examples, seconds) where the target was first reached, interpolated between evaluations
        with :func:`batchscope.train.crossing_step` (examples and seconds too: the batch changes)."""
        target = self.task.target
        values = [(p.step, p.metric if target.kind == "metric" else p.eval_loss) for p in self.history]
        step = crossing_step(values, target.value, target.kind == "metric") if self.reached else None
        if step is None:
            return None
        steps = [p.step for p in self.history]
        return (step, float(np.interp(step, steps, [p.examples for p in self.history])),
                float(np.interp(step, steps, [p.seconds for p in self.history])))

    def _limit_reached(self) -> bool:
        ctx = self.ctx
        return ((self.max_steps is not None and ctx.step >= self.max_steps)
                or (self.max_examples is not None and ctx.examples + self.sampler.batch_size > self.max_examples))

    def run(self) -> TrainResult:
        ctx, cfg = self.ctx, self.cfg
        self.model.train()
        for cb in self.callbacks:
            cb.on_train_begin(ctx)
        if self.acfg.resume:
            self.load_state_dict(torch.load(self.acfg.resume, weights_only=False))
        else:
            self.initial_loss = evaluate(self.model, self.task, "train", self.device, 2048)[0]
            self._record(self.initial_loss)
        stopped = "target reached" if self.reached and cfg.until_target else ""
        while not stopped and not self._limit_reached():
            t0 = time.perf_counter()
            step_loss = self.step()
            seconds = time.perf_counter() - t0
            ctx.seconds += seconds
            self._calibrate(ctx.batch_size, self.last_measured == ctx.step, seconds)
            ctx.step += 1
            ctx.examples += ctx.batch_size
            self.loss_sum, self.loss_n = self.loss_sum + step_loss, self.loss_n + 1
            self._decide()
            for cb in self.callbacks:
                cb.on_step_end(ctx, step_loss)
            stopped = self._stop_reason()
            if ctx.examples >= self.next_eval or stopped or self._limit_reached():
                self.next_eval = ctx.examples + self._evaluation_gap(ctx.examples)
                self._record(self.loss_sum / self.loss_n)
                self.loss_sum, self.loss_n = 0.0, 0
                if self.reached and cfg.until_target:
                    stopped = stopped or "target reached"
            self._checkpoint()
        return self._result(stopped or "step limit")

    def _stop_reason(self) -> str:
        ctx, cfg = self.ctx, self.cfg
        if ctx.stop:
            return ctx.stop_reason or "stopped by a callback"
        if cfg.max_seconds is not None and ctx.seconds >= cfg.max_seconds:
            return f"time limit {cfg.max_seconds:g}s"
        return ""

    def _result(self, stopped: str) -> TrainResult:
        ctx, t = self.ctx, self.crossing()
        self.monitor.close()
        resolved = {**{k: v for k, v in asdict(self.cfg).items() if k != "adaptive"}, "lr": self.lr0,
                    "optimizer": self.opt_name, "micro_batch": None, "adaptive": self.acfg.describe()}
        result = TrainResult(
            task=self.task.name, config=resolved, history=self.history, steps=ctx.step, examples=ctx.examples,
            seconds=ctx.seconds, reached_target=t is not None, target=self.task.target.describe(self.task.metric_name),
            target_step=t[0] if t else None, target_examples=t[1] if t else None, target_seconds=t[2] if t else None,
            stopped_because=stopped, target_interpolated=bool(t) and t[0] not in [p.step for p in self.history],
            model=self.model, adaptive=self.summary())
        for cb in self.callbacks:
            cb.on_train_end(ctx, result)
        return result

    def summary(self) -> dict:
        """What the adaptive part did: per-step columns (``b_noise``: the B_noise planned with, noise_factor x
        B_simple), the decisions, the measuring cadence, the monitor's last estimate (B_simple itself)."""
        est = self.monitor.estimate()
        return {"steps": asdict(self.log), "decisions": [d.to_dict() for d in self.controller.decisions],
                "measure_every": self.measure_every, "decide_every": self.acfg.every, "min_samples": self.acfg.min_samples,
                "nonfinite_estimates": self.controller.nonfinite, "noise": self.acfg.noise,
                "noise_factor": self.controller.noise_factor, "final_estimate": est.to_dict(),
                "profile": self.profile_summary}

    # ---- resume -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        ctx = self.ctx
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "adapt": adapt_state(self.sampler, self.controller, self.monitor, self.rate),
                "counters": {"step": ctx.step, "examples": ctx.examples, "seconds": ctx.seconds,
                             "next_eval": self.next_eval, "initial_loss": self.initial_loss,
                             "reached": self.reached, "smoothed": list(self.smoothed), "loss_sum": self.loss_sum, "loss_n": self.loss_n,
                             "b_noise": self.b_noise, "last_measured": self.last_measured,
                             "measure_every": self.measure_every},
                "history": [asdict(p) for p in self.history], "log": asdict(self.log),
                "rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        load_adapt_state(state["adapt"], self.sampler, self.controller, self.monitor, self.rate)
        self.batches = iter(self.sampler)
        n = state["counters"]
        self.ctx.step, self.ctx.examples, self.ctx.seconds = n["step"], n["examples"], n["seconds"]
        self.next_eval, self.initial_loss = n["next_eval"], n["initial_loss"]
        self.loss_sum, self.loss_n, self.b_noise = n["loss_sum"], n["loss_n"], n["b_noise"]
        self.last_measured, self.measure_every = n["last_measured"], n["measure_every"]
        self.reached, self.smoothed = n["reached"], tuple(n["smoothed"])
        self.history = [HistoryPoint(**p) for p in state["history"]]
        self.log = StepLog(**state["log"])
        torch.set_rng_state(state["rng"])

    def _checkpoint(self) -> None:
        a = self.acfg
        if a.checkpoint and a.checkpoint_every and self.ctx.step % a.checkpoint_every == 0:
            tmp = f"{a.checkpoint}.tmp"
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, a.checkpoint)   # a run killed while writing keeps the previous checkpoint
