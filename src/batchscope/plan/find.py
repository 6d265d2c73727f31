"""`find`: profile the hardware, measure the noise scale on a short run, recommend.

The pipeline (docs/design.md, "Time to target"):
1. hardware: alpha, beta and the memory ceiling (measured now, or read from a saved profile);
2. a measuring run at the reference batch with the noise-scale monitor, stopped once it has used
   ``budget`` (default 5%) of the examples that a full run to the target is projected to need;
3. the noise scale related to the training loss and extrapolated to the target loss;
4. the time-to-target model over candidate batch sizes, under the constraints, for the objective.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..hardware.units import format_bytes
from ..errors import BatchscopeError, ConfigError, check_positive_int
from ..hardware import HardwareProfile, StepTimeModel
from ..serialize import decode, fields_to_dict, to_jsonable
from ..tasks import Task, load_task
from ..train import Callback, HistoryPoint, TrainConfig, TrainContext, TrainResult, resolve_device, train
from . import critical_batch, growth, recommend
from .projection import Projection, loss_at_metric, project_examples

EVAL_EVERY = 5            # steps between evaluations of the measuring run
MIN_STEPS = 30            # fewer steps give too few per-step noise estimates for 6 windows
MAX_STEPS = 3000          # the measuring run never trains longer than this
STALL_EXAMPLES = 20       # x the batch x MIN_STEPS: give up when no progress toward the target by then


class FindError(BatchscopeError):
    """The measurement could not support a recommendation; the message says why and what to change."""


class BudgetStop(Callback):
    """Stops the measuring run once it has used ``fraction`` of the projected examples to the target.

    Progress is measured on the log of the evaluation loss: for a metric target, the loss at which
    the metric reaches its target is read off ln(loss) = c + d * metric fitted on the evaluations so far.
    """

    def __init__(self, task: Task, fraction: float, min_steps: int, stall_examples: int):
        self.task, self.fraction, self.min_steps, self.stall_examples = task, fraction, min_steps, stall_examples
        self.projection = Projection(math.inf, 0.0, 0)
        self.points: list[HistoryPoint] = []

    def _target_loss(self) -> Optional[float]:
        t = self.task.target
        if t.kind == "loss":
            return t.value
        fit = loss_at_metric([p.metric for p in self.points[1:]], [p.eval_loss for p in self.points[1:]], t.value)
        return None if fit is None else fit[0]

    def on_evaluate(self, ctx: TrainContext, point: HistoryPoint) -> None:
        if ctx.stop:  # the decision is made: keep the projection it was made on
            return
        self.points.append(point)
        target = self._target_loss()
        if target is not None and target > 0:
            # in log-loss: losses fall by factors, and a floor far above a near-zero target then shows
            self.projection = project_examples([p.examples for p in self.points],
                                               [math.log(max(p.eval_loss, 1e-12)) for p in self.points],
                                               math.log(self.points[0].eval_loss), math.log(target))
        if ctx.step < self.min_steps:
            return
        if ctx.examples >= self.fraction * self.projection.examples:
            ctx.stop, ctx.stop_reason = True, "budget used"
        elif not math.isfinite(self.projection.examples) and ctx.examples >= self.stall_examples:
            ctx.stop, ctx.stop_reason = True, "no progress toward the target"


@dataclass
class FindResult:
    recommendation: recommend.Recommendation
    profile: HardwareProfile
    measuring: dict                      # what the measuring run did and cost
    noise_steps: dict                    # per-step loss, |G|^2, tr(Sigma) behind the fit (for plots)
    growth: dict                         # the fitted law, its windows and the curve through them
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The recommendation's fields at the top level, then the evidence (the JSON users read)."""
        return {**to_jsonable(self.recommendation), "profile": to_jsonable(self.profile),
                "measuring": to_jsonable(self.measuring), "noise_steps": to_jsonable(self.noise_steps),
                "growth": to_jsonable(self.growth), "cost_seconds": to_jsonable(self.seconds)}

    @classmethod
    def from_dict(cls, d: dict) -> "FindResult":
        return cls(recommendation=recommend.Recommendation.from_dict(d), profile=HardwareProfile.from_dict(d["profile"]),
                   measuring=decode(dict, d["measuring"]), noise_steps=decode(dict, d["noise_steps"]),
                   growth=decode(dict, d["growth"]), seconds=decode(dict, d.get("cost_seconds", {})))


