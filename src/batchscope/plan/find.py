"""`find`: profile the hardware, measure the noise scale on a short run, recommend.

The pipeline (docs/design.md, "Data flow of `find`"):
1. hardware: alpha, beta and the memory ceiling (measured now, or read from a saved profile);
2. a measuring run at the reference batch with the noise-scale monitor, stopped once it has used
   ``measure_fraction`` (default 5%) of the examples that a full run to the target is projected to
   need, and extended (to :data:`EXTEND_STEPS` at most) while that run cannot be projected yet;
3. B_crit, the critical batch for the run: the suite-calibrated multiple of the measured B_simple
   (critical_batch.py); the growth law of B_simple in the loss shapes the growth schedule;
4. the time-to-target model S_min (1 + B_crit / B) t(B) over candidate batch sizes, under the
   constraints, for the objective.

Messages name parameters as the Python API spells them ('measure_fraction'); the command layer
translates them to its options.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..hardware.units import format_bytes
from ..errors import (FRACTION, INTEGER, POSITIVE_INT, POSITIVE_NUMBER, BatchscopeError, ConfigError, Rule,
                      check_params, one_of, optional, parameter_message)
from ..hardware import HardwareProfile, StepTimeModel
from ..hardware import realstep
from ..serialize import decode, fields_to_dict, to_jsonable, write_json
from ..tasks import Task, load_task
from ..train import (Callback, HistoryPoint, Run, TrainConfig, TrainContext, TrainResult, resolve_device,
                     save_checkpoint, start_run)
from . import critical_batch, growth, recommend
from .verify import check as verify_check
from .projection import Projection, loss_after, loss_at_metric, progress, project_examples

if TYPE_CHECKING:
    import torch

EVAL_EVERY = 5            # steps between evaluations of the measuring run
MIN_STEPS = 30            # fewer steps give too few per-step noise estimates for 6 windows
MAX_STEPS = 3000          # the measuring run never trains longer than this
EXTEND_STEPS = 20 * MIN_STEPS  # while the run to the target cannot be projected, the measuring run goes on to this
METRIC_REACH = 1 / 3      # a metric target's loss is read once the metric has covered this share of the way
TIMING_STEPS = 16         # real steps timed after the measuring run, the noise monitor detached (plus warm-up)
OVERHEAD_ASSUMPTION = ("the overhead is paid once per optimizer step, whatever the batch and the accumulation "
                       "(one layout was timed, so a per-micro-batch or per-example part cannot be told apart)")

# find's own parameters, declared once (the limits on a batch are recommend.LIMITS)
PARAMETERS = {
    "objective": one_of(recommend.OBJECTIVES),
    "measure_fraction": FRACTION,
    "ref_batch": optional(POSITIVE_INT),
    "ref_lr": optional(POSITIVE_NUMBER),
    "target_epochs": optional(POSITIVE_NUMBER),
    "seed": INTEGER,
    "n_windows": POSITIVE_INT,
    "step_overhead": optional(Rule("a finite number of seconds >= 0 (the per-step cost the profile misses)",
                                   lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                                   and 0 <= v < math.inf)),
    "timed_steps": optional(Rule(
        f"a batchscope.hardware.realstep.TimedSteps with a positive micro_batch and accumulation and more than "
        f"{realstep.WARMUP_STEPS} step times", lambda v: isinstance(v, realstep.TimedSteps)
        and all(isinstance(n, int) and n > 0 for n in (v.micro_batch, v.accumulation))
        and len(v.seconds) > realstep.WARMUP_STEPS)),
}


class FindError(BatchscopeError):
    """The measurement could not support a recommendation; the message says why and what to change."""


@dataclass(frozen=True)
class TargetLoss:
    """The losses at which the target is reached, as read from the evaluations so far.

    ``eval``: on the target's split (what the run-length projection follows); ``train``: the training
    loss (what the growth law is read at). Both None while they cannot be read yet; ``how`` then says why.
    """

    eval: Optional[float]
    train: Optional[float]
    how: str

    @property
    def ready(self) -> bool:
        return self.eval is not None and self.train is not None and self.eval > 0 and self.train > 0


def read_target(task: Task, points: list[HistoryPoint], target_examples: Optional[float] = None) -> TargetLoss:
    """The target in loss units from the evaluations so far (the first one is the untrained model).

    A loss target is used as it is. A metric target is mapped through ln(loss) = c + d * metric, once
    the metric has covered :data:`METRIC_REACH` of the way to it (before, the loss at the target would
    be read more than three times beyond the metric's measured range). ``target_examples``: the target
    is the loss the run is projected to reach after that many examples (:func:`loss_after`).
    """
    t, name = task.target, task.metric_name or "metric"
    if target_examples is not None:
        fit = loss_after([p.examples for p in points], [p.eval_loss for p in points], target_examples)
        if fit is None:
            return TargetLoss(None, None, f"the {t.split} loss is not yet falling steadily enough to project it "
                                          f"to {target_examples:,.0f} examples")
        loss, a, b, n = fit
        return TargetLoss(loss, loss, f"ln({t.split} loss) = {a:.3g} {b:+.3g} ln(examples) fitted on {n} evaluations, "
                                      f"read at {target_examples:,.0f} examples")
    if t.kind == "loss":
        return TargetLoss(t.value, t.value, f"the target is a loss: {t.describe(task.metric_name)}")
    pts = points[1:]
    metrics = [p.metric for p in pts if p.metric is not None and math.isfinite(p.metric)]
    start = points[0].metric if points and points[0].metric is not None else None
    if not metrics or start is None or t.value == start:
        return TargetLoss(None, None, f"no {name} measured yet")
    reach = (max(metrics) - start) / (t.value - start)
    if reach < METRIC_REACH:
        return TargetLoss(None, None, f"the {name} has covered {max(reach, 0.0):.0%} of the way to its target "
                                      f"({METRIC_REACH:.0%} is needed to read the loss there)")
    at_eval = loss_at_metric([p.metric for p in pts], [p.eval_loss for p in pts], t.value)
    at_train = loss_at_metric([p.metric for p in pts], [p.loss for p in pts], t.value)
    if at_train is None:
        return TargetLoss(None, None, f"the {name} and the training loss have not moved together yet")
    loss, c, d = at_train
    how = f"ln(train loss) = {c:.3g} + {d:.3g} * {name} fitted on {len(pts)} evaluations, read at {t.value:g}"
    if at_eval is None:
        return TargetLoss(None, loss, f"the {name} and the {t.split} loss have not moved together yet ({how})")
    return TargetLoss(at_eval[0], loss, how)


class BudgetStop(Callback):
    """Stops the measuring run once it has used ``fraction`` of the projected examples to the target.

    Progress is measured on the log of the evaluation loss toward the target's loss (:func:`read_target`).
    While the run to the target cannot be projected (the target's loss not readable yet, or no clear
    progress toward it), the run goes on past ``min_steps``, to ``extend_steps`` at most; ``extension``
    records from where and why, when that wait is what made the run longer than its budget.
    """

    def __init__(self, task: Task, fraction: float, min_steps: int, extend_steps: int,
                 target_examples: Optional[float] = None):
        self.task, self.fraction, self.min_steps, self.extend_steps = task, fraction, min_steps, extend_steps
        self.target_examples = target_examples
        self.projection = Projection(math.inf, 0.0, 0)
        self.target = TargetLoss(None, None, "no evaluation yet")
        self.points: list[HistoryPoint] = []
        self.extension: Optional[dict] = None

    def _project(self) -> Projection:
        start, target = math.log(self.points[0].eval_loss), math.log(self.target.eval)
        logs = [math.log(max(p.eval_loss, 1e-12)) for p in self.points]
        if self.target_examples is not None:  # the run's length is what the target was defined by
            return Projection(self.target_examples, progress(logs[-1], start, target), len(logs))
        # in log-loss: losses fall by factors, and a floor far above a near-zero target then shows
        return project_examples([p.examples for p in self.points], logs, start, target)

    def why_not(self) -> str:
        """Why the run to the target cannot be projected now."""
        if not self.target.ready:
            return self.target.how
        return f"no clear progress toward the target's loss yet (progress {self.projection.progress:+.2f})"

    def on_evaluate(self, ctx: TrainContext, point: HistoryPoint) -> None:
        if ctx.stop:  # the decision is made: keep the projection it was made on
            return
        self.points.append(point)
        self.target = read_target(self.task, self.points, self.target_examples)
        self.projection = self._project() if self.target.ready else Projection(math.inf, 0.0, len(self.points))
        if ctx.step < self.min_steps:
            return
        if math.isfinite(self.projection.examples):
            if ctx.examples >= self.fraction * self.projection.examples:
                ctx.stop, ctx.stop_reason = True, "budget used"
            else:  # projected, with budget left: the budget, not the wait for a projection, sets the length
                self.extension = None
            return
        if self.extension is None:
            self.extension = {"from_step": ctx.step, "why": self.why_not(), "cap_steps": self.extend_steps}
        if ctx.step >= self.extend_steps:
            ctx.stop, ctx.stop_reason = True, "no progress toward the target"


@dataclass
class FindResult:
    recommendation: recommend.Recommendation
    profile: HardwareProfile
    measuring: dict                      # what the measuring run did and cost
    noise_steps: dict                    # per-step loss, |G|^2, tr(Sigma) behind the fit (for plots)
    growth: dict                         # the fitted law, its windows and the curve through them
    seconds: dict = field(default_factory=dict)
    step_time: dict = field(default_factory=dict)    # the real steps against the grid, and what was added
    checkpoint: dict = field(default_factory=dict)   # where the measuring run's state was saved (save_checkpoint)
    live: Optional[Run] = field(default=None, repr=False, compare=False)   # that run, at its end (not saved)
    source: Optional[str] = field(default=None, repr=False, compare=False)  # the file it was loaded from

    def to_dict(self) -> dict:
        """The recommendation's fields at the top level, then the evidence (the JSON users read)."""
        out = {**to_jsonable(self.recommendation), "profile": to_jsonable(self.profile),
               "measuring": to_jsonable(self.measuring), "noise_steps": to_jsonable(self.noise_steps),
               "growth": to_jsonable(self.growth), "cost_seconds": to_jsonable(self.seconds),
               "step_time": to_jsonable(self.step_time)}
        if self.checkpoint:
            out["checkpoint"] = to_jsonable(self.checkpoint)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "FindResult":
        return cls(recommendation=recommend.Recommendation.from_dict(d),
                   profile=HardwareProfile.from_dict(d["profile"]),
                   measuring=decode(dict, d["measuring"]), noise_steps=decode(dict, d["noise_steps"]),
                   growth=decode(dict, d["growth"]), seconds=decode(dict, d.get("cost_seconds", {})),
                   step_time=decode(dict, d.get("step_time", {})), checkpoint=decode(dict, d.get("checkpoint", {})))

    def save(self, path: "str | Path", checkpoint: bool = True) -> Path:
        """Write the result as JSON (``to_dict()`` with a schema), to reuse with :meth:`load` or as the
        ``step_time`` of the adaptive callbacks. ``checkpoint``: a result that holds its measuring run
        (``find``'s own, not one loaded) also writes that run's state next to it (:func:`checkpoint_path`),
        which the JSON names and ``train --from-find`` continues."""
        from .find_file import FIND_SCHEMA

        if checkpoint and self.live is not None:
            self.save_checkpoint(checkpoint_path(path), relative_to=Path(path).parent)
        doc = {"schema": FIND_SCHEMA, **self.to_dict()}
        if self.live is None and self.checkpoint and self.source:   # loaded: its state stays where it lies
            where = Path(self.source).parent / self.checkpoint["path"]
            doc["checkpoint"] = {**doc["checkpoint"], "path": os.path.relpath(where, Path(path).parent)}
        return write_json(path, doc)

    def save_checkpoint(self, path: "str | Path", relative_to: "str | Path | None" = None) -> dict:
        """Write the measuring run's whole state (model, optimizer, data order, RNG, counters, history) to
        ``path`` and record it in :attr:`checkpoint` (its path relative to ``relative_to`` when given, the
        directory of the JSON that names it). `train --from-find` or `train --resume-from` continue it."""
        if self.live is None:
            raise ConfigError("this find result holds no measuring run to save (it was loaded from a file); "
                              "run find again to save one")
        save_checkpoint(self.live.state_dict(), str(path))
        ctx, m = self.live.ctx, self.measuring
        shown = os.path.relpath(path, relative_to) if relative_to is not None else str(path)
        self.checkpoint = {"path": shown, "step": ctx.step, "examples": ctx.examples, "seconds": ctx.seconds,
                           "batch_size": m["batch_size"], "micro_batch": m["micro_batch"], "lr": m["lr"]}
        return self.checkpoint

    @classmethod
    def load(cls, path: "str | Path") -> "FindResult":
        """A result written by :meth:`save` or ``batchscope find --out``; another kind of file is a ConfigError."""
        from .find_file import WRITE_ONE, read_find_document

        doc = read_find_document(path)
        try:
            result = cls.from_dict(doc)
            result.source = str(path)
            return result
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"find result {str(path)!r} is incomplete or malformed ({type(e).__name__}: {e}); "
                              f"{WRITE_ONE}") from e

    def lr_scheduler(self, optimizer) -> "torch.optim.lr_scheduler.LambdaLR":
        """The recommended rate and warm-up for one's own loop: sets ``optimizer`` to the recommended
        learning rate and returns a ``LambdaLR`` ramping it linearly over ``warmup_steps`` optimizer
        steps (step s at rate x (s+1)/warmup, as ``train`` does), constant after; call its ``step()``
        after each ``optimizer.step()``. Without a warm-up the factor is 1 throughout."""
        from .find_file import warmup_scheduler

        r = self.recommendation
        return warmup_scheduler(optimizer, r.lr, r.warmup_steps)


