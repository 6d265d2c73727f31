"""The critical batch measured directly along a run (Merrill et al. 2025's method), beside the noise scale.

At a few points of a reference run (the task's reference batch B_ref at its best rate from the ground
truth, fixed batch, constant rate, seed 0) the run's whole state is forked (``Run.branch``) and short
branches train from it at B0, 2 B0, 4 B0, ... (B0 = B_ref / 4) for the same number of examples E.

- **The rate of a branch** starts at the optimizer's rule from (B_ref, lr_ref): for SGD the saturating
  rule ``plan.model.sgd_lr`` with the B_simple measured at that point (linear while B << B_simple,
  as AdaScale), for Adam-type the square root ``plan.model.adam_lr``. It then decays linearly to
  zero over the branch (a cooldown): at the constant best rate the final iterate's loss jumps from
  step to step by more than a branch gains (seen on the suite: 0.33, 0.60, 0.33, 0.65 at successive
  quarters of one branch), and a cooled-down branch ends at what its examples bought.
- **The data**: every branch draws next the examples the reference run would have drawn (the rest of
  its epoch first), so all branches of a point see the same examples in the same order.
- **The critical batch** there is the largest B whose branch of E examples ends at an eval loss no
  higher than the smallest batch's branch of E / 2 examples (also cooled down). The tolerance is
  thus the loss the smallest batch gains from doubling its examples: B needs at most twice the
  examples B0 needs. That is the critical batch E_min / S_min of McCandlish et al. 2018 (a run at
  B_crit takes twice the minimum examples), the quantity the noise-scale factors were calibrated on.
  Under their model the largest such B is B_noise + 2 B0, so the measure cannot read below 2 B0 =
  B_ref / 2; the ladder resolves a factor of 2. A point where the smallest batch's loss after E is
  not below its loss after E / 2 is "flat" (no critical batch measured).
- **The noise scale** at the same point: B_simple = tr(Σ)/|G|² (ratio of sums) over a fork that
  trains the same E examples at B_ref and constant rate in 8 micro-batches (``NoiseScaleMonitor``,
  the estimator the factors were calibrated on; at least NOISE_MIN_STEPS steps), and the
  predictions LIVE_FACTOR x B_simple (the adaptive controller's) and SUITE_FACTOR x B_simple
  (``find``'s, calibrated on a measuring run's window rather than a point).

Branch lengths are a share (BRANCH_SHARE) of the examples the run has seen at the point, so every
branch spans the same stretch of log-time; the largest batch takes at least MIN_BRANCH_STEPS steps.
A batch is not tried beyond two failing doublings in a row.

Writes benchmarks/results/suite_branches.json (each point as it finishes; a rerun skips finished
points) and suite_branches.md:

    OMP_NUM_THREADS=1 nice -n 15 env PYTHONPATH=src python benchmarks/suite/branches.py [--tier short] [--tasks a,b]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).parent))

import tasks as suite_tasks  # noqa: E402
from common import read_json, write_json  # noqa: E402

from batchscope import TrainConfig  # noqa: E402
from batchscope.noise import NoiseScaleMonitor  # noqa: E402
from batchscope.plan.critical_batch import LIVE_FACTOR, SUITE_FACTOR, ratio_of_sums  # noqa: E402
from batchscope.plan.model import adam_lr, sgd_lr  # noqa: E402
from batchscope.train import FixedBatch, IndexStream, OptimizerSettings, evaluate, start_run  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE.parent / "results"
STORE = RESULTS / "suite_branches.json"
REPORT = RESULTS / "suite_branches.md"

POINTS = (0.125, 0.25, 0.5, 1.0)   # fractions of the reference run's steps to target (ground truth)
BRANCH_SHARE = 0.5                 # a branch trains for this share of the examples seen at its point
DOWN = 2                           # the ladder starts DOWN doublings below B_ref: B0 = B_ref / 4
MIN_BRANCH_STEPS = 4               # the largest batch of a ladder takes at least this many steps
STOP_AFTER = 2                     # failing doublings in a row after which larger batches are not tried
# The long tier's reference run is at 256, not the tasks' 32: at 32 a run to target is 30,000+ steps and
# the ladder from 8 would train hundreds of thousands of steps per point; at 256 (a batch the ground truth
# swept at every long task) the run is a few thousand steps and the ladder from 64 spans the 10^3-10^4
# critical batches the long tier's fits report.
REF_BATCH = {"short": None, "long": 256}
NOISE_MIN_STEPS = 16
NOISE_PASSES = 8
FACTORS = {"live": LIVE_FACTOR, "find": SUITE_FACTOR}


def task_list(tier: str) -> dict[str, Callable]:
    """The task factories of a tier; the long tier is the one line below once benchmarks/suite/tasks.py has it."""
    tiers = {"short": suite_tasks.SUITE, "long": getattr(suite_tasks, "LONG", {})}
    return tiers[tier]


def ground_truth_file(tier: str) -> Path:
    return HERE / ("ground_truth.json" if tier == "short" else "long_ground_truth.json")


# ---- pure parts ---------------------------------------------------------------------------------

def ladder(b0: int, examples: float, n_train: int, min_steps: int = MIN_BRANCH_STEPS) -> tuple[list[int], int]:
    """The batches b0 · 2^j of a point's branches and their common length E in examples.

    The largest batch takes at least ``min_steps`` steps of the ``examples`` asked for and fits the
    training set; E is ``examples`` rounded up to a multiple of that batch and of 2 b0, so every
    batch divides E and b0 divides E / 2 (the smallest batch's half-length branch).
    """
    top = b0
    while 2 * top * min_steps <= examples and 2 * top <= n_train:
        top *= 2
    unit = max(top, 2 * b0)
    length = max(unit, math.ceil(examples / unit) * unit)
    batches = [b0 * 2 ** j for j in range(int(math.log2(top // b0)) + 1)]
    return batches, length


def branch_lr(optimizer: str, b: int, b_ref: int, lr_ref: float, b_simple: float) -> float:
    """The peak rate of a branch at batch ``b``: square root for Adam-type, the saturating SGD rule with
    B_noise = the B_simple measured at the point (the linear rule when that is not finite)."""
    if optimizer in ("adam", "adamw"):
        return adam_lr(b, b_ref, lr_ref)
    if not (math.isfinite(b_simple) and b_simple > 0):
        return lr_ref * b / b_ref
    return sgd_lr(b, b_ref, lr_ref, b_simple)


def critical_batch(half_loss: Optional[float], branches: Sequence[dict]) -> dict:
    """The branched critical batch of one point (see the module docstring).

    half_loss: the smallest batch's loss after a branch of E / 2 examples (None: it diverged).
    branches: {"batch", "loss"} per batch tried with E examples, smallest first (loss None: diverged).
    Returns the threshold (``half_loss``), whether the point is flat (the smallest batch gained
    nothing from the second half of its examples), the passing batches, B_crit (None when flat) and
    whether it is the largest batch tried (then a lower bound: the ladder stops only after failures).
    """
    first = branches[0]["loss"] if branches else None
    flat = half_loss is None or first is None or not first < half_loss
    passing = [] if flat else [b["batch"] for b in branches if b["loss"] is not None and b["loss"] <= half_loss]
    b_crit = max(passing) if passing else None
    return {"threshold": half_loss, "flat": flat, "passing": passing, "b_crit": b_crit,
            "at_top": b_crit is not None and b_crit == branches[-1]["batch"]}


def compare(b_crit: Optional[float], at_top: bool, b_simple: float, factor: float) -> dict:
    """The prediction factor x B_simple against the branched B_crit: ratio and whether within 2x (a lower
    bound B_crit >= b counts as within when the prediction is at least b / 2)."""
    pred = factor * b_simple if math.isfinite(b_simple) else math.nan
    if b_crit is None or not math.isfinite(pred):
        return {"predicted": pred, "ratio": None, "within_2x": None}
    r = pred / b_crit
    return {"predicted": pred, "ratio": r, "within_2x": bool(r >= 0.5 and (r <= 2.0 or at_top))}


def analyse(point: dict) -> dict:
    """What a stored point says (recomputed from its raw losses, so a report never disagrees with them)."""
    out = critical_batch(point["half"]["loss"], point["branches"])
    for name, f in FACTORS.items():
        out[name] = compare(out["b_crit"], out["at_top"], point["b_simple"], f)
    return out


def tally(points: Sequence[dict], factor: str) -> dict:
    """How many measured points have the prediction within 2x of the branched B_crit; the ratios' spread."""
    rows = [analyse(p)[factor] for p in points]
    measured = [r for r in rows if r["within_2x"] is not None]
    ratios = [r["ratio"] for r in measured]
    return {"points": len(points), "measured": len(measured), "within_2x": sum(r["within_2x"] for r in measured),
            "median_ratio": statistics.median(ratios) if ratios else None,
            "geomean_ratio": math.exp(statistics.fmean(math.log(r) for r in ratios)) if ratios else None}


# ---- measuring ----------------------------------------------------------------------------------

class NoiseProbe(FixedBatch):
    """A fixed batch in micro-batches whose every step feeds a NoiseScaleMonitor."""

    def begin(self, ctx) -> None:
        super().begin(ctx)
        self.monitor = NoiseScaleMonitor(ctx.model, micro_batch=self.micro_batch)

    def on_before_step(self, ctx) -> None:
        self.monitor.update(ctx.step_loss, step=ctx.step + 1)


class Cooldown(FixedBatch):
    """A fixed batch whose rate decays linearly to zero over the branch's ``steps`` (step i of n: (n - i) / n)."""

    def __init__(self, *args, steps: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps, self.first = steps, 0

    def begin(self, ctx) -> None:
        super().begin(ctx)
        self.first = ctx.step

    def plan(self, ctx):
        plan = super().plan(ctx)
        f = max(0, self.steps - (ctx.step - self.first)) / self.steps
        return dataclasses.replace(plan, lr=tuple(lr * f for lr in plan.lr))


def continue_data(stream: IndexStream, parent: IndexStream) -> None:
    """Make a branch's ``stream`` draw next what ``parent`` would: the rest of the parent's permutation,
    then its seen part, then the parent's following permutations."""
    stream.generator.set_state(parent.generator.get_state())
    if parent.perm is not None:
        seen = parent.k * parent.batch_size
        stream.perm, stream.k = torch.cat([parent.perm[seen:], parent.perm[:seen]]), 0


def measure_noise(run, b_ref: int, lr_ref: float, steps: int) -> dict:
    """B_simple over ``steps`` steps of a fork at B_ref in NOISE_PASSES micro-batches (ratio of sums)."""
    micro = max(1, b_ref // NOISE_PASSES)
    probe = NoiseProbe(run.task, dataclasses.replace(run.cfg, steps=10 ** 9), batch_size=b_ref, micro_batch=micro,
                       lr=lr_ref)
    continue_data(probe.stream, run.policy.stream)
    run.branch(steps * b_ref, policy=probe)
    probe.monitor.close()
    raw = probe.monitor.raw
    return {"b_simple": ratio_of_sums([s.g2 for s in raw], [s.trace for s in raw]), "noise_steps": len(raw),
            "noise_micro_batch": micro}


def run_branch(run, batch: int, lr: float, examples: int) -> dict:
    """One branch from ``run``'s state: ``examples`` examples at ``batch``, peak rate ``lr`` cooled down to zero."""
    cfg = dataclasses.replace(run.cfg, steps=10 ** 9)     # a branch ends by its examples, never by a budget
    policy = Cooldown(run.task, cfg, batch_size=batch, lr=lr, steps=examples // batch)
    continue_data(policy.stream, run.policy.stream)
    br = run.branch(examples, policy=policy)
    return {"batch": batch, "lr": lr, "examples": br.examples, "steps": br.steps, "loss": br.eval_loss,
            "metric": br.metric, "diverged": bool(br.diverged), "seconds": br.seconds}


def measure_point(run, b_ref: int, lr_ref: float, fraction: float) -> dict:
    """Branches at one point of ``run`` (the parent is left as it was) and the noise scale there."""
    t0, task, ctx = time.perf_counter(), run.task, run.ctx
    loss, metric = evaluate(ctx.model, task, task.target.split, ctx.device, run.cfg.eval_examples)
    optimizer = OptimizerSettings.of(task, run.cfg).name
    batches, length = ladder(max(1, b_ref // 2 ** DOWN), BRANCH_SHARE * ctx.examples, task.n_train)
    noise = measure_noise(run, b_ref, lr_ref, max(NOISE_MIN_STEPS, length // b_ref))

    def rate(b: int) -> float:
        return branch_lr(optimizer, b, b_ref, lr_ref, noise["b_simple"])

    half = run_branch(run, batches[0], rate(batches[0]), length // 2)
    rows, fails = [], 0
    for b in batches:
        if fails >= STOP_AFTER:
            break
        rows.append(run_branch(run, b, rate(b), length))
        ok = half["loss"] is not None and rows[-1]["loss"] is not None and rows[-1]["loss"] <= half["loss"]
        fails = 0 if ok else fails + 1
    return {"fraction": fraction, "step": ctx.step, "examples": ctx.examples, "loss": loss, "metric": metric,
            **noise, "branch_examples": length, "ladder": batches, "half": half, "branches": rows,
            "seconds": time.perf_counter() - t0}


def reference(task, gt: dict, b_ref: Optional[int] = None) -> Optional[dict]:
    """B_ref (default: the task's reference batch), its best rate and steps to target from a task's ground
    truth (None when it has none)."""
    b_ref = b_ref or task.reference_batch
    row = (gt.get("summary") or {}).get("per_batch", {}).get(str(b_ref))
    if not row or not row.get("steps"):
        return None
    return {"b_ref": b_ref, "lr_ref": row["lr"], "steps_to_target": row["steps"],
            "b_crit_run": gt["summary"].get("b_crit")}


def measure_task(task, ref: dict, entry: dict, save: Callable[[], None], points: Sequence[float] = POINTS,
                 seed: int = 0) -> dict:
    """Step a reference run to each point not yet in ``entry["points"]``, measure it there, save after each."""
    entry.update({**ref, "optimizer": OptimizerSettings.resolve(task).name, "seed": seed})
    done = {p["fraction"] for p in entry.setdefault("points", [])}
    todo = sorted(f for f in points if f not in done)
    if not todo:
        return entry
    at = {f: max(1, round(f * ref["steps_to_target"])) for f in todo}
    cfg = TrainConfig(batch_size=ref["b_ref"], lr=ref["lr_ref"], steps=max(at.values()) + 1, seed=seed,
                      eval_every=10 ** 9)
    run = start_run(task, cfg)
    for f in todo:
        while run.ctx.step < at[f]:
            run.step()
        p = measure_point(run, ref["b_ref"], ref["lr_ref"], f)
        entry["points"] = sorted(entry["points"] + [p], key=lambda q: q["fraction"])
        save()
        a = analyse(p)
        print(f"  [{task.name}] step {p['step']}: B_crit {a['b_crit']}{'+' if a['at_top'] else ''}, "
              f"B_simple {p['b_simple']:.1f}, {p['seconds']:.1f}s", flush=True)
    return entry


# ---- the report ---------------------------------------------------------------------------------

def _num(x, fmt="{:.0f}") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def task_table(name: str, entry: dict) -> list[str]:
    lines = [f"### {name} ({entry['optimizer']}, B_ref {entry['b_ref']}, lr {entry['lr_ref']:.3g}; "
             f"B_crit of the whole run {_num(entry.get('b_crit_run'))})", "",
             "| step | examples | loss | branched B_crit | B_simple | live x B_simple | ratio | find x B_simple | "
             "ratio | ladder |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for p in entry["points"]:
        a = analyse(p)
        bc = "flat" if a["flat"] else _num(a["b_crit"]) + ("+" if a["at_top"] else "")
        tried = f"{p['ladder'][0]}..{p['branches'][-1]['batch']}"
        lines.append(f"| {p['step']} | {p['examples']:,} | {p['loss']:.4g} | {bc} | {_num(p['b_simple'], '{:.1f}')} "
                     f"| {_num(a['live']['predicted'])} | {_num(a['live']['ratio'], '{:.2f}')} "
                     f"| {_num(a['find']['predicted'])} | {_num(a['find']['ratio'], '{:.2f}')} | {tried} |")
    return lines + [""]


def along(name: str, entry: dict) -> str:
    """One task's row: how the branched B_crit and B_simple moved from its first point to its last."""
    pts = entry["points"]
    shown = [("flat" if a["flat"] else _num(a["b_crit"]) + ("+" if a["at_top"] else "")) for a in map(analyse, pts)]
    t = tally(pts, "live")
    return (f"| {name} | {' -> '.join(shown)} | {_num(pts[0]['b_simple'])} -> {_num(pts[-1]['b_simple'])} "
            f"| {_num(entry.get('b_crit_run'))} | {t['within_2x']} of {t['measured']} | "
            f"{_num(t['median_ratio'], '{:.2f}')} |")


def render(store: dict) -> str:
    entries = {k: v for k, v in store.items() if v.get("points")}
    pts = [p for v in entries.values() for p in v["points"]]
    seconds = sum(p["seconds"] for p in pts)
    head = [
        "# The critical batch measured by branching, beside the noise scale", "",
        "Written by `benchmarks/suite/branches.py` (its docstring states the method). At each point of a reference run",
        f"(B_ref at its best rate, fixed batch, seed 0; points at {', '.join(f'{f:g}' for f in POINTS)} of its steps "
        "to target) the state is forked",
        f"and branches train {BRANCH_SHARE:g} x the examples seen so far at B_ref/4, B_ref/2, B_ref, ... (peak rate: "
        "SGD `sgd_lr` with the point's B_simple, Adam-type square root; decayed linearly to zero over the branch).",
        "**Branched B_crit**: the largest batch whose branch ends at a loss no higher than the smallest batch's "
        "branch of",
        "half the examples (at most 2x the examples: the E_min/S_min definition the factors were calibrated on; "
        "it cannot",
        "read below B_ref/2; factor-2 resolution; `+`: the largest batch tried passed, a lower bound; `flat`: the",
        "smallest batch gained nothing from doubling its examples). Losses are eval losses on the target's split.",
        f"**B_simple**: tr(Σ)/|G|² over a fork that trains the same examples at B_ref (at least {NOISE_MIN_STEPS} "
        f"steps) in {NOISE_PASSES} micro-batches. "
        f"Predictions: live = {LIVE_FACTOR} x B_simple",
        f"(the adaptive controller's factor), find = {SUITE_FACTOR} x B_simple (find's factor, calibrated on a "
        "measuring run's window, applied here to a point). Ratio = prediction / branched B_crit.", "",
        "## Within 2x", "", "| tier | factor | measured points | within 2x | median ratio | geometric mean ratio |",
        "|---|---|---:|---:|---:|---:|"]
    tiers = {"short": [p for v in entries.values() if v.get("tier", "short") == "short" for p in v["points"]],
             "long": [p for v in entries.values() if v.get("tier") == "long" for p in v["points"]], "all": pts}
    for tier, points in tiers.items():
        for name in FACTORS if points else ():
            t = tally(points, name)
            head.append(f"| {tier} | {name} ({FACTORS[name]}) | {t['measured']} of {t['points']} | {t['within_2x']} | "
                        f"{_num(t['median_ratio'], '{:.2f}')} | {_num(t['geomean_ratio'], '{:.2f}')} |")
    head += ["", "The long tier's reference runs are at B_ref 256 (the short suite's at each task's own reference "
             "batch), so its ladders start at 64.", "", "## Along each run", "",
             "| task | branched B_crit, first -> last point | B_simple, first -> last | B_crit of the whole run "
             "(sweep) | live within 2x | median live ratio |", "|---|---|---|---:|---:|---:|"]
    for name, entry in entries.items():
        head.append(along(name, entry))
    head += ["", f"Time: {seconds / 60:.1f} min of measuring over {len(entries)} tasks "
             "(one thread, `nice -n 15`, a shared machine), the reference runs' own steps not counted.", "",
             "## Per task", ""]
    for name, entry in entries.items():
        head += task_table(name, entry)
    return "\n".join(head) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tier", default="short", choices=("short", "long"))
    ap.add_argument("--tasks", default=None, help="comma-separated task names (default: the whole tier)")
    ap.add_argument("--points", default=None, help="comma-separated fractions of the steps to target "
                    f"(default: {','.join(f'{f:g}' for f in POINTS)})")
    ap.add_argument("--ref-batch", type=int, default=None, help="the reference run's batch (default: the task's "
                    "reference batch on the short tier, 256 on the long tier)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from the stored points")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    registry, store = task_list(args.tier), read_json(STORE)
    gt = read_json(ground_truth_file(args.tier))
    names = args.tasks.split(",") if args.tasks else list(registry)
    points = tuple(float(f) for f in args.points.split(",")) if args.points else POINTS

    def save():
        write_json(STORE, store)
        REPORT.write_text(render(store))

    for name in [] if args.report_only else names:
        task = registry[name]()
        b_ref = args.ref_batch or REF_BATCH[args.tier]
        ref = reference(task, gt.get(name, {}), b_ref)
        if ref is None:
            print(f"[{name}] no ground truth at B_ref {b_ref or task.reference_batch}: skipped", flush=True)
            continue
        print(f"[{name}] B_ref {ref['b_ref']}, lr {ref['lr_ref']:.3g}, {ref['steps_to_target']:.0f} steps to target",
              flush=True)
        measure_task(task, ref, store.setdefault(name, {"tier": args.tier}), save, points)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
