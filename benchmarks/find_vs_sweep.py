"""Is `find`'s advice good? Compare it with a measured sweep over batch sizes, per built-in task.

For each task:
1. sweep: powers of two from 8 to the largest that the data allows; for each batch, a grid of three
   learning rates around lr_ref * sqrt(B / B_ref) (x0.5, x1, x2), each trained until the target (or a
   cap); the best rate per batch is the one with the fewest steps to the target;
2. step times for every batch size, measured in one interleaved pass after the sweep, so that
   time to target = steps x median step time compares batch sizes on the same machine state
   (the raw wall-clock times are recorded too; on a shared machine they drift with the load);
3. the measured critical batch: fit (S/S_min - 1)(E/E_min - 1) = 1 to the best steps per batch;
4. `find` (objective `fastest`, since regret is judged in time; and `balanced` beside it), anchored
   at the sweep's best rate at the task's reference batch, as a user with one tuned setting would
   be; then a training run at each recommendation, timed the same way.

Reported per task: regret (time at the recommendation / best time in the sweep), what find cost
(examples and seconds as a fraction of the best run to the target), predicted vs measured B_crit,
and the regret of two habits (batch 32, and the largest batch that fits), each at its best rate
from the grid. Results: benchmarks/results/find_vs_sweep.json and .md (resumable: finished sweep
runs are kept in benchmarks/results/find_vs_sweep_runs.json).

    python benchmarks/find_vs_sweep.py [--tasks mnist1d,digits,dots,text] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from batchscope import DivergedError, TrainConfig, load_task, train
from batchscope.train import StepClock
from batchscope.plan.find import find
from batchscope.serialize import write_json


RESULTS = Path(__file__).parent / "results"
RUNS = RESULTS / "find_vs_sweep_runs.json"
MAX_SECONDS = 120.0         # per sweep run: a run slower than this is far from the best anyway
MAX_EPOCHS = 300




def batches_for(task) -> list[int]:
    """Powers of two from 8 up to the data set. The text task stops at 256: with an evaluation of the
    1,091 validation windows every 1/16 epoch, larger batches evaluate every step or two and one
    run takes over ten minutes on two CPU cores."""
    top = min(task.n_train, 256) if task.name == "text" else task.n_train
    out, b = [], 8
    while b <= top:
        out.append(b)
        b *= 2
    return out


def eval_every(task, b: int) -> int:
    # 1/16 epoch between evaluations; TrainResult.target_step interpolates the crossing between them
    return max(1, min(100, task.n_train // (16 * b)))


def to_target(task, b: int, lr: float, warmup: int = 0, seed: int = 0) -> dict:
    cfg = TrainConfig(batch_size=b, lr=lr, until_target=True, epochs=MAX_EPOCHS, warmup_steps=warmup,
                      eval_every=eval_every(task, b), max_seconds=MAX_SECONDS, seed=seed)
    try:
        r = train(task, cfg)
    except DivergedError as e:
        return {"batch": b, "lr": lr, "reached": False, "diverged": True, "steps": None, "error": str(e)}
    return {"batch": b, "lr": lr, "warmup": warmup, "seed": seed, "reached": r.reached_target, "diverged": False,
            "steps": r.target_step, "examples": r.target_examples, "wall_seconds": r.target_seconds,
            "steps_run": r.steps, "stopped": r.stopped_because, "metric": r.final.metric,
            "eval_loss": r.final.eval_loss}


def step_time(task, b: int, steps: int = 25) -> float:
    clock = StepClock()
    train(task, TrainConfig(batch_size=b, steps=steps, eval_every=steps, eval_examples=256), [clock])
    return statistics.median(clock.times[5:])


def load_runs() -> dict:
    return json.loads(RUNS.read_text()) if RUNS.exists() else {}


def sweep(task, runs: dict) -> list[dict]:
    key = task.name
    done = {(r["batch"], round(r["lr"], 12)) for r in runs.get(key, [])}
    for b in batches_for(task):
        centre = task.lr * math.sqrt(b / task.reference_batch)
        for lr in (centre / 2, centre, centre * 2):
            if (b, round(lr, 12)) in done:
                continue
            row = to_target(task, b, lr)
            runs.setdefault(key, []).append(row)
            write_json(RUNS, runs)  # after every run: a killed benchmark keeps what it measured
            print(f"  {task.name} B={b:5d} lr={lr:.4g}: "
                  + (f"{row['steps']} steps" if row["reached"] else ("diverged" if row["diverged"] else "not reached")),
                  flush=True)
    return runs[key]


def best_per_batch(rows: list[dict]) -> dict[int, dict]:
    best = {}
    for r in rows:
        if r["reached"] and (r["batch"] not in best or r["steps"] < best[r["batch"]]["steps"]):
            best[r["batch"]] = r
    return best


def evaluate_task(name: str) -> dict:
    task = load_task(name)
    runs = load_runs()
    print(f"[{name}] sweep", flush=True)
    rows = sweep(task, runs)
    best = best_per_batch(rows)
    if len(best) < 3:
        return {"task": name, "error": "fewer than three batch sizes reached the target"}

    print(f"[{name}] find", flush=True)
    t0 = time.perf_counter()
    # Regret is measured in time, so `fastest` is the objective it judges; capped at the sweep's
    # largest batch, so every recommendation can be checked against the sweep.
    # Anchored like a user with one tuned setting: the sweep's best rate at the task's reference batch.
    ref_lr = best[task.reference_batch]["lr"] if task.reference_batch in best else task.lr
    result = find(task, objective="fastest", max_batch=max(batches_for(task)), ref_lr=ref_lr)
    find_seconds = time.perf_counter() - t0
    rec = result.recommendation
    print(f"[{name}] training at the recommendation B={rec.batch_size} lr={rec.lr:.4g} warm-up {rec.warmup_steps}",
          flush=True)
    at_rec = to_target(task, rec.batch_size, rec.lr, rec.warmup_steps)
    balanced = find(task, objective="balanced", profile=result.profile, max_batch=max(batches_for(task)),
                    ref_lr=ref_lr)
    bal = balanced.recommendation
    at_bal = to_target(task, bal.batch_size, bal.lr, bal.warmup_steps)

    print(f"[{name}] step times", flush=True)
    sizes = sorted(set(best) | {rec.batch_size, bal.batch_size, 32})
    t_step = {b: [] for b in sizes}
    for _ in range(3):  # interleaved: every size sees the same machine state
        for b in sizes:
            if b <= task.n_train:
                t_step[b].append(step_time(task, b))
    t_step = {b: statistics.median(v) for b, v in t_step.items() if v}

    times = {b: r["steps"] * t_step[b] for b, r in best.items()}
    b_best = min(times, key=times.get)
    from batchscope.study.bcrit import fit_bcrit

    fit = fit_bcrit(sorted(best), [best[b]["steps"] for b in sorted(best)])
    rec_time = at_rec["steps"] * t_step[rec.batch_size] if at_rec["reached"] else math.inf
    bal_time = at_bal["steps"] * t_step[bal.batch_size] if at_bal["reached"] else math.inf
    largest = max(batches_for(task))
    habit = {}
    for label, b in (("batch 32", 32), (f"largest that fits ({largest})", largest)):
        habit[label] = times[b] / times[b_best] if b in times else math.inf
    best_run = best[b_best]
    best_wall = best_run["wall_seconds"]
    return {
        "task": name,
        "ref": {"batch": task.reference_batch, "lr": ref_lr, "task_default_lr": task.lr},
        "recommended": {"batch": rec.batch_size, "lr": rec.lr, "warmup": rec.warmup_steps,
                        "objective": rec.objective, "predicted_seconds": rec.predicted["seconds"],
                        "predicted_steps": rec.predicted["steps"]},
        "at_recommendation": {**at_rec, "seconds": rec_time},
        "best": {"batch": b_best, "lr": best_run["lr"], "steps": best_run["steps"], "seconds": times[b_best]},
        "regret": rec_time / times[b_best],
        "balanced": {"batch": bal.batch_size, "lr": bal.lr, "warmup": bal.warmup_steps, **at_bal,
                     "seconds": bal_time, "regret": bal_time / times[b_best]},
        "habits": habit,
        "find_cost": {
            "seconds": find_seconds, "profile_seconds": result.seconds.get("profile"),
            "measuring_seconds": result.seconds.get("measuring"),
            "measuring_examples": result.measuring["examples"],
            "examples_fraction": result.measuring["examples"] / best_run["examples"],
            "measuring_time_fraction": result.measuring["steps"] * t_step.get(result.measuring["batch_size"],
                                                                              math.nan) / times[b_best]
            if result.measuring["batch_size"] in t_step else None,
            "wall_fraction_incl_profile": find_seconds / best_wall if best_wall else None,
        },
        "b_crit": {"measured": fit.b_crit, "measured_low": fit.b_crit_low,
                   "measured_high": fit.b_crit_high,
                   "predicted_over_run": rec.b_crit["value"], "predicted_low": rec.b_crit["low"],
                   "predicted_high": rec.b_crit["high"], "predicted_at_target": rec.b_simple_at_target["value"],
                   "ratio": rec.b_crit["value"] / fit.b_crit if fit.b_crit else None},
        "sweep": {"best_per_batch": {b: {"lr": r["lr"], "steps": r["steps"], "examples": r["examples"],
                                         "step_seconds": t_step.get(b), "seconds": times.get(b)}
                                     for b, r in sorted(best.items())}},
    }


def markdown(results: list[dict]) -> str:
    lines = ["# find vs a measured sweep", "",
             "| task | find fastest: B (lr) | regret | find balanced: B | regret | best in sweep: B (lr) | batch 32 | "
             "largest fits | find examples / run | find time / run (incl. profile) | B_noise predicted [90%] | "
             "B_crit measured [95%] | ratio |",
             "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r or "balanced" not in r:
            lines.append(f"| {r['task']} | {r.get('error', 'older result format: run again')} |")
            continue
        h = list(r["habits"].values())
        c, k = r["find_cost"], r["b_crit"]
        lines.append(
            f"| {r['task']} | {r['recommended']['batch']} ({r['recommended']['lr']:.3g}) | {r['regret']:.2f} | "
            f"{r['balanced']['batch']} | {r['balanced']['regret']:.2f} | "
            f"{r['best']['batch']} ({r['best']['lr']:.3g}) | "
            f"{h[0]:.2f} | {h[1]:.2f} | {c['examples_fraction']:.1%} | {c['wall_fraction_incl_profile']:.0%} | "
            f"{k['predicted_over_run']:.0f} [{k['predicted_low']:.0f}-{k['predicted_high']:.0f}] | "
            f"{k['measured']:.0f} [{k['measured_low']:.0f}-{k['measured_high']:.0f}] | {k['ratio']:.2f} |")
    lines += ["", "regret = time to target at the recommendation / best time in the sweep; times are steps to "
              "target x median step time measured in one interleaved pass. Habits use their best rate from the grid."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="mnist1d,digits,dots,text")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sweep-only", action="store_true", help="only run (and keep) the sweeps")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "find_vs_sweep.json"
    results = {r["task"]: r for r in (json.loads(out.read_text()) if out.exists() else [])}
    for name in args.tasks.split(","):
        if args.sweep_only:
            sweep(load_task(name), load_runs())
            continue
        results[name] = evaluate_task(name)
        write_json(out, list(results.values()))
        (RESULTS / "find_vs_sweep.md").write_text(markdown(list(results.values())))
    print(markdown(list(results.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