def checkpoint_path(json_path: "str | Path") -> Path:
    """Where the measuring run's state goes beside a saved result: ``result.json`` -> ``result.ckpt``."""
    return Path(json_path).with_suffix(".ckpt")


class CycleClock(Callback):
    """Wall seconds of every step of a run from one step's end to the next, evaluations left out: the
    data, the passes, the update and every callback's hooks, as the run really paid for them."""

    def __init__(self):
        self.times: list[float] = []
        self._last: Optional[float] = None

    def on_step_end(self, ctx: TrainContext, loss: float) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now

    def on_evaluate(self, ctx: TrainContext, point: HistoryPoint) -> None:
        self._last = time.perf_counter()     # the evaluation (and its hooks) is not a step's cost


def time_real_steps(live: Run, leave_out: list, micro_batch: int, bare=None, steps: int = TIMING_STEPS,
                    warmup: int = realstep.WARMUP_STEPS) -> tuple[list[float], list[float]]:
    """Seconds of ``warmup + steps`` more steps of ``live`` in passes of ``micro_batch``, each timed whole
    (data, passes, update and the remaining callbacks' hooks), with the callbacks in ``leave_out`` (the
    measurement's own) off; and after each, the seconds of ``bare()`` (the grid's kind of step, timed
    beside them; ``[]`` without one).

    The steps are training like any other (the same batch and gradient in fewer passes): they count in
    the run's counters and its saved state. The run's own micro-batch is back afterwards.
    """
    ctx, policy = live.ctx, live.policy
    ctx.stop, ctx.stop_reason = False, ""            # the run goes on from where its budget stopped it
    own = {id(cb) for cb in leave_out}
    kept, live.callbacks = live.callbacks, [cb for cb in live.callbacks if id(cb) not in own]
    kept_micro, policy.micro_batch = policy.micro_batch, micro_batch
    times, bare_times = [], []
    try:
        for _ in range(warmup + steps):
            t0 = time.perf_counter()
            live.step()
            times.append(time.perf_counter() - t0)
            if bare is not None:
                bare_times.append(bare())
    finally:
        live.callbacks, policy.micro_batch = kept, kept_micro
    return times, bare_times


