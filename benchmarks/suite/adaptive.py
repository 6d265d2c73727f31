"""Adaptive batch size on the validation suite, against the suite's ground truth (fixed-batch sweeps).

A second check of ``train(..., adaptive=AdaptiveConfig(...))`` beside benchmarks/adaptive_vs_fixed.py,
on the eleven tasks the controller's noise factor was calibrated on (benchmarks/suite/tasks.py).
Per task:

1. a hardware profile (``profile_hardware(task)``, one torch thread), kept in
   benchmarks/suite/adaptive_profiles/<task>.json so reruns reuse it;
2. adaptive runs to the target from the task's reference batch at the ground truth's best rate
   there, capped at the sweep's largest batch, seeds 0, 1, 2, evaluated at the ground truth's own
   cadence at the reference batch (every ``eval_every`` x reference-batch examples, ~40 evaluations
   before its crossing) with the crossing interpolated between evaluations, as the ground truth's
   steps are; every finished run is kept in benchmarks/suite/adaptive_runs.json (a killed benchmark
   resumes);
3. one interleaved timing pass after the runs, over every batch of the sweep and every batch the
   adaptive runs used, plain steps and measured ones (two micro-batches, monitor attached);
4. time to target = steps x step time from that pass: per sweep batch, the ground truth's steps
   (geometric mean of two seeds at its best rate) x t(B), the best fixed batch being the least;
   adaptive, each step at its own batch (a measured step at the measured time), median over seeds.

Writes benchmarks/results/suite_adaptive.{json,md}.

    PYTHONPATH=src nice -n 5 python benchmarks/suite/adaptive.py [--tasks a,b] [--rounds 5] [--store runs.json]

``--store`` keeps the runs elsewhere (a run is keyed by its setting, not by the code: after a change
to the controller, measure into a new store so the committed one is not reused).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

from common import EVALS_BEFORE_TARGET, commit, pin_malloc, read_json, write_json  # noqa: E402
from tasks import KIND, SUITE  # noqa: E402
from adaptive_vs_fixed import (MAX_SECONDS, adaptive_run, adaptive_seconds, summarise, task_profile,  # noqa: E402
                               timing_pass)

GROUND_TRUTH = HERE / "ground_truth.json"
RUNS = HERE / "adaptive_runs.json"
PROFILES = HERE / "adaptive_profiles"
RESULTS = HERE.parent / "results"
SEEDS = (0, 1, 2)


def setting(name: str, entry: dict) -> dict:
    """Where the adaptive runs start and what they may use, all from the ground truth."""
    per_batch = {int(b): v for b, v in entry["summary"]["per_batch"].items()}
    b_ref = entry["reference_batch"]
    lr = per_batch[b_ref]["lr"]
    same = [r for r in entry["runs"] if r["batch"] == b_ref and r["seed"] == 0
            and math.isclose(r["lr"], lr, rel_tol=1e-9)]
    every = same[0]["eval_every"] if same else max(1, int(per_batch[b_ref]["steps"] // EVALS_BEFORE_TARGET))
    return {"task": name, "b0": b_ref, "lr": lr, "max_batch": max(per_batch), "eval_every": every,
            "max_seconds": MAX_SECONDS}


def run_key(s: dict, seed: int) -> str:
    return f"{s['task']}/B{s['b0']}/lr{s['lr']:.6g}/max{s['max_batch']}/every{s['eval_every']}/seed{seed}"


def adaptive_runs(task, s: dict, store: dict, save) -> list[dict]:
    """The seeds' adaptive runs, each kept in the store as soon as it finishes."""
    profile = None
    out = []
    for seed in SEEDS:
        key = run_key(s, seed)
        if key not in store:
            if profile is None:
                print(f"[{task.name}] hardware profile", flush=True)
                PROFILES.mkdir(exist_ok=True)
                t0 = time.perf_counter()
                profile = task_profile(task, PROFILES / f"{task.name}.json")
                print(f"[{task.name}]   alpha {profile.alpha:.3g}s beta {profile.beta:.3g}s/example "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
            t0 = time.perf_counter()
            store[key] = {**adaptive_run(task, profile, s["b0"], s["lr"], s["max_batch"], seed,
                                         every=s["eval_every"], max_seconds=s["max_seconds"]),
                          "wall": time.perf_counter() - t0, "load": os.getloadavg()[0]}
            save()
            r = store[key]
            what = (f"{r['steps']:.1f} steps, {r['batch_sizes'][0]} -> {r['final_batch']}" if r["reached"]
                    else "diverged" if r["diverged"] else f"not reached ({r['stopped']})")
            print(f"[{task.name}] adaptive seed {seed}: {what} ({r['wall']:.1f}s wall, load {r['load']:.1f})",
                  flush=True)
        out.append(store[key])
    return out


def step_times(task, sizes: list[int], store: dict, save, rounds: int, which: str = "A") -> dict:
    """One interleaved timing pass over ``sizes`` (plain and measured steps), kept in the store."""
    key = f"{task.name}/timing-{which}/{rounds}/" + ",".join(map(str, sizes))
    if key not in store:
        print(f"[{task.name}] timing pass {which} over {len(sizes)} batches x (plain, measured) x {rounds} rounds",
              flush=True)
        t0 = time.perf_counter()
        store[key] = {**timing_pass(task, sizes, rounds), "_wall": time.perf_counter() - t0,
                      "_load": os.getloadavg()[0]}
        save()
    return {k: v for k, v in store[key].items() if not k.startswith("_")}


def visited(run: dict) -> list[int]:
    """The batches a run trained with, in order, repeats collapsed."""
    out = []
    for b in run.get("batch_sizes", []):
        if not out or out[-1] != b:
            out.append(b)
    return out


def times_to_target(per_batch: dict, runs: list[dict], t: dict) -> dict:
    """Fixed batches (ground-truth steps x t(B)) and adaptive (its own steps, each at its batch) on one pass."""
    fixed = {b: v["steps"] * t[f"{b}/plain"] for b, v in per_batch.items()}
    b_best = min(fixed, key=fixed.get)
    ad = summarise(runs, lambda r: adaptive_seconds(r, t), "")
    return {"fixed": fixed, "best": b_best, "adaptive": ad, "ratio": ad["seconds"] / fixed[b_best]}


def decompose(runs: list[dict], per_batch: dict, tt: dict) -> dict:
    """Per reached run: the cost of where it ended (fixed at its final batch / best fixed), of getting
    there (its time / fixed at its final batch), and its rate there / the sweep's best rate there."""
    t = tt["step_seconds"]
    rows = [{"final_batch": r["final_batch"], "choice": tt["fixed"][r["final_batch"]] / tt["fixed"][tt["best"]],
             "path": adaptive_seconds(r, t) / tt["fixed"][r["final_batch"]],
             "lr_over_tuned": r.get("final_lr", math.nan) / per_batch[r["final_batch"]]["lr"]}
            for r in runs if r["reached"] and r["final_batch"] in tt["fixed"]]
    return {k: statistics.median(x[k] for x in rows) if rows else math.nan
            for k in ("choice", "path", "lr_over_tuned")} | {"per_run": rows}


def evaluate_task(name: str, entry: dict, store: dict, save, rounds: int) -> dict:
    task = SUITE[name]()
    s = setting(name, entry)
    gt = entry["summary"]
    per_batch = {int(b): v for b, v in gt["per_batch"].items()}
    print(f"[{name}] start B={s['b0']} lr={s['lr']:.3g}, max {s['max_batch']}, evaluations every "
          f"{s['eval_every']} x {s['b0']} examples (ground truth B_crit {gt['b_crit']:.0f}, best B "
          f"{gt['best_batch']})", flush=True)
    runs = adaptive_runs(task, s, store, save)
    used = {b for r in runs for b in r.get("batch_sizes", [])}
    sizes = sorted(b for b in set(per_batch) | used if b <= task.n_train)
    t = step_times(task, sizes, store, save, rounds)
    tt = {**times_to_target(per_batch, runs, t), "step_seconds": t}
    # A/A control: a second pass, same sizes, to show how far the ratio moves with the machine's state
    control = times_to_target(per_batch, runs, step_times(task, sizes, store, save, rounds, "B"))
    fixed, b_best, ad, b_ref = tt["fixed"], tt["best"], tt["adaptive"], s["b0"]
    return {"task": name, "kind": KIND.get(name, ""), "optimizer": entry["optimizer"], "setting": s,
            "b_crit": gt["b_crit"], "b_crit_interval": [gt["b_crit_low"], gt["b_crit_high"]],
            "best_fixed": {"batch": b_best, "lr": per_batch[b_best]["lr"], "steps": per_batch[b_best]["steps"],
                           "seconds": fixed[b_best]},
            "batch_32_seconds": fixed.get(32), "reference_seconds": fixed[b_ref],
            "fixed_seconds": {str(b): v for b, v in sorted(fixed.items())}, "step_seconds": t,
            "adaptive": {**ad, "ratio_to_best": tt["ratio"], "reference_over_adaptive": fixed[b_ref] / ad["seconds"],
                         "batch_32_over_adaptive": fixed[32] / ad["seconds"] if 32 in fixed else None,
                         "visited": [visited(r) for r in runs], "stopped": [r.get("stopped") for r in runs],
                         "decomposition": decompose(runs, per_batch, tt)},
            "control": {"best_batch": control["best"], "ratio_to_best": control["ratio"]},
            "runs": runs}


def summary(results: list[dict]) -> dict:
    ratios = [r["adaptive"]["ratio_to_best"] for r in results]
    return {"tasks": len(results), "median_ratio": statistics.median(ratios), "worst_ratio": max(ratios),
            "worst_task": results[ratios.index(max(ratios))]["task"],
            "within_1.1": sum(x <= 1.1 for x in ratios), "within_0.9": sum(x <= 0.9 for x in ratios),
            "median_reference_over_adaptive": statistics.median(r["adaptive"]["reference_over_adaptive"]
                                                                for r in results),
            "control_median_ratio": statistics.median(r["control"]["ratio_to_best"] for r in results),
            "control_largest_change": max(abs(r["control"]["ratio_to_best"] / r["adaptive"]["ratio_to_best"] - 1)
                                          for r in results)}


def _cell_visited(res: dict) -> str:
    seqs = [" -> ".join(map(str, v)) for v in res["adaptive"]["visited"]]
    return seqs[0] if len(set(seqs)) == 1 else " / ".join(seqs)


def _row(res: dict) -> str:
    a, best = res["adaptive"], res["best_fixed"]
    d = a["decomposition"]
    capped = [x for x in a["stopped"] if x and x.startswith("time limit")]
    note = f"; {len(capped)} run(s) stopped at the {res['setting']['max_seconds']:g}s cap" if capped else ""
    b32 = res["batch_32_seconds"]
    cells = [res["task"], res["optimizer"], f"{res['b_crit']:.0f}",
             f"{best['batch']} ({best['seconds']:.3g}s, {best['steps']:.0f} steps)",
             f"{a['seconds']:.3g}s ({a['reached']}{note})", f"{a['ratio_to_best']:.2f}",
             _cell_visited(res), f"{a['steps']:.0f}" if a["steps"] else "-",
             f"{res['setting']['b0']}: {res['reference_seconds']:.3g}s", f"{a['reference_over_adaptive']:.2f}",
             f"{b32:.3g}s" if b32 is not None else "-", f"{d['choice']:.2f}", f"{d['path']:.2f}",
             f"{d['lr_over_tuned']:.2f}", f"{res['control']['ratio_to_best']:.2f}"]
    return "| " + " | ".join(cells) + " |"


def observations(results: list[dict]) -> list[str]:
    """Per run, from its own log: the moves and their reasons, held non-finite estimates, the final
    measuring cadence (steps between measurements; 1 means every step was measured at the end)."""
    lines = []
    for res in results:
        for r in res["runs"]:
            if not r.get("reached"):
                why = r.get('stopped') or r.get('error')
                lines.append(f"- {res['task']} seed {r.get('seed')}: not reached ({why})")
                continue
            moves = "; ".join(r["move_reasons"]) or "no move"
            extra = [f"{r['nonfinite_estimates']} non-finite estimates held"] if r.get("nonfinite_estimates") else []
            extra.append(f"{sum(r['measured'])} of {math.ceil(r['steps'])} steps measured, measuring every "
                         f"{r['measure_every']} at the end")
            if r.get("rate_checks"):
                capped = sum(c["capped"] for c in r["rate_checks"])
                lams = ", ".join(format(c["lambda_max"], ".3g") for c in r["rate_checks"])
                extra.append(f"{len(r['rate_checks'])} rate rise(s) checked against the stability bound "
                             f"({capped} capped, λ_max {lams}; {r['check_seconds']:.3g}s charged)")
            extra += [f"rolled back at step {b['step']} ({b['trigger']}: {b['from_batch']} -> {b['to_batch']})"
                      for b in r.get("rollbacks", [])]
            lines.append(f"- {res['task']} seed {r['seed']} ({r['steps']:.0f} steps, lr {r['final_lr']:.3g} at the "
                         f"end): {moves}; {', '.join(extra)}")
    return lines


def markdown(results: list[dict], s: dict, meta: dict) -> str:
    head = ["task", "opt", "B_crit (ground truth)", "best fixed B (time, steps)", "adaptive time, median [reached]",
            "adaptive / best fixed", "batches adaptive visited (start -> final; per seed if they differ)",
            "adaptive steps", "reference B: time", "reference / adaptive", "batch 32 time",
            "fixed at final B / best", "adaptive / fixed at final B", "lr at final B / tuned",
            "adaptive / best, pass B (A/A)"]
    lines = ["# Adaptive batch size on the validation suite", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [_row(r) for r in results]
    lines += ["", f"Summary over {s['tasks']} tasks: adaptive / best fixed median {s['median_ratio']:.2f}, worst "
              f"{s['worst_ratio']:.2f} ({s['worst_task']}); within 1.1x of the best fixed batch on "
              f"{s['within_1.1']}/{s['tasks']}, within 0.9x (faster by 10% or more) on {s['within_0.9']}/"
              f"{s['tasks']}; reference batch / adaptive median {s['median_reference_over_adaptive']:.2f}. "
              "A/A control (a "
              f"second timing pass): median ratio {s['control_median_ratio']:.2f}, largest change of a task's ratio "
              f"{s['control_largest_change']:.0%}.", "",
              "Time to target = steps x step time from one interleaved timing pass per task (after the runs; "
              f"{meta['rounds']} rounds, the least per-round median). Fixed batches: the ground truth's steps "
              "(geometric mean of two seeds at the best rate for that batch, benchmarks/suite/ground_truth.json); "
              "the best fixed batch is the least of these times, so it has the sweep's choice of batch and rate "
              "per batch with hindsight. Adaptive: three seeds from the reference batch at the ground truth's "
              "best rate there, capped at the sweep's largest batch, each step charged at its own batch (a "
              "measured step at the time of a step split in two with the monitor attached), median over seeds. "
              "Both count steps to the target interpolated between evaluations, at the ground truth's "
              "evaluation cadence at the reference batch (in examples). The three columns after batch 32 split the "
              "ratio (medians over seeds): where adaptive ended (the ground truth's time at its final batch / the "
              "best fixed time), how it got there (its time / the ground truth's time at that batch: the steps "
              "at the starting batch, measured steps, a rate other than the tuned one), and its rate at the "
              "final batch / the sweep's best rate there (the AdaScale gain for SGD, sqrt(B/B0) for Adam).",
              "", "## What each run did", "", *observations(results),
              "", f"Run: {meta['wall'] / 60:.0f} min wall, one torch thread, load average {meta['load_min']:.1f}-"
              f"{meta['load_max']:.1f} on {os.cpu_count()} cores; code {meta['commit']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(SUITE))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the interleaved timing pass")
    ap.add_argument("--store", type=Path, default=RUNS,
                    help=f"the runs store (default {RUNS.relative_to(HERE.parent.parent)})")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    gt, store = read_json(GROUND_TRUTH), read_json(args.store)
    t0, loads, results = time.perf_counter(), [os.getloadavg()[0]], []
    RESULTS.mkdir(exist_ok=True)
    for name in args.tasks.split(","):
        t_task = time.perf_counter()
        results.append(evaluate_task(name, gt[name], store, lambda: write_json(args.store, store), args.rounds))
        loads.append(os.getloadavg()[0])
        a = results[-1]["adaptive"]
        print(f"[{name}] adaptive {a['seconds']:.3g}s = {a['ratio_to_best']:.2f} x best fixed "
              f"(B={results[-1]['best_fixed']['batch']}); {time.perf_counter() - t_task:.0f}s for the task, "
              f"{(time.perf_counter() - t0) / 60:.1f} min so far, load {loads[-1]:.1f}", flush=True)
        s = summary(results)
        meta = {"wall": time.perf_counter() - t0, "rounds": args.rounds, "threads": args.threads,
                "load_min": min(loads), "load_max": max(loads), "loads": loads, "commit": commit()}
        write_json(RESULTS / "suite_adaptive.json", {"summary": s, "meta": meta, "tasks": results})
        (RESULTS / "suite_adaptive.md").write_text(markdown(results, s, meta))
    print(markdown(results, s, meta), flush=True)
    return 0


if __name__ == "__main__":
    pin_malloc()
    sys.exit(main())
