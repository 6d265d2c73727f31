"""The anchors' schedules on the long tier, trained for real: adaptive, find, a batch warm-up, Seesaw.

Every arm is judged against the long tier's ground truth (long_ground_truth.json, long_tier.py) by
long_judge.py, under each clock (clocks.py: this machine, the GPU-shaped stand-in, 8 devices). Every
run trains for real on this CPU, seeds 0 and 1, to the ground truth's target, evaluated every E
examples, E = the ground truth's own cadence at batch 32 (its seed-0 run at the best rate there:
``eval_every`` x 32 examples; a fixed run at batch B evaluates every E / B steps), the crossing
interpolated between evaluations as the ground truth's steps are. The arms, exactly:

- ``adaptive``, per clock: ``TrainConfig(batch_size=32, lr=<the ground truth's best rate at 32>,
  adaptive=AdaptiveConfig(profile=long_profiles/<task>.<clock>.json, max_batch=4096))`` to the
  target. Its path: the per-step batches as segments, the step in which the crossing falls charged
  for the part of it needed (as adaptive_vs_fixed.adaptive_seconds does). A measured step (split in
  two micro-batches, the monitor's hooks on) is charged, on this machine's clock, at clock(B) x r(B),
  r(B) = measured / plain step time on this machine at B from one interleaved timing pass after the
  runs (adaptive_vs_fixed.timing_pass, the short suite's own charge); on the GPU-shaped clock as two
  passes, 2 t(B/2) (every pass pays the fixed 4 ms again); across 8 devices as a plain step (the
  per-device gradients are the measurement). See :func:`measured_factor`. The measuring cadence
  itself is the library's, set from this machine's step times as the run goes.
- ``find``, per clock: ``find(task, profile=<that clock's profile>, max_batch=4096, seed=seed,
  ref_lr=<the ground truth's best rate at the reference batch 32>)`` -- the rate adaptive starts
  from, and what the short suite's run.py gives find -- then a fixed run at its recommendation
  (batch, rate, warm-up) to the target with the same seed. Two arms in the judge: ``find`` (the
  training run alone) and ``find (incl. measuring)`` (find's measuring run, its steps at its batch
  in its micro-batches, charged by :func:`measured_factor`, then the training run). The record keeps
  the recommendation and the measuring run's steps, examples and seconds on this machine, and (runs
  stored from this version on) the real steps timed after it, the branch check's cost (branches,
  steps, examples, seconds) and the λ_max probe's examples; older records lack these keys.
- ``warmup`` (a batch warm-up as OLMo's: x2 at fixed example counts): batch 32 for 500 steps
  (16,000 examples), then the batch doubles each time the examples seen double (at 16k, 32k, 64k,
  ...: 250 steps per stage), up to the clock's best fixed batch in the ground truth (a cap chosen
  with hindsight; clocks with the same cap share the runs); the library's ``batch_warmup()``
  doubling points, at each stage the ground truth's best rate at that batch (hindsight-tuned
  rates, a stronger anchor than the rule's rates).
- ``seesaw``: "double the batch and scale the rate by 1/sqrt(2) wherever a step-decay schedule would
  halve it". The step decay is the classic two-drop one, halving at 50% and 75% (SEESAW_DECAY) of
  the examples its base run takes: the base run is the ground truth's best fixed run at a quarter
  of the cap (so the two doublings end at the clock's best fixed batch), at its best rate. The
  library's ``seesaw()`` there: x ``doubling_gain(optimizer) / 2`` at each doubling (1/sqrt(2)
  Adam-type, 1 SGD). Seesaw doubling from 32 at the warm-up's points instead (tried first) is a
  step decay halving five times in 1,500 steps: on the noisy Adam task one seed took 22,379 steps,
  the other did not reach the target in 87,860.

A run stops at STEP_CAP x the slowest ground-truth seed's steps at batch 32 (no arm that only grows
the batch from 32 should need more) or MAX_SECONDS of training, and is then "not reached". Every
finished run is written to benchmarks/suite/long_anchor_runs.json at once, keyed
arm|task|variant|seed (variant: the clock, or the schedule's start and cap), so a killed run resumes:

    OMP_NUM_THREADS=1 nohup nice -n 15 env PYTHONPATH=src python benchmarks/suite/long_anchors.py \\
        [--tasks a,b] [--arms adaptive,find,warmup,seesaw] [--clocks cpu,gpu,dp8] [--seeds 0,1] [--store PATH]
    PYTHONPATH=src python benchmarks/suite/long_anchors.py --progress
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import long_judge as J  # noqa: E402
from adaptive_vs_fixed import timing_pass  # noqa: E402
from common import EVALS_BEFORE_TARGET, geomean, pin_malloc, read_json, run_to_target, write_json  # noqa: E402
from tasks import LONG  # noqa: E402

from batchscope import BatchscopeError, DivergedError, TrainConfig, train  # noqa: E402
from batchscope.adapt import AdaptiveConfig, BatchSchedule, batch_warmup, seesaw  # noqa: E402
from batchscope.hardware import HardwareProfile  # noqa: E402
from batchscope.plan.find import find  # noqa: E402

RUNS = J.ANCHOR_RUNS
ARMS = ("adaptive", "find", "warmup", "seesaw")
CLOCKS = ("cpu", "gpu", "dp8")
SEEDS = (0, 1)
START_BATCH = 32
START_STEPS = 500        # steps at the start batch before the first doubling (16,000 examples)
# Seesaw's base schedule: a step decay halving the rate at 50% and 75% of the base run (the classic
# two-drop schedule); Seesaw doubles the batch there instead, from two doublings below its cap.
SEESAW_DECAY = (0.5, 0.75)
MAX_BATCH = 4096
STEP_CAP = 2.0           # x the slowest ground-truth seed's steps at the start batch
MAX_SECONDS = 1800.0     # training seconds of one run, as the ground truth's
TIMING_ROUNDS = 5


@dataclass
class Setting:
    """What every arm of one task shares: the task, its ground truth, the schedule and the limits."""

    task: object
    entry: dict
    b0: int = START_BATCH
    steps0: int = START_STEPS
    max_batch: int = MAX_BATCH
    step_cap: float = STEP_CAP
    max_seconds: float = MAX_SECONDS
    profiles: Path = J.PROFILES
    rounds: int = TIMING_ROUNDS

    def lr(self, batch: int) -> float:
        """The ground truth's best rate at ``batch``."""
        return self.entry["best_per_batch"][str(batch)]["lr"]

    @property
    def max_steps(self) -> int:
        return int(self.step_cap * max(s for s in self.entry["best_per_batch"][str(self.b0)]["steps"] if s))

    @property
    def eval_examples(self) -> int:
        """The ground truth's evaluation cadence at the start batch, in examples (its seed-0 run at the best rate)."""
        lr = self.lr(self.b0)
        same = [r for r in self.entry["runs"] if r["batch"] == self.b0 and r["seed"] == 0
                and math.isclose(r["lr"], lr, rel_tol=1e-9)]
        steps = geomean(self.entry["best_per_batch"][str(self.b0)]["steps"])
        return self.b0 * (same[0]["eval_every"] if same else max(1, int(steps // EVALS_BEFORE_TARGET)))

    def eval_every(self, batch: int) -> int:
        return max(1, round(self.eval_examples / batch))

    def config(self, seed: int, start: Optional[int] = None, **kw) -> TrainConfig:
        """A run from the start batch (or ``start``) at the best rate there, to the target, within the caps."""
        b = start or self.b0
        return TrainConfig(batch_size=b, lr=self.lr(b), seed=seed, until_target=True,
                           steps=self.max_steps, eval_every=self.eval_every(b), max_seconds=self.max_seconds,
                           **kw)


# ---- paths -------------------------------------------------------------------------------------

def segments(batches: list[int], target_step: Optional[float], measured: Optional[list] = None) -> Optional[list]:
    """A run's path to its crossing: runs of one batch as [steps, batch] (measured steps apart, as
    [steps, batch, 1]), the step the crossing falls in counted for the part of it needed."""
    if target_step is None:
        return None
    n = math.ceil(target_step)
    flags = [bool(m) for m in measured[:n]] if measured is not None else [False] * n
    weights = [1.0] * (n - 1) + [target_step - (n - 1)] if n else []
    runs: list[list] = []
    for b, m, w in zip(batches[:n], flags, weights):
        if not runs or runs[-1][0] != b:
            runs.append([b, 0.0, 0.0])
        runs[-1][2 if m else 1] += w
    out = []
    for b, plain, meas in runs:
        out += ([[plain, b]] if plain else []) + ([[meas, b, 1]] if meas else [])
    return out


def doubling_points(b0: int, steps0: int, cap: int) -> list[int]:
    """Examples at which the batch doubles: b0 x steps0, then each time the examples seen double, until ``cap``."""
    out, e, b = [], b0 * steps0, b0
    while b * 2 <= cap:
        out.append(e)
        e, b = e * 2, b * 2
    return out


def schedule_variant(s: Setting, cap: int, arm: str = "warmup") -> str:
    if arm == "seesaw":
        return f"{seesaw_start(s, cap)}-decay{'-'.join(f'{f:g}' for f in SEESAW_DECAY)}-cap{cap}"
    return f"{s.b0}x{s.steps0}-cap{cap}"


def seesaw_start(s: Setting, cap: int) -> int:
    """Seesaw's base batch: as many doublings below the cap as its step decay has halvings (never below b0)."""
    return max(s.b0, cap // 2 ** len(SEESAW_DECAY))


def seesaw_points(s: Setting, cap: int) -> list[int]:
    """Where the base run's step decay would halve the rate: SEESAW_DECAY of the examples the base batch's
    own fixed run takes to the target (the ground truth's geometric mean), one halving per doubling to the cap."""
    b = seesaw_start(s, cap)
    examples = b * geomean(s.entry["best_per_batch"][str(b)]["steps"])
    n = int(round(math.log2(cap / b)))
    return [int(f * examples) for f in SEESAW_DECAY[:n]]


def schedule_caps(task, entry: dict) -> dict[str, int]:
    """Per clock, the best fixed batch of the ground truth (hindsight): the schedules' largest batch."""
    cl = J.task_clocks(task, entry)
    return {k: J.best_fixed(entry, cl[k]) for k in CLOCKS}


def write_profile(s: Setting, clock: str) -> Path:
    """The clock as the task's hardware profile, as long_judge.py writes it (from the ground truth in use); a
    file that already says the same (all but its date) is left as it is."""
    s.profiles.mkdir(parents=True, exist_ok=True)
    path = s.profiles / f"{s.task.name}.{clock}.json"
    batches = [int(b) for b in s.entry["best_per_batch"]]
    J.save_profile(J.clock_profile(s.task, J.task_clocks(s.task, s.entry)[clock], batches), path)
    return path


# ---- the runs ----------------------------------------------------------------------------------

def outcome(r, batches: Optional[list] = None, measured: Optional[list] = None) -> dict:
    """What a finished run reached and its path; ``r`` None: it diverged."""
    if r is None:
        return {"reached": False, "diverged": True, "steps": None, "examples": None, "path": None}
    return {"reached": r.reached_target, "diverged": False, "steps": r.target_step, "examples": r.target_examples,
            "steps_run": r.steps, "train_seconds": r.seconds, "stopped": r.stopped_because,
            "path": segments(batches, r.target_step, measured) if r.reached_target else None}


def _train(task, cfg: TrainConfig, policy=None):
    try:
        return train(task, cfg, policy=policy)
    except DivergedError:
        return None


def schedule_policy(s: Setting, arm: str, cfg: TrainConfig, cap: int) -> BatchSchedule:
    """warmup: batch_warmup's doubling points at the ground truth's best rate per batch; seesaw: seesaw()."""
    if arm == "seesaw":
        return seesaw(s.task, cfg, halve_at=seesaw_points(s, cap))
    points = doubling_points(s.b0, s.steps0, cap)
    path = batch_warmup(s.task, cfg, double_at=points).points
    return BatchSchedule(s.task, cfg, [(p.examples, p.batch, s.lr(p.batch)) for p in path])


def schedule_run(s: Setting, arm: str, cap: int, seed: int) -> dict:
    cfg = s.config(seed, start=seesaw_start(s, cap) if arm == "seesaw" else None)
    policy = schedule_policy(s, arm, cfg, cap)
    r = _train(s.task, cfg, policy)
    return {"cap": cap, "breakpoints": [asdict(p) for p in policy.points], "eval_every": cfg.eval_every,
            "max_steps": cfg.steps, **outcome(r, r and r.adaptive["steps"]["batch_size"])}


def adaptive_run(s: Setting, clock: str, seed: int) -> dict:
    profile = write_profile(s, clock)
    cfg = s.config(seed, adaptive=AdaptiveConfig(profile=str(profile), max_batch=s.max_batch))
    r = _train(s.task, cfg)
    out = {"profile": profile.name, "lr0": cfg.lr, "max_batch": s.max_batch, "eval_every": cfg.eval_every,
           "max_steps": cfg.steps}
    if r is None:
        return {**out, **outcome(None)}
    a = r.adaptive["steps"]
    n = math.ceil(r.target_step or r.steps)
    moves = [[d["step"], d["batch_size"], round(d["b_crit"], 1)] for d in r.adaptive["decisions"] if d["changed"]]
    return {**out, **outcome(r, a["batch_size"], a["measured"]), "moves": moves,
            "final_batch": a["batch_size"][n - 1] if n else s.b0, "final_lr": a["lr"][n - 1] if n else cfg.lr,
            "measured_steps": sum(a["measured"][:n]), "measure_every": r.adaptive["measure_every"]}


def find_only(s: Setting, clock: str, seed: int) -> dict:
    """find on the clock's profile, as :func:`find_run` calls it, and what it cost; no training run.

    The record: the recommendation, the measuring run (its steps, examples and seconds at the budget stop),
    the real steps timed after it, the branch check's cost (``verification``: branches, steps, examples,
    this machine's seconds; verify.cost) and the λ_max probe's examples (``stability``); an ``error`` in
    place of all that where find refused."""
    task, profile = s.task, HardwareProfile.load(write_profile(s, clock))
    ref_lr = s.lr(task.reference_batch)
    t0 = time.perf_counter()
    try:
        res = find(task, profile=profile, max_batch=s.max_batch, seed=seed, ref_lr=ref_lr)
    except BatchscopeError as e:
        return {"ref_lr": ref_lr, "error": f"{type(e).__name__}: {e}"}
    find_seconds = time.perf_counter() - t0
    rec, m = res.recommendation, res.measuring
    return {"ref_lr": ref_lr, "find_seconds": find_seconds,
            "recommendation": {"batch": rec.batch_size, "lr": rec.lr, "warmup": rec.warmup_steps,
                               "micro_batch": rec.micro_batch, "b_crit": rec.b_crit["value"],
                               "b_crit_low": rec.b_crit["low"], "b_crit_high": rec.b_crit["high"],
                               "predicted_steps": rec.predicted["steps"]},
            "measuring": {"steps": m["steps"], "batch": m["batch_size"], "micro_batch": m["micro_batch"],
                          "examples": m["examples"], "seconds": m["seconds"]},
            "measuring_path": [[m["steps"], m["batch_size"]]],
            "timed_steps": {k: m.get("timed_steps", {}).get(k, 0) for k in ("steps", "examples", "seconds")},
            "verification": verification_cost(rec.verification),
            "stability": stability_cost(rec.evidence.get("stability") or {})}


def verification_cost(v: dict) -> dict:
    """The branch check's cost as find recorded it (verify.cost); zeros where it did not branch."""
    c = v.get("cost") or {}
    branches = v.get("branches") or []
    return {"enabled": bool(v.get("enabled")), "branches": c.get("branches", 0), "steps": c.get("steps", 0),
            "examples": c.get("examples", 0), "seconds": c.get("seconds", 0.0),
            "modelled_seconds": c.get("modelled_seconds", 0.0), "examples_per_branch": v.get("examples_per_branch"),
            "batches": [f["batch"] for f in branches], "labels": [f["label"] for f in branches],
            "winner": (v.get("winner") or {}).get("label"), "budget": v.get("budget")}


def stability_cost(st: dict) -> dict:
    """The λ_max probe: the training examples it ran on (0 where it did not run: an adaptive optimizer) and
    its Hessian-vector products."""
    return {"examples": st.get("examples", 0), "iterations": st.get("iterations", 0),
            "lambda_max": st.get("lambda_max"), "capped": bool(st.get("capped"))}


def find_run(s: Setting, clock: str, seed: int) -> dict:
    """find on the clock's profile (:func:`find_only`), then a fixed run at its recommendation (same seed)."""
    got = find_only(s, clock, seed)
    if "error" in got:
        return {**got, **outcome(None), "diverged": False}
    rec = got["recommendation"]
    run = run_to_target(s.task, rec["batch"], rec["lr"], seed=seed, warmup=rec["warmup"],
                        eval_every=s.eval_every(rec["batch"]), max_steps=s.max_steps, max_seconds=s.max_seconds)
    return {**got,
            "reached": run["reached"], "diverged": run["diverged"], "steps": run["steps"],
            "examples": run["examples"], "steps_run": run.get("steps_run"), "train_seconds": run.get("train_seconds"),
            "stopped": run.get("stopped"), "eval_every": run["eval_every"], "max_steps": s.max_steps,
            "path": [[run["steps"], rec["batch"]]] if run["reached"] else None}


# ---- the driver: every arm, clock and seed, resumable ------------------------------------------

def _line(key: str, rec: dict) -> str:
    what = (f"{rec['steps']:.1f} steps, {rec['examples']:,.0f} examples" if rec["reached"]
            else rec.get("error") or ("diverged" if rec["diverged"] else f"not reached ({rec.get('stopped')})"))
    batches = [seg[1] for seg in rec.get("path") or []]
    path = " -> ".join(str(b) for i, b in enumerate(batches) if i == 0 or b != batches[i - 1])
    extra = f"; find: B={rec['recommendation']['batch']} lr={rec['recommendation']['lr']:.3g}, measuring " \
            f"{rec['measuring']['steps']} steps" if rec.get("recommendation") else ""
    return f"  {key}: {what}{' via ' + path if path else ''}{extra} ({rec['wall']:.0f}s wall)"


def variants(s: Setting, arm: str, clocks) -> dict[str, str]:
    """Clock -> the variant its run is stored under (schedules: clocks with the same cap share one)."""
    if arm in ("adaptive", "find"):
        return {k: k for k in clocks}
    caps = schedule_caps(s.task, s.entry)
    return {k: schedule_variant(s, caps[k], arm) for k in clocks}


def one_run(s: Setting, arm: str, clock: str, seed: int) -> dict:
    if arm == "adaptive":
        return adaptive_run(s, clock, seed)
    if arm == "find":
        return find_run(s, clock, seed)
    return schedule_run(s, arm, schedule_caps(s.task, s.entry)[clock], seed)


def run_task(s: Setting, runs: dict, save, arms=ARMS, clocks=CLOCKS, seeds=SEEDS) -> list[str]:
    """Every missing run of ``arms`` x ``clocks`` x ``seeds`` on one task, each stored as it finishes;
    then the timing pass for the measured steps of its adaptive runs. Returns the keys trained."""
    new = []
    for arm in arms:
        for clock, variant in variants(s, arm, clocks).items():
            for seed in seeds:
                key = f"{arm}|{s.task.name}|{variant}|{seed}"
                if key in runs:
                    continue
                t0 = time.perf_counter()
                rec = one_run(s, arm, clock, seed)
                runs[key] = {"arm": arm, "task": s.task.name, "variant": variant, "seed": seed, **rec,
                             "wall": time.perf_counter() - t0, "load": os.getloadavg()[0]}
                save()
                new.append(key)
                print(_line(key, runs[key]), flush=True)
    measured_ratios(s, runs, save)
    return new


def measured_ratios(s: Setting, runs: dict, save) -> dict:
    """Measured / plain step time on this machine at every batch an adaptive run of the task measured at
    (one interleaved pass over the batches still missing), kept in the store under '_timing'."""
    have = runs.setdefault("_timing", {}).setdefault(s.task.name, {})
    used = {seg[1] for k, r in runs.items() if k.startswith(f"adaptive|{s.task.name}|") and r.get("path")
            for seg in r["path"] if len(seg) > 2}
    missing = sorted(b for b in used if str(b) not in have)
    if missing:
        print(f"[{s.task.name}] timing pass: plain and measured steps at {missing} x {s.rounds} rounds", flush=True)
        t = timing_pass(s.task, missing, s.rounds)
        for b in missing:
            plain, meas = t[f"{b}/plain"], t[f"{b}/measured"]
            have[str(b)] = {"plain": plain, "measured": meas, "ratio": meas / plain}
        save()
    return have


def progress(runs: dict, names=None) -> str:
    """One line per task and arm: the variants and seeds stored, reached or not, training minutes."""
    rows: dict[tuple, list] = {}
    for key, r in runs.items():
        if not key.startswith("_"):
            rows.setdefault((r["task"], r["arm"]), []).append(r)
    out = []
    for (task, arm), rs in sorted(rows.items()):
        if names and task not in names:
            continue
        cells = [f"{r['variant']}/s{r['seed']} " + (f"{r['steps']:.0f}" if r["reached"] else "x") for r in rs]
        mins = sum(r.get("train_seconds") or 0.0 for r in rs) / 60
        out.append(f"{task} {arm}: {len(rs)} runs ({', '.join(cells)}; x = not reached), {mins:.1f} min training")
    timed = {t: sorted(map(int, v)) for t, v in runs.get("_timing", {}).items()}
    out += [f"{t}: measured/plain timing at {bs}" for t, bs in timed.items()]
    return "\n".join(out) or "no anchor runs stored"


# ---- the arms as long_judge reads them ---------------------------------------------------------

def find_details(recs: list[dict]) -> dict:
    """find's measuring cost and recommendations over the seeds (geometric means; this machine's seconds)."""
    ok = [r for r in recs if r.get("measuring")]
    if not ok:
        return {}
    m = [r["measuring"] for r in ok]
    return {"measuring_steps": geomean([x["steps"] for x in m]), "measuring_batch": m[0]["batch"],
            "measuring_examples": geomean([x["examples"] for x in m]),
            "measuring_seconds": geomean([x["seconds"] for x in m]),
            "recommendations": [[r["recommendation"]["batch"], r["recommendation"]["lr"]] for r in ok]}


ADAPTIVE_PASSES = 2      # an adaptive run's measured step: two micro-batches (adapt.policy)


def measured_factor(clock, batch: int, passes: int, cpu_ratio: Optional[float] = None) -> float:
    """What a measured step costs, as a multiple of a plain step of ``batch`` on ``clock``.

    A measured step runs ``passes`` micro-batches of batch / passes, and every pass pays the device's
    fixed cost again (hardware.StepTimeModel.seconds(b, accumulation)): passes x t(B / passes) / t(B),
    the charge on the GPU-shaped clock, and on this machine's unless its own measured / plain ratio at B
    (``cpu_ratio``, which also holds the hooks' cost) is given. Across 8 devices the per-device
    gradients are the measurement (the data-parallel estimator): no extra pass, factor 1.
    """
    if clock.name.startswith("dp") or passes <= 1:
        return 1.0
    if clock.name.startswith("cpu") and cpu_ratio is not None:
        return cpu_ratio
    return passes * clock.step_seconds(batch / passes) / clock.step_seconds(batch)


def stored_arms(runs: dict, gt: dict, b0: int = START_BATCH, steps0: int = START_STEPS) -> dict:
    """The anchors' arms for long_judge.py, read from the stored runs (nothing is trained): adaptive, find,
    find (incl. measuring), warmup, seesaw; a task, clock or seed without its run raises NotRun."""
    caps: dict[str, dict] = {}

    def record(arm: str, task, variant: str, seed: int) -> dict:
        rec = runs.get(f"{arm}|{task.name}|{variant}|{seed}")
        if rec is None:
            raise J.NotRun(f"no {arm} run of {task.name} ({variant}, seed {seed})")
        return rec

    def adaptive(task, seed, clock):
        rec = record("adaptive", task, clock.name, seed)
        if not rec["reached"]:
            return None
        ratio = runs.get("_timing", {}).get(task.name, {})
        if any(len(seg) > 2 and str(seg[1]) not in ratio for seg in rec["path"]):
            raise J.NotRun(f"adaptive on {task.name}: a batch it measured at has no measured/plain timing yet")
        return [(seg[0], seg[1], measured_factor(clock, seg[1], ADAPTIVE_PASSES, ratio[str(seg[1])]["ratio"]))
                if len(seg) > 2 else tuple(seg) for seg in rec["path"]]

    def find_arm(measuring: bool):
        def arm(task, seed, clock):
            rec = record("find", task, clock.name, seed)
            if not rec["reached"]:
                return None
            m = rec["measuring"]
            passes = m["batch"] // m["micro_batch"] if m.get("micro_batch") else 1
            head = [(m["steps"], m["batch"], measured_factor(clock, m["batch"], passes))] if measuring else []
            return head + [tuple(x) for x in rec["path"]]
        arm.details = lambda task, seeds, clock: find_details([record("find", task, clock.name, s) for s in seeds])
        return arm

    def schedule(name: str):
        def arm(task, seed, clock):
            entry = gt[task.name]
            if task.name not in caps:
                caps[task.name] = schedule_caps(task, entry)
            s = Setting(task, entry, b0=b0, steps0=steps0)
            rec = record(name, task, schedule_variant(s, caps[task.name][clock.name], name), seed)
            return [tuple(x) for x in rec["path"]] if rec["reached"] else None
        return arm

    return {"adaptive": adaptive, "find": find_arm(False), "find (incl. measuring)": find_arm(True),
            "warmup": schedule("warmup"), "seesaw": schedule("seesaw")}


# ---- the command -------------------------------------------------------------------------------

def _choice(what: str, given: str, allowed) -> list[str]:
    got = [x for x in given.split(",") if x]
    bad = [x for x in got if x not in allowed]
    if bad or not got:
        raise ValueError(f"unknown {what} {', '.join(bad) or '(none given)'}; choose from {', '.join(allowed)}")
    return got


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=None, help="comma-separated (default: every task with a ground truth)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--clocks", default=",".join(CLOCKS))
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--store", type=Path, default=RUNS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--progress", action="store_true", help="print what is stored and stop")
    return ap.parse_args(argv)


def main(argv=None, registry=LONG, gt_path: Path = J.STORE) -> int:
    args = parse(argv)
    runs = read_json(args.store)
    if args.progress:
        print(progress(runs))
        return 0
    gt = read_json(gt_path)
    ready = [n for n in registry if "summary" in gt.get(n, {})]
    try:
        arms, clocks = _choice("arm", args.arms, ARMS), _choice("clock", args.clocks, CLOCKS)
        names = _choice("task", args.tasks, ready) if args.tasks else ready
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError as e:
        print(f"error: {e} (tasks need a ground truth: run long_tier.py)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    for name in names:
        s = Setting(registry[name](), gt[name])
        print(f"[{name}] {', '.join(arms)} x {', '.join(clocks)} x seeds {seeds}: start {s.b0} at lr "
              f"{s.lr(s.b0):.3g}, evaluations every {s.eval_examples:,} examples, caps {s.max_steps:,} steps / "
              f"{s.max_seconds:g}s", flush=True)
        t0 = time.perf_counter()
        new = run_task(s, runs, lambda: write_json(args.store, runs), arms, clocks, seeds)
        print(f"[{name}] {len(new)} new runs, {time.perf_counter() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    pin_malloc()
    sys.exit(main())
