"""Adaptive batch size against fixed batches, trained to the target, on built-in and generated tasks.

For each task and seed, four ways to train to the task's target:

- **adaptive**: ``TrainConfig(adaptive=AdaptiveConfig(profile=...))`` from the task's reference batch
  at the sweep's best rate there (the same anchor ``find`` gets in find_vs_sweep.py), capped at the
  sweep's largest batch;
- **best fixed**: the batch (with its best rate from a grid of three) whose steps to target x step
  time is least in a sweep over powers of two (built-in tasks: find_vs_sweep_runs.json; generated
  tasks: a sweep run here, powers of two x 3 rates around lr_ref sqrt(B / B_ref));
- **batch 32** at its best rate from the grid;
- **find**: find's fixed recommendation (objective fastest; built-in tasks: as recorded in
  find_vs_sweep.json; generated tasks: find run here), at its rate and warm-up.

Time to target = steps x step time, from one interleaved timing pass over every batch size after
all runs (5 rounds, the least per-round median) (for adaptive runs each step is charged at its own
batch, a measured step at the time of a step split into two micro-batches with the monitor attached);
the real training seconds of each run
(evaluations excluded) are reported beside it. Every task also runs adaptive with the raw B_simple
as B_noise (no suite factor), the two Adam tasks also with the noise measured on Adam's
preconditioned gradient: which estimate steers best. Results: benchmarks/results/adaptive_vs_fixed.{md,json}
(finished runs are kept in adaptive_vs_fixed_runs.json, so a killed benchmark resumes).

    PYTHONPATH=src nice -n 5 python benchmarks/adaptive_vs_fixed.py [--tasks ...] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchscope import DivergedError, Target, Task, TrainConfig, load_task, train
from batchscope.train import StepClock, StepLosses
# the same sweep rows, rate choice, run to the target and evaluation cadence as find_vs_sweep.py
from find_vs_sweep import MAX_EPOCHS, MAX_SECONDS, best_per_batch, eval_every
from find_vs_sweep import to_target as fixed_run
from batchscope.adapt.controller import SHRINK_LIMIT
from batchscope.adapt import AdaptiveConfig
from batchscope.hardware import profile_hardware
from batchscope.noise import NoiseScaleMonitor
from batchscope.plan.find import find
from batchscope.serialize import write_json
from batchscope.tasks.base import accuracy

sys.path.insert(0, str(Path(__file__).parent / "suite"))
from common import loss_peak  # noqa: E402  (the suite's figure of a loss spike)

RESULTS = Path(__file__).parent / "results"
RUNS = RESULTS / "adaptive_vs_fixed_runs.json"
SWEEP_RUNS = RESULTS / "find_vs_sweep_runs.json"
FIND_RESULTS = RESULTS / "find_vs_sweep.json"


# ---- tasks of our own: an Adam task and a larger data set, both generated -------------------------

def teacher_adam(n_train: int = 16_000, n_val: int = 4_000, d: int = 10, classes: int = 10) -> Task:
    """A random one-hidden-layer tanh teacher labels Gaussian inputs (10% labels flipped); Adam, MLP student."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_val, d, generator=g)
    w1, w3 = torch.randn(d, 64, generator=g) / d ** 0.5 * 2, torch.randn(64, classes, generator=g) / 8
    y = (torch.tanh(x @ w1) @ w3).argmax(-1)
    flip = torch.rand(len(y), generator=g) < 0.1
    y[flip] = torch.randint(classes, (int(flip.sum()),), generator=g)
    return Task(name="teacher_adam",
                make_model=lambda: nn.Sequential(nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                                 nn.Linear(128, classes)),
                train_data=TensorDataset(x[:n_train], y[:n_train]), val_data=TensorDataset(x[n_train:], y[n_train:]),
                loss_fn=nn.functional.cross_entropy, metric_fn=accuracy, metric_name="accuracy", optimizer="adam",
                lr=1e-3, reference_batch=32, target=Target("metric", 0.64, "val"),
                description="teacher-student classification, 16,000 examples, Adam")