def bare_step(task: Task, device: str, amp: bool, seed: int, micro_batch: int, passes: int):
    """A function timing one step as the profile's grid times it (``passes`` bare passes of ``micro_batch``
    on a batch held in memory, each with its update, on a model of its own); the global random state is
    left as it was."""
    import torch

    from ..hardware import StepRunner

    runner = StepRunner(task, resolve_device(device), amp, seed)
    batch = runner.batch(micro_batch)

    def timed() -> float:
        state = torch.get_rng_state()
        t0 = time.perf_counter()
        for _ in range(passes):
            runner.step(batch)
        runner.synchronize()
        seconds = time.perf_counter() - t0
        torch.set_rng_state(state)
        return seconds
    return timed


@dataclass
class Measurement:
    """The measuring run: its training result, the per-step noise statistics, the run-length projection
    and the target in loss units that projection was made on."""

    run: TrainResult
    micro_batch: int
    lr: float
    raw: list                            # (step, loss, |G|^2, tr(Sigma)) per step
    projection: Projection
    target: TargetLoss
    extension: Optional[dict] = None     # from_step, why, cap_steps: when the run went on past its minimum
    live: Optional[Run] = None           # the run itself at its end: model, optimizer, sampler, RNG (forkable)
    real_steps: list = field(default_factory=list)       # seconds of the timed steps after it, monitor detached
    monitored_steps: list = field(default_factory=list)  # seconds of its own steps (monitor attached)
    timing: dict = field(default_factory=dict)           # steps, examples, seconds of the timed steps after it
    bare_steps: list = field(default_factory=list)       # bare steps of the grid's kind, one after each timed one
    step_time: dict = field(default_factory=dict)        # the real steps against the grid (real_step_time)

    def kept(self) -> dict:
        """What a failure after the run keeps."""
        return {"measuring_history": [fields_to_dict(p) for p in self.run.history],
                "measuring_noise": [r._asdict() for r in self.raw]}