@dataclass
class Measurement:
    """The measuring run: its training result, the per-step noise statistics and the run-length projection."""

    run: TrainResult
    micro_batch: int
    lr: float
    raw: list                            # (step, loss, |G|^2, tr(Sigma)) per step
    projection: Projection

    def kept(self) -> dict:
        """What a failure after the run keeps."""
        return {"measuring_history": [fields_to_dict(p) for p in self.run.history],
                "measuring_noise": [r._asdict() for r in self.raw]}


@dataclass
class NoiseFit:
    """The growth law fitted once, with one bootstrap behind both intervals."""

    law: growth.GrowthFit
    b_noise: float                       # B_crit for the whole run: critical_batch.predict
    low: float
    high: float
    crit: critical_batch.CriticalBatch
    at_target: growth.Prediction
    start_loss: float
    end_loss: float
    target_loss: float
    target_how: str
    n_steps: int
    losses: np.ndarray
    g2: np.ndarray
    trace: np.ndarray


def target_training_loss(task: Task, points: list[HistoryPoint]) -> tuple[float, str]:
    """The training loss at which the target will be reached, and how that was worked out.

    Loss targets are used as they are. Metric targets are mapped to a loss through
    ln(training loss) = c + d * metric fitted over the measuring run's evaluations, an
    extrapolation said as such in the report.
    """
    t = task.target
    if t.kind == "loss":
        return t.value, f"the target is a loss: {t.describe(task.metric_name)}"
    pts = points[1:]
    fit = loss_at_metric([p.metric for p in pts], [p.loss for p in pts], t.value)
    if fit is None:
        raise FindError(f"the {task.metric_name or 'metric'} and the training loss did not move together during "
                        "the measuring run, so the loss at the target cannot be worked out; raise --budget")
    loss, c, d = fit
    return loss, (f"ln(train loss) = {c:.3g} + {d:.3g} * {task.metric_name or 'metric'} fitted on {len(pts)} "
                  f"evaluations, read at {t.value:g}")


def find(task: "Task | str", *, device: str = "cpu", objective: str = "fastest", measure_fraction: float = 0.05,
         profile: Optional[HardwareProfile] = None, max_batch: Optional[int] = None, devices: int = 1,
         ref_batch: Optional[int] = None, ref_lr: Optional[float] = None, memory_budget=None, seed: int = 0,
         amp: bool = False, n_windows: int = 6, callbacks=(), cluster=None, gamma: float = 1.0) -> FindResult:
    """Measure and recommend. ``callbacks`` go to the measuring run (a progress bar, for instance).

    ``devices`` > 1: gradients are all-reduced over ``cluster`` (:class:`~batchscope.plan.comm.Cluster`,
    default :data:`~batchscope.plan.comm.DEFAULT_CLUSTER`) with overlap ``gamma``, as `plan` models it.

    ``measure_fraction``: the measuring run's share of the examples a full run to the target is
    projected to need. ``memory_budget``: bytes or a string such as "2GiB" or "40%" (see
    :func:`profile_hardware`). A ``profile`` measured on another kind of device is used as it is:
    it describes the hardware to plan for, while the measuring run trains on ``device``. A failure
    after the hardware was profiled carries what was measured in ``error.measured``.
    """
    task = load_task(task)
    b_ref = _validate(task, objective, measure_fraction, devices, max_batch, ref_batch)
    t0 = time.perf_counter()
    if profile is None:
        from ..hardware import profile_hardware

        profile = profile_hardware(task, device=device, memory_budget=memory_budget, max_batch=max_batch, amp=amp)
    else:
        check_profile(profile, task)
    seconds = {"profile": time.perf_counter() - t0}
    lr_ref = ref_lr if ref_lr is not None else task.lr
    try:
        t0 = time.perf_counter()
        m = measure(task, b_ref, lr_ref, measure_fraction, device=device, seed=seed, amp=amp, callbacks=callbacks)
        seconds["measuring"] = time.perf_counter() - t0
        try:
            noise = fit_noise(task, m, n_windows, seed)
        except FindError as e:
            raise e.keep(**m.kept())
        return recommend_for(task, profile, m, noise, objective=objective, measure_fraction=measure_fraction,
                             max_batch=max_batch, devices=devices, seconds=seconds,
                             sync=sync_constraints(task, devices, cluster, gamma))
    except BatchscopeError as e:
        raise e.keep(profile=profile.to_dict())