def large_sgd(n_train: int = 100_000, n_val: int = 10_000, d: int = 32, classes: int = 8) -> Task:
    """100,000 examples: classes from random sine features of Gaussian inputs (Gumbel label noise); SGD."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_train + n_val, d, generator=g)
    feats = torch.sin(x @ torch.randn(d, 16, generator=g) / d ** 0.5 * 2)
    logits = feats @ torch.randn(16, classes, generator=g) * 3
    y = (logits - torch.empty_like(logits).exponential_(generator=g).log()).argmax(-1)
    return Task(name="large_sgd",
                make_model=lambda: nn.Sequential(nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                                 nn.Linear(128, classes)),
                train_data=TensorDataset(x[:n_train], y[:n_train]), val_data=TensorDataset(x[n_train:], y[n_train:]),
                loss_fn=nn.functional.cross_entropy, metric_fn=accuracy, metric_name="accuracy", optimizer="sgd",
                lr=0.05, momentum=0.9, reference_batch=64, target=Target("metric", 0.55, "val"),
                description="sine-feature classification, 100,000 examples, SGD with momentum")


OWN = {"teacher_adam": teacher_adam, "large_sgd": large_sgd}
BUILT_IN = ("dots", "digits", "mnist1d", "text")


def get_task(name: str) -> Task:
    return OWN[name]() if name in OWN else load_task(name)


# ---- runs ---------------------------------------------------------------------------------------

def sweep_batches(task: Task) -> list[int]:
    """Generated tasks: a small sweep, 32 x powers of four up to 2048, and the reference batch."""
    out, b = {task.reference_batch}, 32
    while b <= min(task.n_train, 2048):
        out.add(b)
        b *= 4
    return sorted(out)


def adaptive_run(task: Task, profile, b0: int, lr: float, max_batch: int, seed: int, noise: str = "raw", *,
                 every: Optional[int] = None, max_seconds: float = MAX_SECONDS) -> dict:
    """noise: 'raw' (the default: calibrated B_simple), 'uncalibrated' (raw B_simple as B_noise) or 'preconditioned';
    every: evaluations every this many x b0 examples (default 1/16 epoch)."""
    kind, factor = ("raw", 1.0) if noise == "uncalibrated" else (noise, None)
    acfg = AdaptiveConfig(profile=profile, max_batch=max_batch, noise=kind, noise_factor=factor)
    cfg = TrainConfig(batch_size=b0, lr=lr, until_target=True, epochs=MAX_EPOCHS,
                      eval_every=every or eval_every(task, b0), max_seconds=max_seconds, seed=seed, adaptive=acfg)
    trace = StepLosses()
    try:
        r = train(task, cfg, [trace])
    except DivergedError as e:
        return {"reached": False, "diverged": True, "steps": None, "error": str(e), **loss_peak(trace)}
    a = r.adaptive["steps"]
    n = math.ceil(r.target_step or 0)   # the crossing is interpolated: the step it falls in is kept (charged in part)
    changed = [d for d in r.adaptive["decisions"] if d["changed"]]
    moves = [(d["step"], d["batch_size"], round(d["b_crit"], 1)) for d in changed]
    return {"seed": seed, "noise": noise, "reached": r.reached_target, "diverged": False, "steps": r.target_step,
            "examples": r.target_examples, "wall_seconds": r.target_seconds, "metric": r.final.metric,
            "eval_loss": r.final.eval_loss, "stopped": r.stopped_because, "train_seconds": r.seconds,
            "steps_run": r.steps, "batch_sizes": a["batch_size"][:n], "measured": a["measured"][:n], "moves": moves,
            "move_reasons": [f"step {d['step']}: {d['reason']} (B_crit {d['b_crit']:.3g} "
                             f"[{d['b_crit_low']:.3g}, {d['b_crit_high']:.3g}])" for d in changed],
            "last_decisions": [f"step {d['step']}: {d['reason']}" for d in r.adaptive["decisions"][-3:]],
            "decisions": len(r.adaptive["decisions"]), "nonfinite_estimates": r.adaptive["nonfinite_estimates"],
            "measure_every": r.adaptive["measure_every"], "final_batch": a["batch_size"][n - 1] if n else b0,
            "final_lr": a["lr"][n - 1] if n else lr,
            # λ_max measured at rate rises before the crossing (wall seconds, charged on top of the steps)
            "check_seconds": sum(d["checks"]["bound"].get("seconds", 0.0) for d in changed
                                 if "bound" in d.get("checks", {}) and d["step"] < n),
            "rate_checks": [{k: d["checks"]["bound"].get(k) for k in ("lambda_max", "cap", "rate_rule", "rate",
                                                                      "capped")}
                            for d in changed if d.get("checks", {}).get("bound", {}).get("checked")],
            "rollbacks": r.adaptive.get("checks", {}).get("rollbacks", []),
            # over every step trained, rolled-back ones included (a spike caught by a roll-back shows here)
            **loss_peak(trace)}


def step_seconds(task: Task, b: int, measured: bool, steps: int = 20) -> float:
    """Median step time at batch b; measured: split in two micro-batches with the monitor's hooks on."""
    clock = StepClock()
    cbs = [clock] + ([NoiseScaleMonitor()] if measured else [])
    train(task, TrainConfig(batch_size=b, micro_batch=b // 2 if measured else None, steps=steps, eval_every=steps,
                            eval_examples=256), cbs)
    return statistics.median(clock.times[4:])


