"""The adaptive batch policy: the batch follows the noise scale, inside :func:`batchscope.train.train`.

``train(task, TrainConfig(..., adaptive=AdaptiveConfig()))`` runs the one training loop with this
policy. Each optimizer step: the sampler draws the controller's current global batch; it is run as
the controller's micro-batches (accumulation beyond the memory ceiling); the monitor measures the
gradient noise scale on a sampled subset of steps (a measured step is split into at least two
micro-batches, which the micro-batch estimator needs, so measuring costs about one extra fixed cost
alpha per measured step; the first ``min_samples`` steps are measured, then every
``measure_every``-th, which spreads the cost to ``overhead`` of a long run); after each measurement
the controller re-decides from the monitor's estimate, and the learning rate follows the batch
(:class:`ScaledLearningRate`). Warm-up counts steps at the starting batch (progress).

:class:`AdaptiveConfig` holds the one default of every setting; the Lightning and Hugging Face
callbacks take the same object.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import ConfigError, check_positive_float, check_positive_int
from ..hardware import HardwareProfile, profile_hardware
from ..noise import NoiseScaleMonitor
from ..plan.critical_batch import LIVE_FACTOR
from ..tasks import Task
from ..train import BatchPolicy, OptimizerSettings, StepPlan, TrainConfig, TrainContext, check_batch, total_steps
from .controller import DEFAULT_MIN_SAMPLES, DEFAULT_THRESHOLD, BatchSizeController, StepTimeModel, check_limits
from .rules import ADAM_TYPE, ScaledLearningRate
from .sampler import AdaptiveBatchSampler
from .state import adapt_state, load_adapt_state

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
    decision_level: with ``confident``, a move must still pay off at the end of the B_crit interval
        of this level that argues against it. The quartiles, not the 90% interval: five
        measurements' 90% interval spans a factor of 10 or more (a ratio of two noisy sums) and held
        every move of the short runs of benchmarks/adaptive_vs_fixed.py; 3 to 1 odds, with
        ``threshold`` on top, and a wrong move is undone at a later measurement.
    noise_factor: B_crit = noise_factor x the monitor's B_simple (default: the suite-calibrated
        ``plan.critical_batch.LIVE_FACTOR`` for raw noise; 1 for preconditioned noise, which the
        suite could not calibrate).
    min_batch: the smallest global batch (default: a quarter of the starting batch).
    """

    profile: Union[HardwareProfile, str, Path, None] = None
    max_batch: Optional[int] = None
    memory_ceiling: Optional[int] = None
    every: Optional[int] = None
    threshold: float = DEFAULT_THRESHOLD
    measure_every: Optional[int] = None
    overhead: float = 0.02
    min_samples: int = DEFAULT_MIN_SAMPLES
    confident: bool = True        # a move must also pay off at the interval's end against it
    decision_level: float = 0.5   # ... of this interval (the quartiles: 3 to 1 odds that the move pays)
    noise: str = "raw"
    noise_factor: Optional[float] = None
    min_batch: Optional[int] = None

    def policy(self, task: Task, cfg: TrainConfig) -> "AdaptivePolicy":
        """The batch policy :func:`batchscope.train.train` runs when ``TrainConfig.adaptive`` is set."""
        return AdaptivePolicy(task, cfg, self)

    def check(self, start_batch: int, n_train: int, optimizer: str) -> None:
        """The declared checks of every field (once, here), against the run's start and optimizer."""
        check_limits(start_batch=start_batch, n_train=n_train, memory_ceiling=self.memory_ceiling,
                     max_batch=self.max_batch, min_batch=self.min_batch)
        for name in ("every", "measure_every", "min_samples"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        check_positive_float("overhead", self.overhead)
        if not 0 <= self.threshold < 1:
            raise ConfigError(f"The 'threshold' parameter must be in [0, 1). Got {self.threshold!r} instead.")
        if not 0 < self.decision_level < 1:
            raise ConfigError(f"The 'decision_level' parameter must be in (0, 1). Got {self.decision_level!r} instead.")
        if self.noise not in NOISE_KINDS:
            raise ConfigError(f"The 'noise' parameter must be one of {', '.join(NOISE_KINDS)}. "
                              f"Got {self.noise!r} instead.")
        if self.noise == "preconditioned" and optimizer not in ADAM_TYPE:
            raise ConfigError(f"The 'noise' parameter 'preconditioned' needs an Adam-type optimizer; the run uses "
                              f"{optimizer}. Use noise='raw'.")
        if self.noise_factor is not None:
            check_positive_float("noise_factor", self.noise_factor)

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
    b_crit: list[Optional[float]] = field(default_factory=list)   # latest predicted B_crit after the step
    measured: list[bool] = field(default_factory=list)

    def add(self, b: int, m: int, k: int, lr: float, b_crit: float, measured: bool) -> None:
        self.batch_size.append(b)
        self.micro_batch.append(m)
        self.accumulation.append(k)
        self.lr.append(lr)
        self.b_crit.append(b_crit if math.isfinite(b_crit) else None)
        self.measured.append(measured)


class Adaptation:
    """What adapting is, with no loop attached: when to measure, what a measurement does to the
    critical batch and the rate, and when the controller decides. :class:`AdaptivePolicy` (the
    training loop) and the framework callbacks both drive one of these, built from one
    :class:`AdaptiveConfig`, so every setting has one default.
    """

    def __init__(self, acfg: AdaptiveConfig, time_model: StepTimeModel, *, start_batch: int, n_train: int,
                 lr0: float, optimizer: str, memory_ceiling: Optional[int] = None, devices: int = 1,
                 warmup: float = 0.0, total: Optional[float] = None, schedule: str = "constant"):
        self.acfg = acfg
        self.measure_every = acfg.measure_every or auto_measure_every(time_model, start_batch, acfg.overhead)
        self.controller = BatchSizeController(
            time_model, start_batch=start_batch, n_train=n_train, memory_ceiling=memory_ceiling,
            max_batch=acfg.max_batch, devices=devices, every=acfg.every or self.measure_every,
            threshold=acfg.threshold, min_samples=acfg.min_samples, confident=acfg.confident,
            min_batch=acfg.min_batch, noise_factor=noise_factor_of(acfg))
        self.rate = ScaledLearningRate(lr0, start_batch, optimizer, warmup=warmup, total=total, schedule=schedule)
        self.b_crit = math.nan                    # the latest predicted critical batch
        self.last_measured = -1                   # the last measured step (0-based)
        self.step_times: dict[int, tuple[list, list]] = {}   # batch -> (measured, unmeasured) seconds

    def measures(self, step: int) -> bool:
        """Whether step ``step`` (0-based) is measured: the first ``min_samples`` steps, so the first
        decision comes early, then every ``measure_every``-th. Marks the step when it is."""
        measured = step < self.acfg.min_samples or step - self.last_measured >= self.measure_every
        if measured:
            self.last_measured = step
        return measured

    def observe(self, estimate) -> None:
        """A measured step's estimate (a NoiseEstimate): the critical batch and the rate follow it."""
        self.b_crit = self.controller.b_crit(estimate)
        self.rate.observe(self.b_crit)

    def end_step(self, steps_done: int, batch: int, measured: bool, seconds: float, estimate) -> Optional[object]:
        """Count a finished step of ``batch`` examples; returns the controller's Decision when one was due.

        estimate: a function giving the monitor's current NoiseEstimate (called only when a decision is due).
        """
        self.rate.advance(batch)
        self._calibrate(batch, measured, seconds)
        c = self.controller
        due = c.due(steps_done) if self.acfg.every else (measured and steps_done >= self.acfg.min_samples)
        return c.decide(steps_done, estimate()) if due else None

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

    def state_dict(self) -> dict:
        return {**adapt_state(controller=self.controller, rate=self.rate), "b_crit": self.b_crit,
                "last_measured": self.last_measured, "measure_every": self.measure_every}

    def load_state_dict(self, state: dict) -> None:
        load_adapt_state(state, controller=self.controller, rate=self.rate)
        self.b_crit, self.last_measured = state["b_crit"], state["last_measured"]
        self.measure_every = state["measure_every"]


class AdaptivePolicy(BatchPolicy):
    """The controller's batch, the scaled rate, and the measuring cadence, step by step."""

    def __init__(self, task: Task, cfg: TrainConfig, acfg: AdaptiveConfig):
        settings = OptimizerSettings.of(task, cfg)
        b0 = self._check(task, cfg, acfg, settings.name)
        self.task, self.acfg, self.start_batch = task, acfg, b0
        profile = resolve_profile(task, acfg, cfg.device)
        ceiling = memory_ceiling_of(profile, acfg)
        budget_steps = total_steps(task, cfg, b0)
        self.lr0 = settings.lr
        self.adaptation = Adaptation(acfg, StepTimeModel.from_profile(profile), start_batch=b0, n_train=task.n_train,
                                     lr0=settings.lr, optimizer=settings.name, memory_ceiling=ceiling,
                                     warmup=cfg.warmup_steps, schedule=cfg.schedule,
                                     total=budget_steps if cfg.schedule != "constant" else None)
        self.controller = self.adaptation.controller
        self.sampler = AdaptiveBatchSampler(task.n_train, b0, seed=cfg.seed + 1)
        self.max_steps = cfg.steps
        self.max_examples = (math.ceil(cfg.epochs * task.n_train) if cfg.epochs is not None else
                             None if cfg.steps is not None else budget_steps * b0)
        self.monitor: Optional[NoiseScaleMonitor] = None
        self.log = StepLog()
        self.current: Optional[StepPlan] = None
        self.profile_summary = {"alpha": profile.alpha, "beta": profile.beta, "memory_ceiling": ceiling,
                                "limited_by": profile.limited_by}

    @staticmethod
    def _check(task: Task, cfg: TrainConfig, acfg: AdaptiveConfig, optimizer: str) -> int:
        b0 = check_batch(task, cfg.batch_size)
        if b0 < 2:
            raise ConfigError("an adaptive run measures the noise on two micro-batches, so it starts from a batch of "
                              "at least 2; use a batch size of 2 or more")
        if cfg.micro_batch is not None:
            raise ConfigError("an adaptive run picks its own micro-batches (from the memory ceiling); drop the "
                              "micro-batch, or give the ceiling with AdaptiveConfig(memory_ceiling=...)")
        if cfg.amp:
            raise ConfigError("adaptive runs do not support mixed precision yet; drop amp or adaptive")
        acfg.check(b0, task.n_train, optimizer)
        return b0

    def begin(self, ctx: TrainContext) -> None:
        smallest = self.controller.min_batch
        check_batch(self.task, measured_layout(smallest, smallest, 1)[0],
                    "micro-batch of a measured step at the smallest batch", ctx.model)
        # Hooks only while a step is measured: attached, even idle ones cost a Python call per
        # parameter and pass (benchmarks/noise_overhead.py), so they are removed in between.
        self.monitor = NoiseScaleMonitor(ctx.model, micro_batch=self.start_batch, optimizer=ctx.optimizer,
                                         preconditioned=self.acfg.noise == "preconditioned")
        self.monitor.close()

    # ---- one step ---------------------------------------------------------------------------

    def plan(self, ctx: TrainContext) -> StepPlan:
        c = self.controller
        measured = self.adaptation.measures(ctx.step)
        idx = torch.tensor(self.sampler.draw())
        b = len(idx)
        m, k = (c.micro_batch, c.accumulation) if b == c.batch_size else (b, 1)
        if measured:
            m, k = measured_layout(b, m, k)
            self.monitor.bind(ctx.model, ctx.optimizer)
        self.current = StepPlan(idx, m, k, self.adaptation.rate.lr(b), measured)
        return self.current

    def on_before_step(self, ctx: TrainContext) -> None:
        plan = self.current
        if plan is None or not plan.measure:
            return
        self.monitor.micro_batch = plan.micro_batch
        if self.monitor.update(ctx.step_loss, step=ctx.step + 1) is not None:
            self.adaptation.observe(self.monitor.estimate())
        self.monitor.close()

    def after_step(self, ctx: TrainContext, plan: StepPlan, seconds: float) -> None:
        b, a = plan.batch_size, self.adaptation
        self.log.add(b, plan.micro_batch, plan.accumulation, plan.lr, a.b_crit, plan.measure)
        d = a.end_step(ctx.step, b, plan.measure, seconds, lambda: self.monitor.estimate(self.acfg.decision_level))
        if d is not None and d.changed:
            self.sampler.set_batch_size(d.batch_size)

    def exhausted(self, ctx: TrainContext) -> bool:
        return ((self.max_steps is not None and ctx.step >= self.max_steps)
                or (self.max_examples is not None and ctx.examples + self.sampler.batch_size > self.max_examples))

    # ---- what it did ------------------------------------------------------------------------

    def describe(self) -> dict:
        return {"lr": self.lr0, "micro_batch": None, "adaptive": self.acfg.describe()}

    def summary(self) -> dict:
        """What the adaptive part did: per-step columns (``b_crit``: the critical batch planned with,
        noise_factor x B_simple), the decisions, the measuring cadence, the monitor's last B_simple."""
        est = self.monitor.estimate()
        return {"steps": asdict(self.log), "decisions": [d.to_dict() for d in self.controller.decisions],
                "measure_every": self.adaptation.measure_every, "decide_every": self.acfg.every,
                "min_samples": self.acfg.min_samples, "nonfinite_estimates": self.controller.nonfinite,
                "noise": self.acfg.noise, "noise_factor": self.controller.noise_factor,
                "final_estimate": est.to_dict(), "profile": self.profile_summary}

    def state_dict(self) -> dict:
        return {**adapt_state(self.sampler, monitor=self.monitor), "adaptation": self.adaptation.state_dict(),
                "log": asdict(self.log)}

    def load_state_dict(self, state: dict) -> None:
        load_adapt_state(state, self.sampler, monitor=self.monitor)
        self.adaptation.load_state_dict(state["adaptation"])
        self.log = StepLog(**state["log"])