@dataclass
class NoiseFit:
    """The growth law fitted once, with one bootstrap behind both intervals."""

    law: growth.GrowthFit
    crit: critical_batch.CriticalBatch   # B_crit for the whole run: critical_batch.predict
    window_loss: float                   # mean training loss over the steps B_crit was measured on
    b_simple_at_target: growth.Prediction
    start_loss: float
    target_loss: float
    target_how: str
    n_steps: int
    losses: np.ndarray
    g2: np.ndarray
    trace: np.ndarray


def target_training_loss(task: Task, points: list[HistoryPoint], target_examples: Optional[float] = None
                         ) -> tuple[float, str]:
    """The training loss at which the target will be reached, and how that was worked out.

    Loss targets are used as they are. Metric targets are mapped to a loss through
    ln(training loss) = c + d * metric fitted over the measuring run's evaluations, an
    extrapolation said as such in the report.
    """
    t = read_target(task, points, target_examples)
    if t.train is None:
        raise FindError(f"the loss at the target cannot be worked out from the measuring run: {t.how}")
    return t.train, t.how


def target_words(task: Task, target_epochs: Optional[float]) -> str:
    """The target as a user stated it."""
    if target_epochs is None:
        return task.target.describe(task.metric_name)
    return f"the {task.target.split} loss after {target_epochs:g} epochs at the reference setting"


# Long on purpose: 23 of its lines are the docstring of the public entry point; the body is one pipeline
# (validate, profile, measure, fit, recommend, check) whose stages are calls.
def find(task: "Task | str", *, device: str = "cpu", objective: str = "fastest", measure_fraction: float = 0.05,
         profile: Optional[HardwareProfile] = None, max_batch: Optional[int] = None, devices: int = 1,
         ref_batch: Optional[int] = None, ref_lr: Optional[float] = None, memory_budget=None, seed: int = 0,
         amp: bool = False, n_windows: int = 6, callbacks=(), cluster=None, gamma: float = 1.0,
         target_epochs: Optional[float] = None, progress=None, step_overhead: Optional[float] = None,
         timed_steps: Optional[realstep.TimedSteps] = None, verify: bool = True) -> FindResult:
    """Measure and recommend. ``callbacks`` go to the measuring run (a progress bar, for instance).

    ``devices`` > 1: gradients are all-reduced over ``cluster`` (:class:`~batchscope.plan.comm.Cluster`,
    default :data:`~batchscope.plan.comm.DEFAULT_CLUSTER`) with overlap ``gamma``, as `plan` models it.

    ``measure_fraction``: the measuring run's share of the examples a full run to the target is
    projected to need; while that run cannot be projected yet, the measuring run goes on, to
    :data:`EXTEND_STEPS` steps at most, and the result says so. ``target_epochs``: instead of the
    task's target, the loss the reference setting is projected to reach after that many epochs
    (fitted on the measuring run), so no baseline run is needed to state one; batch sizes are then
    compared by the time they take to reach that loss. ``memory_budget``: bytes or a string such as
    "2GiB" or "40%" (see :func:`profile_hardware`). A ``profile`` measured on another kind of device
    is used as it is: it describes the hardware to plan for, while the measuring run trains on
    ``device``. A failure after the hardware was profiled carries what was measured in ``error.measured``.
    ``progress``: called as ``progress(stage, done, total, info)`` while the hardware is profiled
    (see :func:`profile_hardware`); the measuring run reports through ``callbacks``.
    ``verify``: check the recommendation by short branches forked from the measuring run's end
    (:mod:`batchscope.plan.verify`; False skips them). For SGD the stability bound caps the rates either way.

    Real steps (:func:`real_step_time`): the per-step cost of :data:`TIMING_STEPS` whole steps after the
    measuring run (or of ``timed_steps``, your own loop's) beyond the profile's grid is added to every
    candidate's step when the profile is of this device; ``step_overhead``: seconds to add instead.
    """
    task = load_task(task)
    b_ref = _validate(task, objective=objective, measure_fraction=measure_fraction, devices=devices,
                      max_batch=max_batch, ref_batch=ref_batch, ref_lr=ref_lr, target_epochs=target_epochs,
                      seed=seed, n_windows=n_windows, gamma=gamma, step_overhead=step_overhead,
                      timed_steps=timed_steps)
    t0 = time.perf_counter()
    if profile is None:
        from ..hardware import profile_hardware

        profile = profile_hardware(task, device=device, memory_budget=memory_budget, max_batch=max_batch, amp=amp,
                                   progress=progress)
    else:
        check_profile(profile, task)
    seconds = {"profile": time.perf_counter() - t0}
    lr_ref = ref_lr if ref_lr is not None else task.lr
    target_examples = None if target_epochs is None else target_epochs * task.n_train
    try:
        t0 = time.perf_counter()
        m = measure(task, b_ref, lr_ref, measure_fraction, device=device, seed=seed, amp=amp, callbacks=callbacks,
                    target_examples=target_examples, target=target_words(task, target_epochs),
                    memory_ceiling=profile.max_batch)
        seconds["measuring"] = time.perf_counter() - t0
        m.step_time = real_step_time(profile, m, device, step_overhead, timed_steps)
        try:
            noise = fit_noise(m, n_windows, seed)
        except FindError as e:
            raise e.keep(**m.kept())
        result = recommend_for(task, profile, m, noise, objective=objective, measure_fraction=measure_fraction,
                               max_batch=max_batch, devices=devices, seconds=seconds,
                               sync=sync_constraints(task, devices, cluster, gamma),
                               target=target_words(task, target_epochs))
        t0 = time.perf_counter()
        verify_check(result, m, task, profile, seed=seed, verify=verify)
        seconds["verify"] = time.perf_counter() - t0
        return result
    except BatchscopeError as e:
        raise e.keep(profile=profile.to_dict())