def timing_pass(task: Task, sizes: list[int], rounds: int = 5) -> dict:
    """Step times for every (batch, measured) in one interleaved pass: all sizes see the same machine state.

    Per size, the least of the per-round medians: load from other processes only ever slows a
    step, so the lower envelope is the best estimate of the uncontended time.
    """
    keys = [(b, m) for b in sizes for m in (False, True)]
    t = {k: [] for k in keys}
    for _ in range(rounds):
        for k in keys:
            t[k].append(step_seconds(task, *k))
    return {f"{b}/{'measured' if m else 'plain'}": min(v) for (b, m), v in t.items()}


# ---- bookkeeping ----------------------------------------------------------------------------------

def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def cached(runs: dict, key: str, fn):
    if key not in runs:
        runs[key] = fn()
        write_json(RUNS, runs)   # after every run: a killed benchmark keeps what it measured
        r = runs[key]
        print(f"  {key}: " + (f"{r['steps']} steps" if r.get("reached") else "not reached"), flush=True)
    return runs[key]


def sweep(task: Task, runs: dict) -> list[dict]:
    if task.name in BUILT_IN:
        return load(SWEEP_RUNS)[task.name]
    rows = []
    for b in sweep_batches(task):
        centre = task.lr * math.sqrt(b / task.reference_batch)
        for lr in (centre / 2, centre, centre * 2):
            rows.append(cached(runs, f"{task.name}/sweep/{b}/{lr:.6g}", lambda: fixed_run(task, b, lr)))
    return rows


def find_recommendation(task: Task, runs: dict, profile, ref_lr: float, max_batch: int) -> dict:
    if task.name in BUILT_IN:
        rec = next(r for r in json.loads(FIND_RESULTS.read_text()) if r["task"] == task.name)["recommended"]
        return {"batch": rec["batch"], "lr": rec["lr"], "warmup": rec["warmup"]}

    def run():
        r = find(task, objective="fastest", profile=profile, max_batch=max_batch, ref_lr=ref_lr).recommendation
        return {"batch": r.batch_size, "lr": r.lr, "warmup": r.warmup_steps, "reached": True, "steps": 0}
    return cached(runs, f"{task.name}/find", run)


def task_profile(task: Task, path: Optional[Path] = None):
    """One hardware profile per task (kept in ``path``, so reruns reuse it), as `batchscope profile --out`."""
    from batchscope.hardware import HardwareProfile
    path = path or RESULTS / f"adaptive_vs_fixed_profile_{task.name}.json"
    if path.exists():
        return HardwareProfile.load(path)
    p = profile_hardware(task)
    p.save(path)
    return p