def _validate(task: Task, objective: str, measure_fraction: float, devices: int, max_batch: Optional[int],
              ref_batch: Optional[int]) -> int:
    """Every argument checked once, before any work; returns the measuring batch."""
    if objective not in recommend.OBJECTIVES:
        raise ConfigError(f"The 'objective' parameter must be one of {', '.join(recommend.OBJECTIVES)}. "
                          f"Got {objective!r} instead.")
    if not (0 < measure_fraction <= 1):
        raise ConfigError(f"The 'budget' parameter must be a fraction in (0, 1] (the measuring run's share of the "
                          f"projected run). Got {measure_fraction!r} instead.")
    check_positive_int("devices", devices)
    if max_batch is not None:
        check_positive_int("max_batch", max_batch)
    b_ref = task.reference_batch if ref_batch is None else check_positive_int("ref_batch", ref_batch)
    if b_ref < 8 or b_ref > task.n_train // 4:
        raise ConfigError(f"the measuring batch {b_ref} must be at least 8 (eight micro-batches) and at most "
                          f"a quarter of the training set ({task.n_train // 4}); pass --ref-batch")
    return b_ref


def measure(task: Task, b_ref: int, lr_ref: float, measure_fraction: float, *, device: str, seed: int, amp: bool,
            callbacks=()) -> Measurement:
    """The measuring run at the reference batch with the noise-scale monitor, stopped by :class:`BudgetStop`."""
    from ..noise import NoiseScaleMonitor

    # eight micro-batches per step: the two-batch estimate of tr(Sigma) averages over all eight
    micro = recommend.largest_divisor(b_ref, b_ref // 8)
    # The raw gradient's noise scale, for Adam too: the preconditioned variant needs far longer runs
    # than a 5% budget before its interval closes (benchmarks/results/noise_trajectory.json).
    monitor = NoiseScaleMonitor()
    stop = BudgetStop(task, measure_fraction, MIN_STEPS, STALL_EXAMPLES * MIN_STEPS * b_ref)
    cfg = TrainConfig(batch_size=b_ref, micro_batch=micro, lr=lr_ref, steps=MAX_STEPS, eval_every=EVAL_EVERY,
                      eval_examples=1024, seed=seed, device=device, amp=amp)
    try:
        run = train(task, cfg, [monitor, stop, *callbacks])
    except BatchscopeError as e:
        raise e.keep(measuring_noise=[r._asdict() for r in monitor.raw])
    m = Measurement(run, micro, lr_ref, list(monitor.raw), stop.projection)
    proj = m.projection
    if run.stopped_because == "no progress toward the target" or not math.isfinite(proj.examples):
        raise FindError(
            f"the measuring run made no progress toward the target {task.target.describe(task.metric_name)} "
            f"in {run.steps} steps ({run.examples:,} examples; progress {proj.progress:+.2f}); check the target, "
            f"the reference learning rate ({lr_ref:g}) or raise --budget").keep(**m.kept())
    if run.stopped_because == "step limit":
        raise FindError(
            f"the target {task.target.describe(task.metric_name)} looks out of reach: after {run.steps} steps "
            f"({run.examples:,} examples) progress toward it is {proj.progress:.0%} and the projected run "
            f"({proj.examples:,.0f} examples) is too long to measure; check the target or the learning rate"
        ).keep(**m.kept())
    if measure_fraction * proj.examples < b_ref:
        raise FindError(
            f"a budget of {measure_fraction:.3%} of the projected {proj.examples:,.0f} examples to the target is "
            f"{measure_fraction * proj.examples:,.0f} examples, less than one step of batch {b_ref}: nothing can be "
            f"measured within it; raise --budget to at least {run.examples / proj.examples:.1%} (what the "
            f"{run.steps}-step measurement used)").keep(**m.kept())
    return m


def fit_noise(task: Task, m: Measurement, n_windows: int, seed: int, level: float = 0.9) -> NoiseFit:
    """B_crit for the run (the suite-calibrated multiple of the measured B_simple, critical_batch.py) and the
    growth law of B_simple in the loss, which shapes the schedule and the B_crit-at-target extrapolation."""
    raw = [(loss, g2, tr) for (_, loss, g2, tr) in m.raw if all(map(math.isfinite, (loss, g2, tr)))]
    if len(raw) < MIN_STEPS // 2:
        raise FindError(f"only {len(raw)} finite noise estimates from the measuring run; raise --budget")
    losses, g2s, traces = (np.array(col) for col in zip(*raw))
    n_windows = max(3, min(n_windows, len(raw) // 10))  # at least ten steps behind each window
    loss_target, loss_how = target_training_loss(task, m.run.history)
    if not loss_target > 0:
        raise FindError(f"the training loss at the target works out as {loss_target:.3g}, not positive, so the "
                        "growth law cannot be read there; check the target or raise --budget")
    start_loss = float(np.mean(losses[: max(1, len(losses) // n_windows)]))
    end_loss = min(loss_target, start_loss)
    try:
        law = growth.fit_growth(growth.make_windows(losses, g2s, traces, n_windows))
    except ValueError as e:
        raise FindError(f"the noise scale could not be fitted: {e}; raise --budget") from e
    boots = growth.bootstrap_fits(losses, g2s, traces, n_windows, seed=seed)
    at_target = growth.prediction_at(law, boots, loss_target, level)
    try:
        crit = critical_batch.predict(g2s, traces, level=level, seed=seed)
    except ValueError as e:
        raise FindError(f"the noise scale could not be measured: {e}; raise --budget") from e
    return NoiseFit(law, crit.value, crit.low, crit.high, crit, at_target, start_loss, end_loss,
                    loss_target, loss_how, len(raw), losses, g2s, traces)


def recommend_for(task: Task, profile: HardwareProfile, m: Measurement, noise: NoiseFit, *, objective: str,
                  measure_fraction: float, max_batch: Optional[int], devices: int, seconds: dict,
                  sync: Optional[dict] = None) -> FindResult:
    """The time-to-target model over candidate batches, under the constraints, for the objective.

    ``sync``: the all-reduce of several devices as Constraints fields (:func:`sync_constraints`).
    """
    b_ref, proj = m.run.config["batch_size"], m.projection
    cons = recommend.Constraints(n_train=task.n_train, memory_ceiling=profile.max_batch, max_batch=max_batch,
                                 devices=devices, **(sync or {}))
    inp = recommend.Inputs(step_time=StepTimeModel.from_profile(profile), b_noise=noise.b_noise, b_noise_low=noise.low,
                           b_noise_high=noise.high, b_ref=b_ref, steps_ref=proj.examples / b_ref, lr_ref=m.lr,
                           optimizer=task.optimizer)
    best, cands, lr = recommend.recommend(inp, cons, objective)
    levels = list(np.exp(np.linspace(math.log(noise.start_loss), math.log(noise.end_loss), 6)))
    schedule = recommend.growth_schedule(noise.law.predict, levels, inp, cons, objective)
    fastest = min(cands, key=lambda x: x.seconds)
    bt = noise.at_target
    recommendation = recommend.Recommendation(
        objective=objective, batch_size=best.batch_size, micro_batch=best.micro_batch,
        accumulation=best.accumulation, devices=devices, lr=lr.lr, lr_rule=lr.rule, lr_why=lr.why,
        warmup_steps=lr.warmup_steps,
        b_noise={"value": noise.b_noise, "low": noise.low, "high": noise.high, "level": noise.crit.level,
                 "b_simple": noise.crit.b_simple, "factor": noise.crit.factor, "how": noise.crit.describe()},
        b_crit_at_target={"value": bt.value, "low": bt.low, "high": bt.high, "loss": noise.target_loss,
                          "how": noise.target_how, "extrapolation": bt.extrapolation},
        predicted={"steps": best.steps, "examples": best.examples, "seconds": best.seconds,
                   "relative_time": best.relative_time, "fastest_batch": fastest.batch_size},
        schedule=schedule, candidates=[fields_to_dict(c) for c in cands],
        robustness=recommend.regret_if_wrong(inp, cons, objective),
        constraints=explain_constraints(task, profile, max_batch, cons),
        caveats=explain_caveats(task, m, noise, measure_fraction),
        evidence={"alpha": profile.alpha, "beta": profile.beta, "micro_batch_limit": profile.max_batch,
                  "micro_batch_limited_by": profile.limited_by, "device": profile.device.get("type"),
                  "projected_examples_at_ref": proj.examples, "ref_batch": b_ref, "ref_lr": m.lr,
                  "growth_slope": noise.law.slope, "measuring_steps": m.run.steps},
    )
    run = m.run
    measuring = {"batch_size": b_ref, "micro_batch": m.micro_batch, "lr": m.lr, "steps": run.steps,
                 "examples": run.examples, "seconds": run.seconds, "stopped_because": run.stopped_because,
                 "device": str(resolve_device(run.config.get("device", "cpu"))), "projected_examples_to_target": proj.examples,
                 "progress": proj.progress, "fraction_of_projected_run": run.examples / proj.examples,
                 "history": [fields_to_dict(p) for p in run.history]}
    law = noise.law
    return FindResult(
        recommendation=recommendation, profile=profile, measuring=measuring,
        noise_steps={"loss": noise.losses.tolist(), "g2": noise.g2.tolist(), "trace": noise.trace.tolist()},
        growth={"intercept": law.intercept, "slope": law.slope, "constant": law.constant,
                "windows": [{"loss": w.loss, "b_simple": w.b_simple, "steps": w.n} for w in law.windows],
                "start_loss": noise.start_loss, "target_loss": noise.target_loss,
                "curve": growth.curve(law, noise.target_loss)},
        seconds=seconds,
    )


def explain_caveats(task: Task, m: Measurement, noise: NoiseFit, measure_fraction: float) -> list[str]:
    """What a reader of the recommendation should know about how far its numbers can be trusted."""
    run, used = m.run, m.run.examples / m.projection.examples
    caveats = [
        f"B_noise is the critical batch predicted as {noise.crit.factor:.2f} x the simple noise scale tr(Sigma)/|G|^2 "
        "of the measuring run's second half: the geometric mean of B_crit / B_simple over the validation suite's "
        "tasks (B_simple grows as the loss falls, and the measuring run sees only the start of training).",
        f"the {noise.crit.level:.0%} interval adds the task-to-task spread of that ratio over the suite to the "
        f"sampling noise of the {noise.crit.steps} steps; left out of the fit, a suite task's measured B_crit fell "
        "inside it on 9 of 11 tasks (benchmarks/results/suite_calibration.md, window).",
    ]
    if noise.at_target.extrapolation > 1.5:
        caveats.append(f"B_crit at the target is extrapolated {noise.at_target.extrapolation:.1f}x beyond the losses "
                       "measured; grow the batch by the schedule and re-measure with the monitor as training goes.")
    if task.optimizer != "sgd":
        caveats.append(f"{task.optimizer} is adaptive: the noise scale is measured on the raw gradient, which "
                       "orders batch sizes the same way but is not the noise of the preconditioned step.")
    if used > measure_fraction * 1.05 and run.steps <= MIN_STEPS + EVAL_EVERY:
        caveats.append(f"the measuring run used {used:.1%} of the projected run, more than the {measure_fraction:.0%} "
                       f"budget: the noise measurement needs at least {MIN_STEPS} steps and this run is short.")
    elif used > measure_fraction * 1.05:
        caveats.append(f"the measuring run used {used:.1%} of the projected run ({measure_fraction:.0%} budget): it "
                       f"stops at the first evaluation (every {EVAL_EVERY} steps) past the budget, and the projection "
                       "moved while it ran.")
    if noise.law.constant:
        caveats.append("too few usable noise windows to fit a growth law; the noise scale was taken as constant.")
    if noise.law.slope > 0:
        caveats.append("the measured noise scale fell as the loss fell, against the usual pattern; the growth "
                       "schedule is then flat or shrinking.")
    return caveats


def explain_constraints(task: Task, profile: HardwareProfile, max_batch: Optional[int],
                        cons: recommend.Constraints) -> list[str]:
    out = [f"data set: at most {task.n_train:,} examples per batch"]
    out.append(f"micro-batch: at most {profile.max_batch:,} examples per pass on one device "
               f"({micro_batch_limit_reason(profile)}; larger batches accumulate)")
    if max_batch:
        out.append(f"--max-batch {max_batch}")
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