def _validate(task: Task, *, max_batch: Optional[int], devices: int, gamma: float, ref_batch: Optional[int],
              **declared) -> int:
    """Every argument checked once, before any work; returns the measuring batch."""
    check_params("find", PARAMETERS, ref_batch=ref_batch, **declared)
    check_params("find", recommend.LIMITS, max_batch=max_batch, devices=devices, gamma=gamma)
    b_ref = task.reference_batch if ref_batch is None else ref_batch
    lo, hi = 8, task.n_train // 4
    if not lo <= b_ref <= hi:
        what = f"at least {lo} (eight micro-batches) and at most {hi} (a quarter of the training set)"
        if ref_batch is not None:
            raise ConfigError(parameter_message("ref_batch", what, ref_batch, where="find"))
        raise ConfigError(f"the task's reference batch {b_ref} is outside {lo}-{hi}: the measuring batch must be "
                          f"{what}; give 'ref_batch' in that range")
    return b_ref


def measure(task: Task, b_ref: int, lr_ref: float, measure_fraction: float, *, device: str, seed: int, amp: bool,
            callbacks=(), target_examples: Optional[float] = None, target: str = "",
            memory_ceiling: Optional[int] = None) -> Measurement:
    """The measuring run at the reference batch with the noise-scale monitor, stopped by :class:`BudgetStop`;
    then :data:`TIMING_STEPS` real steps timed (:func:`time_real_steps`) in as few passes as
    ``memory_ceiling`` allows: one pass is what the profile's grid times exactly."""
    from ..noise import NoiseScaleMonitor

    # eight micro-batches per step: the two-batch estimate of tr(Sigma) averages over all eight
    micro = recommend.largest_divisor(b_ref, b_ref // 8)
    timing_micro = recommend.largest_divisor(b_ref, memory_ceiling or b_ref)
    # The raw gradient's noise scale, for Adam too: the preconditioned variant needs far longer runs
    # than a 5% budget before its interval closes (benchmarks/results/noise_trajectory.json).
    monitor = NoiseScaleMonitor()
    stop = BudgetStop(task, measure_fraction, MIN_STEPS, EXTEND_STEPS, target_examples)
    clock = CycleClock()
    # built before the run (its model is seeded as the run's is, and the run seeds again)
    bare = bare_step(task, device, amp, seed, timing_micro, b_ref // timing_micro)
    cfg = TrainConfig(batch_size=b_ref, micro_batch=micro, lr=lr_ref, steps=MAX_STEPS, eval_every=EVAL_EVERY,
                      eval_examples=1024, seed=seed, device=device, amp=amp)
    try:
        live = start_run(task, cfg, [monitor, stop, *callbacks, clock])
        stopped = live.loop()
        ctx = live.ctx
        at_stop = (ctx.step, ctx.examples, ctx.seconds)
        # then a few steps as the user's loop runs them: the monitor's hooks cost time training will not pay
        monitor.close()
        real, bare_times = time_real_steps(live, [monitor.as_callback(), stop, clock], timing_micro, bare)
        run = live.result(stopped)
    except BatchscopeError as e:
        raise e.keep(measuring_noise=[r._asdict() for r in monitor.raw])
    timing = {"steps": ctx.step - at_stop[0], "examples": ctx.examples - at_stop[1],
              "seconds": ctx.seconds - at_stop[2]}
    # the noise measurement as of its budget stop (what the projection and the calibration mean); the
    # timed steps after it are counted in `timing` and in the run's state
    run = replace(run, steps=at_stop[0], examples=at_stop[1], seconds=at_stop[2])
    m = Measurement(run, micro, lr_ref, list(monitor.raw), stop.projection, stop.target, stop.extension, live,
                    real_steps=real, monitored_steps=clock.times, timing={**timing, "micro_batch": timing_micro},
                    bare_steps=bare_times)
    check_measurement(m, stop, measure_fraction, target or task.target.describe(task.metric_name))
    return m


def real_step_time(profile: HardwareProfile, m: Measurement, device: str, stated: Optional[float] = None,
                   timed: Optional[realstep.TimedSteps] = None) -> dict:
    """The real steps against the profile's grid at their layout, and the seconds per step the
    recommendation adds (``added_seconds``).

    The steps: the measuring run's :data:`TIMING_STEPS` after its budget, trained without the noise
    monitor and each timed whole (data, passes, update, the callbacks), or ``timed`` (a
    :class:`~batchscope.hardware.realstep.TimedSteps` of your own loop, a framework's steps, on this
    device). Added: the fitted overhead when the profile is of this device (same type and name),
    ``stated`` when given, else 0 (the overhead is of this machine, not of the one the profile describes).
    """
    from ..hardware import device_facts

    if timed is None:
        micro = m.timing.get("micro_batch", m.micro_batch)
        timed = realstep.TimedSteps(micro, m.run.config["batch_size"] // micro, tuple(m.real_steps),
                                    "the measuring run, noise monitor detached", tuple(m.bare_steps), paired=True)
    micro, k = timed.micro_batch, timed.accumulation
    b = micro * k
    grid = StepTimeModel.from_profile(profile)
    fit = realstep.fit_overhead(timed.seconds, grid.seconds(micro, k), bare=timed.bare, paired=timed.paired)
    here = device_facts(resolve_device(device))
    same, device_note = realstep.same_device(profile.device, here)
    if stated is not None:
        added, why = float(stated), "stated (step_overhead)"
    elif same:
        added, why = fit.overhead, "measured on this device"
    else:
        added, why = 0.0, "not added: the overhead measured here is of this machine (give 'step_overhead' to state one)"
    monitored = m.monitored_steps[realstep.WARMUP_STEPS:]
    used = same or stated is not None
    return {"batch_size": b, "micro_batch": micro, "accumulation": k, "source": timed.source, **fit.to_dict(),
            "monitored_seconds": float(np.median(monitored)) if monitored else None,
            "monitored_layout": [m.micro_batch, b // m.micro_batch],
            "added_seconds": added, "added": used, "why": why, "device": device_note,
            "assumption": OVERHEAD_ASSUMPTION, "line": realstep.describe(fit, b, added if used else None)}


def check_measurement(m: Measurement, stop: BudgetStop, measure_fraction: float, target: str) -> None:
    """Refuse a measuring run that cannot support a projection, saying why and what to change."""
    run, proj, b_ref = m.run, m.projection, m.run.config["batch_size"]
    if run.stopped_because == "no progress toward the target" or not math.isfinite(proj.examples):
        if not stop.target.ready:
            raise FindError(
                f"the measuring run went on for {run.steps} steps ({run.examples:,} examples), the most it extends "
                f"itself, and the loss at the target {target} still cannot be read: {stop.target.how}; check the "
                f"target or the reference learning rate ({m.lr:g})").keep(**m.kept())
        raise FindError(
            f"the measuring run made no progress toward the target {target} in {run.steps} steps "
            f"({run.examples:,} examples; progress {proj.progress:+.2f}), the most it extends itself while the run "
            f"to the target cannot be projected; check the target or the reference learning rate ({m.lr:g})"
        ).keep(**m.kept())
    # A run that hit MAX_STEPS with a finite projection goes on to the recommendation: the cap bounds what
    # measuring costs, it is no verdict on the target (the caveats say the budget was not reached). On a
    # long run the log-linear projection can be far too long (34.8M examples projected after 3,000 steps
    # for a target a fixed batch of 32 reached in 1.15M), so refusing here refused long runs.
    if measure_fraction * proj.examples < b_ref:
        raise FindError(
            f"a budget of {measure_fraction:.3%} of the projected {proj.examples:,.0f} examples to the target is "
            f"{measure_fraction * proj.examples:,.0f} examples, less than one step of batch {b_ref}: nothing can be "
            f"measured within it; give 'measure_fraction' at least {run.examples / proj.examples:.1%} (what the "
            f"{run.steps}-step measurement used)").keep(**m.kept())


def fit_noise(m: Measurement, n_windows: int, seed: int, level: float = 0.9) -> NoiseFit:
    """B_crit for the run (the suite-calibrated multiple of the measured B_simple, critical_batch.py) and the
    growth law of B_simple in the loss, which shapes the growth schedule."""
    raw = [(loss, g2, tr) for (_, loss, g2, tr) in m.raw if all(map(math.isfinite, (loss, g2, tr)))]
    if len(raw) < MIN_STEPS // 2:
        raise FindError(f"only {len(raw)} finite noise estimates from the measuring run; give a larger "
                        "'measure_fraction'")
    losses, g2s, traces = (np.array(col) for col in zip(*raw))
    n_windows = max(3, min(n_windows, len(raw) // 10))  # at least ten steps behind each window
    if not m.target.ready:  # check_measurement refuses such a run; a caller of fit_noise may not have
        raise FindError(f"the loss at the target cannot be worked out from the measuring run: {m.target.how}")
    loss_target = m.target.train
    start_loss = float(np.mean(losses[: max(1, len(losses) // n_windows)]))
    try:
        law = growth.fit_growth(growth.make_windows(losses, g2s, traces, n_windows))
    except ValueError as e:
        raise FindError(f"the noise scale could not be fitted: {e}; give a larger 'measure_fraction'") from e
    boots = growth.bootstrap_fits(losses, g2s, traces, n_windows, seed=seed)
    at_target = growth.prediction_at(law, boots, loss_target, level)
    try:
        crit = critical_batch.predict(g2s, traces, level=level, seed=seed)
    except ValueError as e:
        raise FindError(f"the noise scale could not be measured: {e}; give a larger 'measure_fraction'") from e
    window_loss = float(np.mean(losses[critical_batch.window_start(len(losses)):]))
    return NoiseFit(law, crit, window_loss, at_target, start_loss, loss_target, m.target.how, len(raw),
                    losses, g2s, traces)


def schedule_for(noise: NoiseFit, inp: recommend.Inputs, cons: recommend.Constraints, objective: str) -> list[dict]:
    """The growth schedule, ending at the recommended batch.

    B_crit at a loss is the planner's B_crit moved along the growth law's slope from the loss of the
    window it was measured on (growth.anchored); the schedule steps from the measuring run's first
    losses to that window's loss, where it is the recommendation itself (batch and rate), and holds it
    from there. Each earlier stage's rate is the one at the loss it starts from.
    It does not grow beyond: the law's slope, fitted on the start of a run, was too uncertain to carry a
    prediction further (docs/design.md, "Growth with the loss"); `train --adaptive` measures as it goes.
    A law that is constant or rises with the loss gives one stage, the recommendation.
    """
    if noise.law.slope < 0 and not noise.law.constant:
        at = growth.anchored(noise.law, noise.window_loss, inp.b_crit)
    else:
        def at(_loss: float) -> float:
            return inp.b_crit
    levels = growth.schedule_losses(noise.start_loss, noise.window_loss)
    stages = recommend.growth_schedule(at, levels, inp, cons, objective)
    # the last stage is the recommendation, its rate included, from the loss its batch is first chosen at
    final = recommend.growth_schedule(at, levels[-1:], inp, cons, objective)[0]
    if stages[-1]["batch_size"] == final["batch_size"]:
        return stages[:-1] + [{**final, "from_loss": stages[-1]["from_loss"]}]
    return stages + [final]


def recommend_for(task: Task, profile: HardwareProfile, m: Measurement, noise: NoiseFit, *, objective: str,
                  measure_fraction: float, max_batch: Optional[int], devices: int, seconds: dict,
                  sync: Optional[dict] = None, target: str = "") -> FindResult:
    """The time-to-target model over candidate batches, under the constraints, for the objective.

    ``sync``: the all-reduce of several devices as Constraints fields (:func:`sync_constraints`).
    """
    b_ref, proj, crit = m.run.config["batch_size"], m.projection, noise.crit
    cons = recommend.Constraints(n_train=task.n_train, memory_ceiling=profile.max_batch, max_batch=max_batch,
                                 devices=devices, **(sync or {}))
    grid = StepTimeModel.from_profile(profile)
    inp = recommend.Inputs(step_time=grid.with_overhead(m.step_time.get("added_seconds", 0.0)),
                           b_crit=crit.value, b_crit_low=crit.low,
                           b_crit_high=crit.high, b_ref=b_ref, steps_ref=proj.examples / b_ref, lr_ref=m.lr,
                           optimizer=task.optimizer)
    best, cands, lr = recommend.recommend(inp, cons, objective)
    fastest = min(cands, key=lambda x: x.seconds)
    bt = noise.b_simple_at_target
    recommendation = recommend.Recommendation(
        objective=objective, batch_size=best.batch_size, micro_batch=best.micro_batch,
        accumulation=best.accumulation, devices=devices, lr=lr.lr, lr_rule=lr.rule, lr_why=lr.why,
        warmup_steps=lr.warmup_steps,
        b_crit={"value": crit.value, "low": crit.low, "high": crit.high, "level": crit.level,
                "b_simple": crit.b_simple, "factor": crit.factor, "how": crit.describe(),
                "calibration": critical_batch.find_calibration()},
        b_simple_at_target={"value": bt.value, "low": bt.low, "high": bt.high, "loss": noise.target_loss,
                            "how": noise.target_how, "extrapolation": bt.extrapolation},
        predicted={"steps": best.steps, "examples": best.examples, "seconds": best.seconds,
                   "relative_time": best.relative_time, "fastest_batch": fastest.batch_size},
        schedule=schedule_for(noise, inp, cons, objective), candidates=[fields_to_dict(c) for c in cands],
        robustness=recommend.regret_if_wrong(inp, cons, objective),
        constraints=explain_constraints(task, profile, max_batch, cons),
        caveats=explain_caveats(task, m, noise, measure_fraction),
        evidence={"alpha": profile.alpha, "beta": profile.beta, "micro_batch_limit": profile.max_batch,
                  "micro_batch_limited_by": profile.limited_by, "device": profile.device.get("type"),
                  "projected_examples_at_ref": proj.examples, "ref_batch": b_ref, "ref_lr": m.lr,
                  "growth_slope": noise.law.slope, "measuring_steps": m.run.steps,
                  "step_overhead": inp.step_time.overhead},
    )
    law = noise.law
    return FindResult(
        recommendation=recommendation, profile=profile, measuring=measuring_record(m, target),
        noise_steps={"loss": noise.losses.tolist(), "g2": noise.g2.tolist(), "trace": noise.trace.tolist()},
        growth={"intercept": law.intercept, "slope": law.slope, "constant": law.constant,
                "windows": [{"loss": w.loss, "b_simple": w.b_simple, "steps": w.n} for w in law.windows],
                "start_loss": noise.start_loss, "window_loss": noise.window_loss, "target_loss": noise.target_loss,
                "curve": growth.curve(law, noise.target_loss)},
        seconds=seconds, step_time=m.step_time, live=m.live,
    )


def measuring_record(m: Measurement, target: str) -> dict:
    """What the measuring run did and cost, and the target in loss units it was projected to."""
    run, proj = m.run, m.projection
    timed = m.timing or {"steps": 0, "examples": 0, "seconds": 0.0}
    cost = {k: getattr(run, k) + timed[k] for k in ("steps", "examples", "seconds")}
    return {"batch_size": run.config["batch_size"], "micro_batch": m.micro_batch, "lr": m.lr, "steps": run.steps,
            "examples": run.examples, "seconds": run.seconds, "stopped_because": run.stopped_because,
            "timed_steps": timed, "cost": cost,
            "device": str(resolve_device(run.config.get("device", "cpu"))),
            "projected_examples_to_target": proj.examples,
            "progress": proj.progress, "fraction_of_projected_run": run.examples / proj.examples,
            "target": {"stated": target, "eval_loss": m.target.eval, "train_loss": m.target.train, "how": m.target.how},
            "extension": m.extension, "history": [fields_to_dict(p) for p in run.history]}


def explain_caveats(task: Task, m: Measurement, noise: NoiseFit, measure_fraction: float) -> list[str]:
    """What a reader of the recommendation should know about how far its numbers can be trusted.

    How B_crit and its interval were calibrated is said once, in ``b_crit["calibration"]``, not here.
    """
    run, used = m.run, m.run.examples / m.projection.examples
    caveats = []
    if run.stopped_because == "step limit":
        caveats.append(f"the measuring run stopped at its cap of {run.steps} steps, {used:.1%} of the projected run "
                       f"({measure_fraction:.0%} budget), with progress {m.projection.progress:.0%} toward the target: "
                       "the projected length, and the predicted steps with it, extrapolate far.")
    elif m.extension:
        caveats.append(f"the measuring run went on from step {m.extension['from_step']} to {run.steps} (it extends "
                       f"itself to {m.extension['cap_steps']} steps at most) because the run to the target could not "
                       f"be projected yet: {m.extension['why']}. It used {used:.0%} of the projected run; the "
                       f"suite calibrated B_crit on measuring runs stopped at the budget.")
    elif used > measure_fraction * 1.05 and run.steps <= MIN_STEPS + EVAL_EVERY:
        caveats.append(f"the measuring run used {used:.1%} of the projected run, more than the {measure_fraction:.0%} "
                       f"budget: the noise measurement needs at least {MIN_STEPS} steps and this run is short.")
    elif used > measure_fraction * 1.05:
        caveats.append(f"the measuring run used {used:.1%} of the projected run ({measure_fraction:.0%} budget): it "
                       f"stops at the first evaluation (every {EVAL_EVERY} steps) past the budget, and the projection "
                       "moved while it ran.")
    if task.optimizer != "sgd":
        caveats.append(f"{task.optimizer} is adaptive: the noise scale is measured on the raw gradient, which "
                       "orders batch sizes the same way but is not the noise of the preconditioned step.")
    if noise.law.constant:
        caveats.append("too few usable noise windows to fit a growth law: the schedule is the recommended batch "
                       "from the start.")
    elif noise.law.slope >= 0:
        caveats.append("the measured noise scale fell as the loss fell, against the usual pattern: the schedule "
                       "is the recommended batch from the start.")
    return caveats


def explain_constraints(task: Task, profile: HardwareProfile, max_batch: Optional[int],
                        cons: recommend.Constraints) -> list[str]:
    out = [f"data set: at most {task.n_train:,} examples per batch"]
    out.append(f"micro-batch: at most {profile.max_batch:,} examples per pass on one device "
               f"({micro_batch_limit_reason(profile)}; larger batches accumulate)")
    if max_batch:
        out.append(f"the cap asked for: at most {max_batch:,} examples per batch")
    if cons.devices > 1:
        out.append(f"{cons.devices} devices: global batch = micro-batch x accumulation x {cons.devices}; "
                   f"{format_bytes(cons.grad_bytes)} of gradients all-reduced per step, "
                   f"{cons.cluster.describe() if cons.cluster else 'no communication'}, overlap gamma {cons.gamma:g}")
    return out


def sync_constraints(task: Task, devices: int, cluster, gamma: float) -> dict:
    """The gradient all-reduce of ``devices`` data-parallel workers, as recommend.Constraints fields."""
    if devices <= 1:
        return {}
    from .comm import DEFAULT_CLUSTER
    from .devices import gradient_bytes

    return {"cluster": cluster or DEFAULT_CLUSTER, "grad_bytes": gradient_bytes(task.make_model()), "gamma": gamma}


def micro_batch_limit_reason(profile: HardwareProfile) -> str:
    """Why the profile's largest batch is where it is: memory, or only the largest one measured."""
    if profile.limited_by == "memory":
        return "the memory ceiling"
    return f"the largest batch measured: the profile was capped by {profile.limited_by}, not by memory"


def check_profile(profile: HardwareProfile, task: Task) -> None:
    """Refuse a saved hardware profile measured for another task or model (its numbers would be wrong).

    A profile from another kind of device is accepted: it describes the hardware the plan is for.
    """
    profile.check_task(task)