def adaptive_seconds(run: dict, t: dict) -> float:
    """Steps to target charged at the interleaved step time of each step's batch (measured or not); the
    step in which the interpolated crossing falls is charged for the fraction of it that was needed."""
    secs = [t[f"{b}/{'measured' if m else 'plain'}"] for b, m in zip(run["batch_sizes"], run["measured"])]
    steps = sum(secs[:-1]) + (run["steps"] - (len(secs) - 1)) * secs[-1] if secs else 0.0
    return steps + check_seconds(run, steps)


def check_seconds(run: dict, steps: float) -> float:
    """The λ_max checks before the crossing, on the timing pass's clock: their wall seconds x (the pass's
    time for the run's steps / the run's own wall time for them), both of one process at one moment."""
    check = run.get("check_seconds", 0.0)
    own = (run.get("wall_seconds") or 0.0) - check
    return check * steps / own if check and own > 0 else check


def measuring_share(run: dict, t: dict) -> float:
    """Share of an adaptive run's charged time to target spent measuring: each measured step's excess
    over a plain step at its batch (from the same timing pass), the up-front first steps included."""
    extra = sum(t[f"{b}/measured"] - t[f"{b}/plain"] for b, m in zip(run["batch_sizes"], run["measured"]) if m)
    total = adaptive_seconds(run, t)
    return extra / total if total > 0 else math.nan


def powers_of_two(lo: int, hi: int) -> list[int]:
    out, b = [], lo
    while b <= hi:
        out.append(b)
        b *= 2
    return out


def b_crit_of(task: Task, best: dict) -> float:
    if task.name in BUILT_IN:
        return next(r for r in json.loads(FIND_RESULTS.read_text()) if r["task"] == task.name)["b_crit"]["measured"]
    from batchscope.study.bcrit import fit_bcrit
    return fit_bcrit(sorted(best), [best[b]["steps"] for b in sorted(best)]).b_crit


