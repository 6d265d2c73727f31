"""`find`: profile the hardware, measure the noise scale on a short run, recommend.

The pipeline (DESIGN.md, "Time to target"):
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

from ..errors import BatchscopeError, ConfigError, check_positive_int
from ..tasks import Task, load_task
from ..train import Callback, HistoryPoint, TrainConfig, TrainContext, train
from . import growth, recommend as rec
from .projection import Projection, loss_at_metric, project_examples

MIN_STEPS = 30            # fewer steps give too few per-step noise estimates for 6 windows
MAX_STEPS = 3000          # the measuring run never trains longer than this
STALL_EXAMPLES = 20       # x the batch x MIN_STEPS: give up when no progress toward the target by then


class FindError(BatchscopeError):
    """The measurement could not support a recommendation; the message says why and what to change."""

    @classmethod
    def keeping(cls, partial: dict, message: str) -> "FindError":
        error = cls(message)
        error.partial = dict(partial)
        return error


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
    recommendation: rec.Recommendation
    profile: object                      # HardwareProfile
    measuring: dict                      # what the measuring run did and cost
    noise_steps: dict                    # per-step loss, |G|^2, tr(Sigma) behind the fit (for plots)
    growth: dict
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        from ..report.jsonio import to_jsonable

        return {**to_jsonable(self.recommendation),
                "profile": to_jsonable(self.profile), "measuring": self.measuring,
                "noise_steps": self.noise_steps, "growth": self.growth, "cost_seconds": self.seconds}


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


def find(task: "Task | str", *, device: str = "cpu", objective: str = "balanced", budget: float = 0.05,
         profile=None, max_batch: Optional[int] = None, devices: int = 1, ref_batch: Optional[int] = None,
         ref_lr: Optional[float] = None, memory_budget=None, seed: int = 0, amp: bool = False,
         n_windows: int = 6, callbacks=(), cluster=None, gamma: float = 1.0) -> FindResult:
    """Measure and recommend. ``callbacks`` go to the measuring run (a progress bar, for instance).

    ``devices`` > 1: gradients are all-reduced over ``cluster`` (:class:`~batchscope.plan.comm.Cluster`;
    default :data:`~batchscope.plan.comm.DEFAULT_CLUSTER`) with overlap ``gamma``, as `plan` models it.

    ``memory_budget``: bytes or a string such as "2GiB" or "40%" (see :func:`profile_hardware`).
    A failure after the hardware was profiled carries what was measured in ``error.partial``.
    """
    task = load_task(task)
    t0 = time.perf_counter()
    if profile is None:
        _validate(task, objective, budget, devices, max_batch, ref_batch)
        from ..hardware import profile_hardware

        profile = profile_hardware(task, device=device, memory_budget=memory_budget, max_batch=max_batch, amp=amp)
    else:
        check_profile(profile, task, device)
    seconds = {"profile": time.perf_counter() - t0}
    try:
        return _measure_and_recommend(task, profile, seconds, device=device, objective=objective, budget=budget,
                                      max_batch=max_batch, devices=devices, ref_batch=ref_batch, ref_lr=ref_lr,
                                      seed=seed, amp=amp, n_windows=n_windows, callbacks=callbacks,
                                      sync=sync_constraints(task, devices, cluster, gamma))
    except BatchscopeError as e:
        e.partial = {"profile": profile.to_dict(), **getattr(e, "partial", {})}
        raise


def _validate(task: Task, objective: str, budget: float, devices: int, max_batch: Optional[int],
              ref_batch: Optional[int]) -> int:
    if objective not in rec.OBJECTIVES:
        raise ConfigError(f"The 'objective' parameter must be one of {', '.join(rec.OBJECTIVES)}. Got {objective!r} instead.")
    if not (0 < budget <= 1):
        raise ConfigError(f"The 'budget' parameter must be a fraction in (0, 1]. Got {budget!r} instead.")
    check_positive_int("devices", devices)
    if max_batch is not None:
        check_positive_int("max_batch", max_batch)
    b_ref = ref_batch or task.reference_batch
    check_positive_int("ref_batch", b_ref)
    if b_ref < 8 or b_ref > task.n_train // 4:
        raise ConfigError(f"the measuring batch {b_ref} must be at least 8 (eight micro-batches) and at most "
                          f"a quarter of the training set ({task.n_train // 4}); pass --ref-batch")
    return b_ref


def _measure_and_recommend(task: Task, profile, timings: dict, *, device: str, objective: str, budget: float,
                           max_batch: Optional[int], devices: int, ref_batch: Optional[int],
                           ref_lr: Optional[float], seed: int, amp: bool, n_windows: int, callbacks,
                           sync: Optional[dict] = None) -> FindResult:
    from ..noise import NoiseScaleMonitor

    b_ref = _validate(task, objective, budget, devices, max_batch, ref_batch)
    lr_ref = ref_lr if ref_lr is not None else task.lr

    # 2. the measuring run (1., the hardware, is done by the caller)
    t0 = time.perf_counter()
    # eight micro-batches per step: the two-batch estimate of tr(Sigma) averages over all eight
    micro = max(1, b_ref // 8)
    b_ref = micro * (b_ref // micro)
    # The raw gradient's noise scale, for Adam too: the preconditioned variant needs far longer runs
    # than a 5% budget before its interval closes (benchmarks/results/noise_trajectory.json).
    monitor = NoiseScaleMonitor()
    stop = BudgetStop(task, budget, MIN_STEPS, STALL_EXAMPLES * MIN_STEPS * b_ref)
    cfg = TrainConfig(batch_size=b_ref, micro_batch=micro, lr=lr_ref, steps=MAX_STEPS, eval_every=5,
                      eval_examples=1024, seed=seed, device=device, amp=amp)
    try:
        run = train(task, cfg, [monitor, stop, *callbacks])
    except BatchscopeError as e:
        e.partial = {"measuring_noise": [r._asdict() for r in monitor.raw]}
        raise
    timings["measuring"] = time.perf_counter() - t0
    kept = {"measuring_history": [p.__dict__ for p in run.history],
            "measuring_noise": [r._asdict() for r in monitor.raw]}
    proj = stop.projection
    if run.stopped_because == "no progress toward the target" or not math.isfinite(proj.examples):
        raise FindError.keeping(
            kept,
            f"the measuring run made no progress toward the target {task.target.describe(task.metric_name)} "
            f"in {run.steps} steps ({run.examples:,} examples; progress {proj.progress:+.2f}); check the target, "
            f"the reference learning rate ({lr_ref:g}) or raise --budget")
    if run.stopped_because == "step limit":
        raise FindError.keeping(
            kept,
            f"the target {task.target.describe(task.metric_name)} looks out of reach: after {run.steps} steps "
            f"({run.examples:,} examples) progress toward it is {proj.progress:.0%} and the projected run "
            f"({proj.examples:,.0f} examples) is too long to measure; check the target or the learning rate")
    used = run.examples / proj.examples
    if budget * proj.examples < b_ref:
        raise FindError.keeping(
            kept,
            f"a budget of {budget:.3%} of the projected {proj.examples:,.0f} examples to the target is "
            f"{budget * proj.examples:,.0f} examples, less than one step of batch {b_ref}: nothing can be measured "
            f"within it; raise --budget to at least {used:.1%} (what the {run.steps}-step measurement used)")

    # 3. noise scale against the loss
    raw = [(loss, g2, tr) for (_, loss, g2, tr) in monitor.raw if all(map(math.isfinite, (loss, g2, tr)))]
    if len(raw) < MIN_STEPS // 2:
        raise FindError.keeping(kept, f"only {len(raw)} finite noise estimates from the measuring run; raise --budget")
    losses, g2s, traces = (np.array(col) for col in zip(*raw))
    n_windows = max(3, min(n_windows, len(raw) // 10))  # at least ten steps behind each window
    try:
        loss_target, loss_how = target_training_loss(task, run.history)
    except FindError as e:
        raise FindError.keeping(kept, str(e)) from e
    start_loss = float(np.mean(losses[: max(1, len(losses) // n_windows)]))
    try:
        fit, at_target = growth.predict_at_loss(losses, g2s, traces, loss_target, n_windows, seed=seed)
        boots = growth.bootstrap_fits(losses, g2s, traces, n_windows, seed=seed + 1)
    except ValueError as e:
        raise FindError.keeping(kept, f"the noise scale could not be fitted: {e}; raise --budget") from e
    end_loss = min(loss_target, start_loss)
    b_noise = growth.path_average(fit, start_loss, end_loss)
    low, high = growth.interval([growth.path_average(b, start_loss, end_loss) for b in boots], 0.9)

    # 4. the recommendation
    ceiling = profile.max_batch if getattr(profile, "limited_by", "memory") == "memory" else None
    cons = rec.Constraints(n_train=task.n_train, memory_ceiling=ceiling, max_batch=max_batch, devices=devices,
                           **(sync or {}))
    inp = rec.Inputs(alpha=profile.alpha, beta=profile.beta, b_noise=b_noise, b_noise_low=low, b_noise_high=high,
                     b_ref=b_ref, steps_ref=proj.examples / b_ref, lr_ref=lr_ref, optimizer=task.optimizer,
                     measured=tuple((p.batch, p.seconds) for p in profile.points))
    best, cands, lr = rec.recommend(inp, cons, objective)
    levels = list(np.exp(np.linspace(math.log(start_loss), math.log(end_loss), 6)))
    schedule = rec.growth_schedule(fit.predict, levels, inp, cons, objective)
    fastest = min(cands, key=lambda x: x.seconds)

    caveats = [
        "B_noise is taken as the simple noise scale tr(Sigma)/|G|^2 (McCandlish et al. 2018); the two agree when "
        "the Hessian is close to a multiple of the identity, and can differ by a few times otherwise.",
        f"the interval covers the sampling noise of the gradient statistics ({len(raw)} steps), not a wrong "
        "functional form of the growth law or of the run-length projection.",
    ]
    if at_target.extrapolation > 1.5:
        caveats.append(f"B_crit at the target is extrapolated {at_target.extrapolation:.1f}x beyond the losses "
                       "measured; grow the batch by the schedule and re-measure with the monitor as training goes.")
    if task.optimizer != "sgd":
        caveats.append(f"{task.optimizer} is adaptive: the noise scale is measured on the raw gradient, which "
                       "orders batch sizes the same way but is not the noise of the preconditioned step.")
    if used > budget * 1.05 and run.steps <= MIN_STEPS + cfg.eval_every:
        caveats.append(f"the measuring run used {used:.1%} of the projected run, more than the {budget:.0%} budget: "
                       f"the noise measurement needs at least {MIN_STEPS} steps and this run is short.")
    elif used > budget * 1.05:
        caveats.append(f"the measuring run used {used:.1%} of the projected run ({budget:.0%} budget): it stops at "
                       f"the first evaluation (every {cfg.eval_every} steps) past the budget, and the projection "
                       "moved while it ran.")
    if fit.constant:
        caveats.append("too few usable noise windows to fit a growth law; the noise scale was taken as constant.")
    if fit.slope > 0:
        caveats.append("the measured noise scale fell as the loss fell, against the usual pattern; the growth "
                       "schedule is then flat or shrinking.")
    constraints = [f"data set: at most {task.n_train:,} examples per batch"]
    if ceiling is not None:
        constraints.append(f"memory: at most {ceiling:,} examples per pass on one device (beyond: accumulation)")
    if max_batch:
        constraints.append(f"--max-batch {max_batch}")
    if devices > 1:
        constraints.append(f"{devices} devices: global batch = micro-batch x accumulation x {devices}; "
                           f"{cons.grad_bytes / 2**20:.3g} MiB of gradients all-reduced per step, "
                           f"{cons.cluster.describe()}, overlap gamma {cons.gamma:g}")

    recommendation = rec.Recommendation(
        objective=objective, batch_size=best.batch_size, micro_batch=best.micro_batch,
        accumulation=best.accumulation, devices=devices, lr=lr.lr, lr_rule=lr.rule, lr_why=lr.why,
        warmup_steps=lr.warmup_steps,
        b_noise={"value": b_noise, "low": low, "high": high, "level": 0.9,
                 "how": f"power law of B_simple in the training loss, averaged over the path from loss "
                        f"{start_loss:.3g} to {end_loss:.3g}; 90% bootstrap interval"},
        b_crit_at_target={"value": at_target.value, "low": at_target.low, "high": at_target.high,
                          "loss": loss_target, "how": loss_how, "extrapolation": at_target.extrapolation},
        predicted={"steps": best.steps, "examples": best.examples, "seconds": best.seconds,
                   "relative_time": best.relative_time, "fastest_batch": fastest.batch_size},
        schedule=schedule, candidates=[c.__dict__ for c in cands],
        robustness=rec.regret_if_wrong(inp, cons, objective), constraints=constraints, caveats=caveats,
        evidence={"alpha": profile.alpha, "beta": profile.beta, "memory_ceiling": profile.max_batch,
                  "projected_examples_at_ref": proj.examples, "ref_batch": b_ref, "ref_lr": lr_ref,
                  "growth_slope": fit.slope, "measuring_steps": run.steps},
    )
    measuring = {"batch_size": b_ref, "micro_batch": micro, "lr": lr_ref, "steps": run.steps,
                 "examples": run.examples, "seconds": run.seconds, "stopped_because": run.stopped_because,
                 "projected_examples_to_target": proj.examples, "progress": proj.progress,
                 "fraction_of_projected_run": run.examples / proj.examples,
                 "history": [p.__dict__ for p in run.history]}
    return FindResult(
        recommendation=recommendation, profile=profile, measuring=measuring,
        noise_steps={"loss": losses.tolist(), "g2": g2s.tolist(), "trace": traces.tolist()},
        growth={"intercept": fit.intercept, "slope": fit.slope, "constant": fit.constant,
                "windows": [{"loss": w.loss, "b_simple": w.b_simple, "steps": w.n} for w in fit.windows],
                "start_loss": start_loss, "target_loss": loss_target},
        seconds=timings,
    )


def sync_constraints(task: Task, devices: int, cluster, gamma: float) -> dict:
    """The gradient all-reduce of ``devices`` data-parallel workers, as recommend.Constraints fields."""
    if devices <= 1:
        return {}
    from .comm import DEFAULT_CLUSTER
    from .devices import gradient_bytes

    return {"cluster": cluster or DEFAULT_CLUSTER, "grad_bytes": gradient_bytes(task.make_model()), "gamma": gamma}


def check_profile(profile, task: Task, device: str) -> None:
    """Refuse a saved hardware profile measured for another task or another kind of device."""
    profile.check_task(task)
    want = "cuda" if device.startswith("cuda") else device
    have = profile.device.get("type") if isinstance(profile.device, dict) else str(profile.device)
    if want != "auto" and have != want:
        raise ConfigError(f"the profile was measured on {have!r}, this run is on {want!r}; "
                          f"profile on this device or pass --device {have}")
