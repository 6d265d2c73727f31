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

A move changes the batch by at most one doubling or halving, then holds for ``dwell`` steps, all
measured, so the next decision has ``min_samples`` measurements at the new batch. A move that
raises an SGD rate measures λ_max and caps the rate at the stability bound's safe share; the state
before a move is kept, and a spike of the smoothed loss in the steps after it, or a divergence at
any time, restores it and the batch before the move (:mod:`batchscope.adapt.guard`).

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
from ..noise.hessian import STABILITY_FRACTION, sgd_settings, sgd_stability_bound
from .controller import (DEFAULT_MIN_SAMPLES, DEFAULT_THRESHOLD, MAX_MOVE, BatchSizeController, StepTimeModel,
                         check_limits)
from .guard import (SPIKE_FACTOR, WATCH_STEPS, LossTrend, keep, probe_indices, probe_sharpness, probe_size, restore,
                    spiked, stability_ceiling)
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
    dwell: steps to hold after a move (default ``min_samples``: the steps after a move are measured,
        so the next decision has as many measurements at the new batch as the first one had).
    stability_bound: for SGD, cap a rising rate at ``STABILITY_FRACTION`` x the bound 2(1+μ)/λ_max
        measured at the move.
    rollback: keep the state before a move and return to it (and to the batch before it) when the
        smoothed loss spikes after the move or the run diverges.
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
    dwell: Optional[int] = None
    stability_bound: bool = True
    rollback: bool = True

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
        if self.dwell is not None and (isinstance(self.dwell, bool) or not isinstance(self.dwell, int)
                                       or self.dwell < 0):
            raise ConfigError(f"The 'dwell' parameter must be a whole number of steps >= 0. Got {self.dwell!r} "
                              "instead.")
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
            min_batch=acfg.min_batch, noise_factor=noise_factor_of(acfg),
            dwell=acfg.min_samples if acfg.dwell is None else acfg.dwell)
        self.rate = ScaledLearningRate(lr0, start_batch, optimizer, warmup=warmup, total=total, schedule=schedule)
        self.b_crit = math.nan                    # the latest predicted critical batch
        self.last_measured = -1                   # the last measured step (0-based)
        self.moved_at: Optional[int] = None       # steps done at the last move (its next steps are measured)
        self.step_times: dict[int, tuple[list, list]] = {}   # batch -> (measured, unmeasured) seconds

    def measures(self, step: int) -> bool:
        """Whether step ``step`` (0-based) is measured: the first ``min_samples`` steps, so the first
        decision comes early, and the first ``min_samples`` after each move, so the next decision has as
        many measurements at the new batch; otherwise every ``measure_every``-th. Marks the step when it is."""
        n = self.acfg.min_samples
        burst = self.moved_at is not None and self.moved_at <= step < self.moved_at + n
        measured = step < n or burst or step - self.last_measured >= self.measure_every
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
        d = c.decide(steps_done, estimate()) if due else None
        if d is not None and d.changed:
            self.moved_at = steps_done
        return d

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
                "last_measured": self.last_measured, "measure_every": self.measure_every, "moved_at": self.moved_at}

    def load_state_dict(self, state: dict) -> None:
        load_adapt_state(state, controller=self.controller, rate=self.rate)
        self.b_crit, self.last_measured = state["b_crit"], state["last_measured"]
        self.measure_every = state["measure_every"]
        self.moved_at = state.get("moved_at")


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
        self.sgd = settings.name == "sgd"
        self.trend = LossTrend()                 # the smoothed step loss the watch after a move reads
        self.kept: Optional[dict] = None         # the state before the last unverified move (None: used or none)
        self.watch_until = -1                    # steps done up to which the spike rule watches
        self.rollbacks: list[dict] = []
        self.check_seconds = 0.0                 # spent measuring λ_max (counted in the run's clock)
        self.dropped = False                     # the loop dropped this step's update (recover)
        self.last_bound: Optional[dict] = None   # where λ_max was last measured (step, kept state's step)
        self.cfg_seed = cfg.seed
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
        if self.dropped:            # the update was dropped and the kept state restored: no progress, no decision
            self.dropped = False
            return
        self.trend.add(ctx.step_loss)
        if self.kept is not None and ctx.step <= self.watch_until and spiked(self.trend.value, self.kept["trend_at"]):
            self._roll_back(ctx, ctx.step, "spike", f"the smoothed training loss rose to {self.trend.value:.4g}, "
                            f"above {SPIKE_FACTOR:g} x its {self.kept['trend_at']:.4g} at step {self.kept['step']}")
            return
        d = a.end_step(ctx.step, b, plan.measure, seconds, lambda: self.monitor.estimate(self.acfg.decision_level))
        if d is not None and d.changed:
            self._moved(ctx, d)

    def recover(self, ctx: TrainContext, why: str) -> bool:
        """The loop's divergence check fired: back to the state kept before the last move, once."""
        if self.kept is None:
            return False
        self.monitor.close()        # a measured step's hooks (its update never reaches on_before_step)
        self._roll_back(ctx, ctx.step + 1, "diverged", why)
        self.dropped = True
        return True

    # ---- the checks around a move -------------------------------------------------------------

    def _moved(self, ctx: TrainContext, d) -> None:
        """Keep the state before the move (unless one still watched is kept), cap a rising SGD rate, watch."""
        a = self.adaptation
        watched = self.kept is not None and ctx.step <= self.watch_until
        if self.acfg.rollback and not watched:
            self.kept = keep(ctx, step=ctx.step, batch=d.previous, moved_to=d.batch_size, trend_at=self.trend.value,
                             trend=self.trend.state_dict(), rate=a.rate.state_dict(),
                             monitor=self.monitor.state_dict(), b_crit=a.b_crit)
        if self.acfg.rollback:
            self.watch_until = ctx.step + WATCH_STEPS
            self.controller.annotate(watch={"steps": WATCH_STEPS, "until": self.watch_until,
                                            "kept_step": self.kept["step"], "kept_batch": self.kept["batch"],
                                            "spike_factor": SPIKE_FACTOR})
        self.controller.annotate(bound=self._bound(ctx, d.previous, d.batch_size))
        self.sampler.set_batch_size(d.batch_size)

    def _bound(self, ctx: TrainContext, before: int, after: int) -> dict:
        """Measure λ_max where an SGD move raises the rate, and set the rate's ceiling from it. Moves stacked
        on one kept state are checked together: one λ_max at the first rise, its ceiling for the rest."""
        rate = self.adaptation.rate
        now, rule = rate.base(before), rate.lr0 * rate.rule_gain(after)
        if not self.sgd:
            return {"checked": False, "why": f"{rate.optimizer}: no SGD stability bound; the watch after the "
                                             "move guards the rate"}
        if not self.acfg.stability_bound or rule <= max(now, rate.lr0):   # (the ceiling is never below these)
            why = ("off (stability_bound=False)" if not self.acfg.stability_bound else "the rate does not rise"
                   if rule <= now else "the rate stays within the starting rate")
            return {"checked": False, "why": why, "rate": rate.base(after)}
        last = self.last_bound
        if last is not None and self.kept is not None and last["kept_step"] == self.kept["step"]:
            return {"checked": False, "why": f"λ_max measured at step {last['step']} for the moves watched since "
                                             f"step {last['kept_step']}: its ceiling holds",
                    "ceiling": rate.ceiling, "rate_rule": rule, "rate": rate.base(after), "capped": rule > rate.ceiling}
        size = probe_size(after, self.profile_summary["memory_ceiling"])
        probe = probe_indices(self.task.n_train, size, self.cfg_seed + ctx.step)
        sharp, secs, failed = probe_sharpness(self.task, ctx.model, probe, ctx.device, seed=ctx.step)
        self.check_seconds += secs
        ctx.seconds += secs
        if sharp is None:
            return {"checked": False, "why": f"λ_max could not be measured ({failed}); the watch guards the rate",
                    "seconds": secs}
        opt = sgd_settings(ctx.optimizer)
        cap, rate.ceiling = stability_ceiling(sharp.value, rate_now=now, lr0=rate.lr0, **opt)
        self.last_bound = {"step": ctx.step, "kept_step": self.kept["step"] if self.kept is not None else None}
        return {"checked": True, "lambda_max": sharp.value, "iterations": sharp.iterations,
                "converged": sharp.converged, "probe_examples": len(probe), **opt,
                "bound": sgd_stability_bound(sharp.value + opt["weight_decay"], opt["momentum"], opt["nesterov"]),
                "fraction": STABILITY_FRACTION, "cap": cap, "ceiling": rate.ceiling, "rate_rule": rule,
                "rate": rate.base(after), "capped": rule > rate.ceiling, "seconds": secs}

    def bar_steps(self) -> float:
        """Steps a rolled-back batch is barred: until the monitor's estimate that proposed it is replaced,
        1 / (1 - decay) measurements at the current cadence (a running mean, decay 1, never forgets)."""
        decay = self.monitor.moments.decay
        return math.ceil(1.0 / (1.0 - decay)) * self.adaptation.measure_every if decay < 1 else math.inf

    def _roll_back(self, ctx: TrainContext, step: int, trigger: str, why: str) -> None:
        """Restore the kept state and the batch before the move; bar the batch moved to for a while."""
        k, a = self.kept, self.adaptation
        self.kept, self.watch_until = None, -1
        restore(ctx, k)
        a.rate.load_state_dict(k["rate"])
        self.monitor.load_state_dict(k["monitor"])
        self.trend.load_state_dict(k["trend"])
        a.b_crit = k["b_crit"]
        failed, until = self.controller.batch_size, step + self.bar_steps()
        reason = (f"rolled back ({trigger}): {why}; batch {failed} -> {k['batch']} and the state kept at step "
                  f"{k['step']}")
        record = {"step": step, "trigger": trigger, "why": why, "from_batch": failed, "to_batch": k["batch"],
                  "kept_step": k["step"], "lost_steps": step - k["step"], "barred": k["moved_to"],
                  "barred_until": until}
        self.controller.roll_back(step, k["batch"], reason, moved_to=k["moved_to"], bar_until=until,
                                  rollback=record)
        a.moved_at = step
        self.sampler.set_batch_size(k["batch"])
        self.rollbacks.append(record)

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
                "final_estimate": est.to_dict(), "profile": self.profile_summary,
                "checks": {"dwell": self.controller.dwell, "max_move": MAX_MOVE, "watch_steps": WATCH_STEPS,
                           "spike_factor": SPIKE_FACTOR, "stability_fraction": STABILITY_FRACTION,
                           "rate_ceiling": self.adaptation.rate.ceiling, "check_seconds": self.check_seconds,
                           "rollbacks": self.rollbacks}}

    def state_dict(self) -> dict:
        return {**adapt_state(self.sampler, monitor=self.monitor), "adaptation": self.adaptation.state_dict(),
                "log": asdict(self.log), "guard": {"trend": self.trend.state_dict(), "kept": self.kept,
                                                   "watch_until": self.watch_until, "rollbacks": self.rollbacks,
                                                   "check_seconds": self.check_seconds, "last_bound": self.last_bound}}

    def load_state_dict(self, state: dict) -> None:
        load_adapt_state(state, self.sampler, monitor=self.monitor)
        self.adaptation.load_state_dict(state["adaptation"])
        self.log = StepLog(**state["log"])
        g = state.get("guard")
        if g is not None:
            self.trend.load_state_dict(g["trend"])
            self.kept, self.watch_until, self.rollbacks = g["kept"], g["watch_until"], list(g["rollbacks"])
            self.check_seconds, self.last_bound = g["check_seconds"], g["last_bound"]
