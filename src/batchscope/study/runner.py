"""Run the study: each :class:`RunSpec` through :func:`batchscope.train.train` with the study's
measurement callbacks, in this process or in ``workers`` spawned processes, saving every finished
run to the store before starting to wait for the next.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import ConfigError, DivergedError
from ..hardware.processes import end_children, sigint_ignored_in_children
from ..serialize import from_dict
from ..tasks import Target, Task, load_task
from ..train import TrainConfig, crossing_step, resolve_device, total_steps, train
from .measure import CurveRecorder, GradNormProbe, GradNormStats
from .plan import RunSpec, StudyPlan
from .store import ResultStore, StudyError, StudyLock


@dataclass
class RunRecord:
    """Everything one run measured. ``status`` is 'ok' or 'diverged' (a diverged run is a result too)."""

    key: str
    spec: RunSpec
    status: str
    steps: int
    examples: int
    seconds: float
    initial_loss: float
    curve: list                      # one dict per evaluation (see CurveRecorder)
    step_losses: list                # the mini-batch loss of every optimizer step
    final: dict                      # train/val loss and metric on the whole splits, and the gap
    distance: dict                   # final |w - w0| per layer and 'total'
    cosine: dict                     # final cos(w, w0) per layer and 'total'
    grad_norms: dict = field(default_factory=dict)   # 'early'/'late' -> GradNormStats
    target_step: Optional[float] = None              # interpolated between evaluations
    target_examples: Optional[float] = None
    message: str = ""
    wall_seconds: float = 0.0
    device: str = ""                                 # where it ran: cpu, cuda:1, and the Ray node when on Ray
    failures: list = field(default_factory=list)     # why earlier attempts of this run failed
    target_seconds: Optional[float] = None           # training seconds to the target, interpolated like the step
    # adaptive runs: 'path' (step, batch, accumulation, lr at the start and at each decision),
    # 'batch_runs' ([batch, steps] in order, for time = sum of t(B) per step), 'final_batch', 'measure_every'
    adaptive: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spec"] = self.spec.to_dict()
        d["grad_norms"] = {k: v.to_dict() for k, v in self.grad_norms.items()}
        d["step_losses"] = [float(f"{x:.5g}") for x in self.step_losses]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        grad_norms = {k: from_dict(GradNormStats, v) for k, v in d.get("grad_norms", {}).items()}
        return replace(from_dict(cls, {**d, "grad_norms": {}}), grad_norms=grad_norms)


def study_target(task: Task, plan: StudyPlan) -> Target:
    t = task.target
    return t if plan.target is None else Target(t.kind, plan.target, t.split)


def execute_run(task: Task, plan: StudyPlan, spec: RunSpec, device: Optional[str] = None) -> RunRecord:
    """One run of the study with all its measurements, on ``device`` (default: the plan's)."""
    cfg = TrainConfig(batch_size=spec.batch_size, lr=spec.lr, optimizer=spec.optimizer, steps=spec.steps,
                      epochs=spec.epochs, warmup_steps=spec.warmup_steps, seed=spec.seed, device=device or plan.device)
    total = total_steps(task, cfg, spec.batch_size)
    cfg.eval_every = max(1, total // plan.evals_per_run)
    if spec.adaptive:
        cfg.adaptive, cfg.eval_every = adaptive_setup(task, plan, spec)
    recorder = CurveRecorder(plan.train_eval_examples)
    callbacks = [recorder]
    probe = None
    if spec.grad_norms and plan.grad_norm_batches:
        probe = GradNormProbe(plan.grad_norm_batches, round(plan.grad_norm_early * total), seed=spec.seed)
        callbacks.append(probe)
    t0 = time.perf_counter()
    status, message, adaptive = "ok", "", {}
    try:
        result = train(task, cfg, callbacks)
        steps, examples, seconds = result.steps, result.examples, result.seconds
        model = result.model
        adaptive = batch_path(result.adaptive) if spec.adaptive else {}
    except DivergedError as e:
        status, message = "diverged", str(e)
        steps = len(recorder.step_losses)
        examples = recorder.curve[-1]["examples"] if spec.adaptive and recorder.curve else steps * spec.batch_size
        seconds = float("nan")
        model = None
    if model is None:
        final = {"train_loss": None, "train_metric": None, "val_loss": None, "val_metric": None, "gap": None}
        distance, cosine = {}, {}
        if recorder.curve:  # the last evaluation before the blow-up is the run's last finite state
            last = recorder.curve[-1]
            final = {"train_loss": last["train_loss"], "train_metric": last["train_metric"],
                     "val_loss": last["eval_loss"], "val_metric": last["eval_metric"], "gap": None}
            distance = {"total": last["distance"], **last["layer_distance"]}
    else:
        final, distance, cosine = recorder.final, recorder.distance, recorder.cosine
    target = study_target(task, plan)
    value = "eval_metric" if target.kind == "metric" else "eval_loss"
    def cross(x: str) -> Optional[float]:   # the target crossing along the step, examples or seconds axis
        return crossing_step([(p[x], p[value]) for p in recorder.curve], target.value, target.kind == "metric")

    initial = recorder.curve[0]["train_loss"] if recorder.curve else float("nan")
    return RunRecord(
        key=spec.key, spec=spec, status=status, steps=steps, examples=examples, seconds=seconds,
        initial_loss=initial, curve=recorder.curve, step_losses=recorder.step_losses, final=final,
        distance=distance, cosine=cosine, grad_norms=probe.stats if probe else {},
        target_step=cross("step"), target_examples=cross("examples"), target_seconds=cross("seconds"),
        message=message, wall_seconds=time.perf_counter() - t0, device=str(resolve_device(cfg.device)),
        adaptive=adaptive,
    )


def adaptive_setup(task: Task, plan: StudyPlan, spec: RunSpec) -> tuple:
    """(AdaptiveConfig, eval_every in steps at the starting batch) of an adaptive run.

    The batch starts at the study's smallest batch and may grow up to its largest (no shrinking), so
    every batch it uses lies inside the range whose step time the fixed runs measured. Evaluations
    are spaced in examples (the loop counts ``eval_every`` steps at the starting batch): with an
    epochs budget ``evals_per_run`` over the run, as for the fixed runs; with a steps budget the
    examples are not known in advance, so the spacing assumes the batch at the geometric mean of
    the smallest and largest batch.
    """
    from ..adapt import AdaptiveConfig
    from ..hardware import HardwareProfile

    profile = HardwareProfile.from_dict(plan.profile) if plan.profile is not None else None
    b0, b_max = spec.batch_size, plan.batch_sizes[-1]
    examples = (spec.epochs * task.n_train if spec.epochs is not None
                else spec.steps * math.sqrt(b0 * b_max))
    every = max(1, round(examples / b0 / plan.evals_per_run))
    return AdaptiveConfig(profile=profile, max_batch=b_max, min_batch=b0), every


def batch_path(summary: dict) -> dict:
    """What an adaptive run stores: the decisions' path, the per-step batches run-length coded, the final batch."""
    steps = summary["steps"]
    runs: list = []
    for b in steps["batch_size"]:
        if runs and runs[-1][0] == b:
            runs[-1][1] += 1
        else:
            runs.append([b, 1])
    lrs = steps["lr"]
    start = ([{"step": 0, "batch_size": steps["batch_size"][0], "accumulation": steps["accumulation"][0],
               "lr": lrs[0], "changed": False}] if lrs else [])
    path = start + [{"step": d["step"], "batch_size": d["batch_size"], "accumulation": d["accumulation"],
                     "lr": lrs[min(d["step"], len(lrs) - 1)], "changed": d["changed"]} for d in summary["decisions"]]
    return {"path": path, "batch_runs": runs, "final_batch": steps["batch_size"][-1] if runs else None,
            "measure_every": summary["measure_every"], "profile": summary["profile"]}


_TASKS: dict = {}


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: leave as soon as the study process is gone (even after SIGKILL).

    An orphaned worker would otherwise finish its run for nobody and keep a CPU busy.
    """
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker(task_spec: str, plan_dict: dict, spec_dict: dict, threads: int, device: Optional[str] = None) -> dict:
    """Entry point in a spawned worker: load the task once per process, run, return plain data."""
    torch.set_num_threads(threads)
    if task_spec not in _TASKS:
        _TASKS[task_spec] = load_task(task_spec)
    spec = RunSpec.from_dict(spec_dict)
    return execute_run(_TASKS[task_spec], StudyPlan.from_dict(plan_dict), spec, device).to_dict()


@dataclass(frozen=True)
class StudySummary:
    directory: str
    total: int
    done_before: int
    ran: int
    diverged: int
    seconds: float
    failed: int = 0              # runs that failed twice (on Ray); a resume tries them again


def prepare(directory: "str | Path", plan: Optional[StudyPlan], resume: bool) -> tuple[StudyPlan, Task]:
    """Check the directory against what was asked: a new study needs a fresh directory, a resume an old one."""
    directory = Path(directory)
    has = ResultStore.exists(directory)
    if resume:
        if not has:
            raise StudyError(f"nothing to resume in {directory}: it holds no study.db; start a study there with "
                             f"`batchscope study --dir {directory} ...`")
        with ResultStore(directory) as store:
            stored = store.get_meta("plan")
        if stored is None:
            raise StudyError(f"{directory}/study.db has no plan; it was not written by `batchscope study`")
        plan = StudyPlan.from_dict(stored)
    elif has:
        raise StudyError(f"{directory} already holds a study; continue it with `batchscope study --resume "
                         f"{directory}` or choose another --dir")
    if plan is None:
        raise ConfigError("say what to study (a StudyPlan) or pass resume=True to continue the study in the directory")
    task = load_task(plan.task)
    return plan.resolved(task), task


def run_study(directory: "str | Path", plan: Optional[StudyPlan] = None, *, resume: bool = False,
              workers: int = 1, task: Optional[Task] = None, devices: Optional[list[str]] = None,
              ray: Optional[str] = None,
              on_run: Optional[Callable[[RunRecord, int, int], None]] = None,
              on_start: Optional[Callable[[int, int], None]] = None,
              on_noise: Optional[Callable[[], None]] = None) -> StudySummary:
    """Run every missing run of the study in ``directory``; each is saved the moment it finishes.

    ``plan`` starts a new study (the directory must not hold one); ``resume=True`` reads the plan
    from the directory. ``task`` may pass the Task object when ``plan.task`` names it only for the
    record (one worker only: spawned workers load the task by name). After the runs, B_simple is
    measured once (``plan.noise_steps`` steps) and stored beside them; a resume measures it if missing.
    ``devices`` runs one worker per device (:func:`~batchscope.study.placement.resolve_devices`);
    ``ray`` runs each run as a Ray task ("" or "auto": a local or the running Ray, else the address).
    """
    if workers < 1:
        raise ConfigError(f"The 'workers' parameter must be a positive integer. Got {workers!r} instead.")
    directory = Path(directory)
    t_start = time.perf_counter()
    with StudyLock(directory):
        if task is not None and plan is not None:
            if workers > 1 or devices or ray is not None:
                raise ConfigError("a Task object cannot be sent to worker processes; pass the task by name "
                                  "(built-in, file.py:function or module:function) or use workers=1")
            if ResultStore.exists(directory) and not resume:
                raise StudyError(f"{directory} already holds a study; resume it or choose another directory")
            plan = plan.resolved(task)
        else:
            plan, task = prepare(directory, plan, resume)
        plan = with_profile(plan, task)
        specs = plan.expand(task)
        with ResultStore(directory) as store:
            if store.get_meta("plan") is None:
                store.set_meta("plan", plan.to_dict())
                store.set_meta("task", task.facts())
            done = store.keys()
            todo = [s for s in specs if s.key not in done]
            if on_start:
                on_start(len(specs), len(specs) - len(todo))
            ran = diverged = failed = 0

            def save(record: RunRecord) -> None:
                nonlocal ran, diverged, failed
                store.save_run(record.key, record.status, record.to_dict())
                ran += record.status in ("ok", "diverged")   # 'retrying' and 'failed' are not done
                diverged += record.status == "diverged"
                failed += record.status == "failed"
                if on_run:
                    on_run(record, len(specs) - len(todo) + ran, len(specs))

            _dispatch(task, plan, todo, save, workers, devices, ray)
            if plan.noise_steps and store.get_meta("noise") is None:
                from .noise_ref import measure_study_noise

                if on_noise:
                    on_noise()
                store.set_meta("noise", measure_study_noise(plan, task))
    return StudySummary(str(directory), len(specs), len(specs) - len(todo), ran, diverged,
                        time.perf_counter() - t_start, failed)


def with_profile(plan: StudyPlan, task: Task) -> StudyPlan:
    """The plan with the hardware profile its adaptive runs decide with, measured here once if it has none.

    Measured in the driver, not in each run: runs on other devices, nodes or a later resume then
    pick batches from the same step-time curve, so the adaptive runs differ only by seed. A profile
    given with the plan (``--profile``) is checked to belong to the task.
    """
    if not plan.adaptive:
        return plan
    from ..hardware import HardwareProfile, profile_hardware

    if plan.profile is not None:
        HardwareProfile.from_dict(plan.profile).check_task(task)
        return plan
    profile = profile_hardware(task, device=plan.device, max_batch=plan.batch_sizes[-1])
    return replace(plan, profile=profile.to_dict())


def _dispatch(task: Task, plan: StudyPlan, todo: list[RunSpec], save: Callable[[RunRecord], None], workers: int,
              devices: Optional[list[str]], ray: Optional[str]) -> None:
    """Run ``todo`` here, in local worker processes, one per device, or on Ray; ``save`` each record."""
    if ray is not None:
        from .ray_runs import run_on_ray

        run_on_ray(plan, todo, save, ray)
    elif devices:
        from .workers import run_on_devices

        run_on_devices(plan, todo, devices, save)
    elif workers == 1:
        for spec in todo:
            save(execute_run(task, plan, spec))
    else:
        _run_parallel(plan, todo, workers, save)


def _run_parallel(plan: StudyPlan, todo: list[RunSpec], workers: int, save: Callable[[RunRecord], None]) -> None:
    import multiprocessing as mp

    # Spawned, not forked: a forked child would inherit the lock's file descriptor and keep the
    # directory locked after this process died.
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")
    plan_dict = plan.to_dict()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_exit_with_parent,
                               initargs=(os.getpid(),))
    started: list = []        # the workers: they ignore Ctrl-C (no traceback from each), so this process ends them
    ok = False
    try:
        with sigint_ignored_in_children(started):   # the pool starts its processes in submit()
            pending = {pool.submit(_worker, plan.task, plan_dict, s.to_dict(), threads) for s in todo}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                save(RunRecord.from_dict(f.result()))
        ok = True
    finally:
        if not ok:   # the runs in flight are of no use now; the pool then sees its workers gone and fails the rest
            end_children(started)
        pool.shutdown(wait=True, cancel_futures=ok)


@dataclass
class SavedStudy:
    plan: StudyPlan
    facts: dict
    records: list[RunRecord]
    noise: Optional[dict]
    damaged: list[str]           # keys of runs whose stored record cannot be read (a resume runs them again)


def load_study(directory: "str | Path") -> SavedStudy:
    """Everything a study directory holds, opened read-only: the file is not changed by reading it."""
    directory = Path(directory)
    if not ResultStore.exists(directory):
        raise StudyError(f"{directory} holds no study.db; run `batchscope study --dir {directory} ...` first")
    with ResultStore(directory, readonly=True) as store:
        plan = store.get_meta("plan")
        if plan is None:
            raise StudyError(f"{directory}/study.db has no plan; it was not written by `batchscope study`")
        facts = store.get_meta("task") or {}
        noise = store.get_meta("noise")
        records = []
        # finished runs only: a run that failed (on Ray) has no measurements to report
        for r in store.records(statuses=("ok", "diverged")):
            try:
                records.append(RunRecord.from_dict(r))
            except (KeyError, TypeError, ValueError):
                store.damaged.append(str(r.get("key", "?")))
        damaged = list(store.damaged)
    try:
        return SavedStudy(StudyPlan.from_dict(plan), facts, records, noise, damaged)
    except TypeError as e:
        raise StudyError(f"the plan stored in {directory}/study.db is damaged ({e}); start the study again in a "
                         "new directory") from None