def evaluate_task(name: str, seeds: int, runs: dict) -> dict:
    task = get_task(name)
    print(f"[{name}] sweep", flush=True)
    best = best_per_batch(sweep(task, runs))
    b_ref = task.reference_batch
    ref_lr = best[b_ref]["lr"] if b_ref in best else task.lr
    max_batch = max(best)
    print(f"[{name}] profile and find", flush=True)
    profile = task_profile(task)
    rec = find_recommendation(task, runs, profile, ref_lr, max_batch)
    noises = ("raw", "uncalibrated") + (("preconditioned",) if task.optimizer in ("adam", "adamw") else ())
    adaptive = {nz: [cached(runs, f"{name}/adaptive-{nz}/{s}",
                            lambda: adaptive_run(task, profile, b_ref, ref_lr, max_batch, s, nz))
                     for s in range(seeds)] for nz in noises}
    print(f"[{name}] step times (one interleaved pass)", flush=True)
    floor = min(min(best), max(2, b_ref // SHRINK_LIMIT))        # the controller's default smallest batch
    sizes = sorted(set(powers_of_two(floor, max_batch)) | set(best) | {32, rec["batch"]})
    key = f"{name}/timing/" + ",".join(str(b) for b in sizes if b <= task.n_train)
    t = cached(runs, key, lambda: {**timing_pass(task, [b for b in sizes if b <= task.n_train]), "reached": True,
                                   "steps": 0})
    t = {k: v for k, v in t.items() if "/" in k}
    fixed_time = {b: r["steps"] * t[f"{b}/plain"] for b, r in best.items()}
    b_best = min(fixed_time, key=fixed_time.get)
    methods = {"best fixed": (b_best, best[b_best]["lr"], 0), "batch 32": (32, best[32]["lr"], 0),
               "find": (rec["batch"], rec["lr"], rec["warmup"])}
    fixed = {m: [cached(runs, f"{name}/fixed/{b}/{lr:.6g}/{w}/{s}", lambda: fixed_run(task, b, lr, w, s))
                 for s in range(seeds)] for m, (b, lr, w) in methods.items()}
    rows = {}
    for m, rs in fixed.items():
        b = methods[m][0]
        rows[m] = summarise(rs, lambda r, b=b: r["steps"] * t[f"{b}/plain"], f"{b} (lr {methods[m][1]:.3g})")
    for nz, rs in adaptive.items():
        label = {"raw": "adaptive", "uncalibrated": "adaptive, raw B_simple as B_noise",
                 "preconditioned": "adaptive, preconditioned noise"}[nz]
        finals = sorted({r.get("final_batch") for r in rs if r["reached"]})
        rows[label] = summarise(rs, lambda r: adaptive_seconds(r, t),
                                f"{b_ref} -> {'/'.join(map(str, finals))} (lr0 {ref_lr:.3g})")
        shares = [measuring_share(r, t) for r in rs if r["reached"]]
        rows[label]["measuring"] = statistics.median(shares) if shares else None
    return {"task": name, "optimizer": task.optimizer, "n_train": task.n_train,
            "higher_is_better": task.target.kind == "metric", "target": task.target.describe(
        task.metric_name), "b_crit_sweep": b_crit_of(task, best), "sweep_best_per_batch": {
        b: {"lr": r["lr"], "steps": r["steps"], "seconds": fixed_time[b]} for b, r in sorted(best.items())},
        "step_seconds": t, "rows": rows, "runs": {"fixed": fixed, "adaptive": adaptive}}


def summarise(rs: list[dict], seconds, setting: str) -> dict:
    ok = [r for r in rs if r["reached"]]
    secs = [seconds(r) for r in ok]
    metrics = [r["metric"] if r["metric"] is not None else r["eval_loss"] for r in ok]
    # a seed that never reached the target counts as infinitely slow, not as absent
    every = secs + [math.inf] * (len(rs) - len(ok))
    return {"setting": setting, "reached": f"{len(ok)}/{len(rs)}",
            "seconds": statistics.median(every) if every else math.inf, "seconds_all": secs,
            "wall": statistics.median(r["wall_seconds"] for r in ok) if ok else math.inf,
            "examples": statistics.median(r["examples"] for r in ok) if ok else None,
            "steps": statistics.median(r["steps"] for r in ok) if ok else None,
            "metric": statistics.mean(metrics) if metrics else None,
            "metric_range": [min(metrics), max(metrics)] if metrics else None}


def verdicts(results: list[dict]) -> dict:
    out = {}
    for res in results:
        rows = res["rows"]
        best, ad, b32 = rows["best fixed"]["seconds"], rows["adaptive"]["seconds"], rows["batch 32"]["seconds"]
        lo, hi = rows["best fixed"]["metric_range"] or (math.nan, math.nan)
        m = rows["adaptive"]["metric"]
        spread = hi - lo
        out[res["task"]] = {
            "adaptive / best fixed": ad / best, "within 1.1x": ad / best <= 1.1, "within 0.9x": ad / best <= 0.9,
            "batch 32 / adaptive": b32 / ad, "b_crit_sweep": res["b_crit_sweep"],
            "2x faster than batch 32 needed": res["b_crit_sweep"] > 256, "2x faster than batch 32": b32 / ad >= 2,
            # not worse than the best fixed runs by more than their own seed spread (better is fine)
            "metric within best fixed seed spread": m is not None and (
                m >= lo - spread if res.get("higher_is_better", True) else m <= hi + spread),
        }
    return out


def markdown(results: list[dict], seeds: int, loads=()) -> str:
    load = ", ".join(f"{x:.1f}" for x in loads) or "not recorded"
    lines = ["# Adaptive batch size vs fixed batches", "",
             f"Time to target (s) = steps x step time from one interleaved timing pass (median over {seeds} seeds; "
             "adaptive runs charge each step at its own batch); wall = real training seconds (median). "
             "ratio = time / best fixed.", "",
             "| task | method | setting | reached | time to target (s) | ratio | measuring | wall (s) | examples | "
             "final metric [seed range] |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for res in results:
        best = res["rows"]["best fixed"]["seconds"]
        for method, r in res["rows"].items():
            rng = r["metric_range"]
            share = f"{r['measuring']:.1%}" if r.get("measuring") is not None else "-"
            lines.append(f"| {res['task']} | {method} | {r['setting']} | {r['reached']} | {r['seconds']:.3g} | "
                         f"{r['seconds'] / best:.2f} | {share} | {r['wall']:.3g} | {r['examples'] or 0:,.0f} | "
                         + (f"{r['metric']:.4g} [{rng[0]:.4g}, {rng[1]:.4g}]" if rng else "-") + " |")
    lines += ["", "| task | B_crit (sweep) | adaptive / best fixed | <= 1.1x | <= 0.9x | batch 32 / adaptive | "
                  "metric within seed spread |", "|---|---:|---:|---|---|---:|---|"]
    for task, v in verdicts(results).items():
        lines.append(f"| {task} | {v['b_crit_sweep']:.0f} | {v['adaptive / best fixed']:.2f} | {v['within 1.1x']} | "
                     f"{v['within 0.9x']} | {v['batch 32 / adaptive']:.2f}"
                     f"{' (2x needed)' if v['2x faster than batch 32 needed'] else ''} | "
                     f"{v['metric within best fixed seed spread']} |")
    lines += ["", "Notes. Adaptive starts at the task's reference batch at the sweep's best rate there (the anchor "
              "find gets), capped at the sweep's largest batch; it may go down to a quarter of its start. "
              "Steps to target "
              "are interpolated between the evaluations (every 1/16 epoch) around the crossing, for every method "
              "alike; a seed that never reached the target counts as infinitely slow in the median. measuring = the "
              "share of an adaptive run's time to target that its measured steps cost beyond plain steps (median "
              "over seeds), the first min_samples steps included. Time to target charges a measured adaptive "
              "step at a step split in two with the monitor's "
              "hooks on (the timing pass), not the bind/estimate bookkeeping around it; the wall column has it. "
              "metric: accuracy, or the validation loss for text (lower is better there); 'within seed spread' "
              "means not worse than the best fixed runs' range by more than its width. "
              "Load average (1 min, 2 cores) after each task of the run that wrote this table (finished runs "
              f"and timing passes are read back from adaptive_vs_fixed_runs.json, measured when first run): {load}; "
              "the timing pass "
              "takes the least of 5 per-round medians."]
    return "\n".join(lines) + "\n"


def render(path: Path = RESULTS / "adaptive_vs_fixed.json") -> None:
    """Rewrite the Markdown table and the verdicts from the saved JSON (no training)."""
    doc = json.loads(path.read_text())
    for res in doc["results"]:
        res.setdefault("higher_is_better", get_task(res["task"]).target.kind == "metric")
    doc["verdicts"] = verdicts(doc["results"])
    write_json(path, doc)
    (RESULTS / "adaptive_vs_fixed.md").write_text(markdown(doc["results"], doc["seeds"], doc.get("load_average", ())))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="dots,digits,mnist1d,teacher_adam,large_sgd,text")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--render", action="store_true", help="only rewrite the table from the saved JSON")
    args = ap.parse_args(argv)
    if args.render:
        render()
        return 0
    torch.set_num_threads(args.threads)
    runs = load(RUNS)
    results = []
    t0 = time.perf_counter()
    loads = []
    for name in args.tasks.split(","):
        results.append(evaluate_task(name, args.seeds, runs))
        loads.append(os.getloadavg()[0])
        doc = {"seeds": args.seeds, "threads": args.threads, "results": results, "verdicts": verdicts(results),
               "seconds": time.perf_counter() - t0, "load_average": loads}
        write_json(RESULTS / "adaptive_vs_fixed.json", doc)
        (RESULTS / "adaptive_vs_fixed.md").write_text(markdown(results, args.seeds, loads))
        print(markdown(results[-1:], args.seeds, loads[-1:]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
