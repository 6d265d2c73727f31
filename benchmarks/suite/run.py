"""Judge `batchscope find` on every suite task against the stored ground truth.

Per task (ground truth: benchmarks/suite/ground_truth.json, made by ground_truth.py):
1. `find` with the default objective and with `fastest`, anchored like a user with one tuned
   setting (the sweep's best rate at the task's reference batch) and capped at the sweep's largest
   batch so every recommendation can be compared with the sweep;
2. the recommended batch, rate and warm-up trained to the target for real, two seeds (steps: their
   geometric mean);
3. one interleaved timing pass over the sweep's batches and the recommended ones, so the regret
   (time to target at the recommendation / best time in the sweep, time = steps x t(B)) is a ratio
   of times taken in the same machine state;
4. predicted B_noise (with its stated 90% interval) against the measured critical batch, and the
   measuring cost: examples of find's measuring run / examples of the sweep's best run.

Writes benchmarks/results/suite.json and suite.md. Training runs at a recommendation are cached in
benchmarks/suite/judge_runs.json (same task, batch, rate, warm-up and seed: same run).

``--clock gpu`` or ``--clock dp8`` judges under a stated clock instead (clocks.py: the GPU-shaped
stand-in, 8 such devices): find is given the clock as its hardware profile, and every time, the sweep's
and the recommendation's, is steps x the clock's t(B), so no timing pass runs and the load of this
machine does not enter. Written to suite_gpu.json / suite_dp8.json (and .md).

    nice -n 5 python benchmarks/suite/run.py [--tasks a,b] [--threads 1] [--clock cpu|gpu|dp8]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).parent))

import clocks as C  # noqa: E402
from common import (EVALS_BEFORE_TARGET, geomean, interleaved_step_seconds, pin_malloc, read_json,  # noqa: E402
                    run_to_target, write_json)
from long_judge import clock_profile  # noqa: E402
from tasks import KIND, SUITE  # noqa: E402

from batchscope.plan.devices import gradient_bytes  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE.parent / "results"
SHORT_RUN = 100          # steps: a task whose best run is shorter than this is listed apart
SEEDS = (0, 1)
GOALS = {"regret_max": 1.2, "regret_median": 1.1, "within_2x": 0.8, "coverage": 0.8, "cost": 0.05}
CLOCKS = ("cpu", "gpu", "dp8")
STATED_DP = (f"{C.DP_DEVICES} GPU-shaped devices data parallel over {C.DP_LINK} (each task's gradient bytes "
             "all-reduced per step)")


def stated_clock(task, name: str) -> Optional[C.Clock]:
    """The stated clock ``name`` of ``task`` (None for this machine's, which a timing pass measures)."""
    return None if name == "cpu" else C.stated(gradient_bytes(task.make_model()))[name]


def check_summary(rec) -> dict:
    """What find's branch check did, in a few figures (empty when it did not run)."""
    v = rec.verification or {}
    if not v.get("enabled"):
        return {}
    b = v.get("budget") or {}
    figs = v["branches"]
    return {"winner": v["winner"]["label"], "separated": v["separated"], "tied": v["tied"],
            "branches": len(figs), "ruled_out": sum(x["status"].startswith("ruled out") for x in figs),
            "not_taken": [x["label"] for x in figs if x["status"] == "ahead, not taken"],
            "measuring_share": b.get("measuring_share"), "branches_share": b.get("branches_share")}


def _find():
    try:
        from batchscope import find
    except ImportError:
        from batchscope.plan.find import find
    return find


def default_objective() -> str:
    """The objective `find` uses when none is given (read from its signature, not assumed)."""
    import inspect

    return inspect.signature(_find()).parameters["objective"].default


def run_find(task, objective: str, *, ref_lr: float, max_batch: int, profile=None) -> tuple[dict, object]:
    """`find`'s recommendation as plain numbers, and the hardware profile for reuse."""
    t0 = time.perf_counter()
    result = _find()(task, objective=objective, profile=profile, max_batch=max_batch, ref_lr=ref_lr)
    rec = result.recommendation
    out = {"objective": objective, "batch": rec.batch_size, "lr": rec.lr, "warmup": rec.warmup_steps,
           "b_noise": rec.b_crit["value"], "b_noise_low": rec.b_crit["low"], "b_noise_high": rec.b_crit["high"],
           "b_noise_level": rec.b_crit.get("level", 0.9), "b_crit_at_target": rec.b_simple_at_target["value"],
           "predicted_steps": rec.predicted["steps"], "measuring_examples": result.measuring["examples"],
           "measuring_steps": result.measuring["steps"], "measuring_batch": result.measuring["batch_size"],
           "check": check_summary(rec),
           "seconds": time.perf_counter() - t0, "noise_steps": result.noise_steps,
           "measuring_history": [{"step": h["step"], "examples": h["examples"], "loss": h["loss"],
                                  "eval_loss": h["eval_loss"], "metric": h["metric"]}
                                 for h in result.measuring["history"]]}
    return out, result.profile


def train_at(task, batch: int, lr: float, warmup: int, gt_fit: dict, cache: dict, save) -> dict:
    """Both seeds at (batch, lr, warm-up) to the target (cached); steps = their geometric mean."""
    expected = gt_fit["s_min"] * (1 + gt_fit["b_crit"] / batch)
    rows = []
    for seed in SEEDS:
        key = f"{task.name}|{batch}|{lr:.6g}|{warmup}|{seed}"
        if key not in cache:
            cache[key] = run_to_target(task, batch, lr, seed=seed, warmup=warmup,
                                       eval_every=int(expected // EVALS_BEFORE_TARGET),
                                       max_steps=int(10 * expected) + 100)
            save()
        rows.append(cache[key])
    reached = all(r["reached"] for r in rows)
    return {"batch": batch, "lr": lr, "warmup": warmup, "reached": reached,
            "steps": geomean([r["steps"] for r in rows]) if reached else None,
            "seed_steps": [r["steps"] for r in rows]}


def judge_task(name: str, entry: dict, cache: dict, save, objectives, registry=SUITE, clock: str = "cpu") -> dict:
    task = registry[name]()
    gt = entry["summary"]
    per_batch = {int(b): v for b, v in gt["per_batch"].items()}
    ref_lr = per_batch[task.reference_batch]["lr"]
    max_b = max(per_batch)
    stated = stated_clock(task, clock)
    recs, profile = {}, (clock_profile(task, stated, list(per_batch)) if stated else None)
    for obj in objectives:
        print(f"[{name}] find --objective {obj}", flush=True)
        recs[obj], profile = run_find(task, obj, ref_lr=ref_lr, max_batch=max_b, profile=profile)
    trained = {obj: train_at(task, r["batch"], r["lr"], r["warmup"], gt, cache, save) for obj, r in recs.items()}
    batches = list(per_batch) + [r["batch"] for r in recs.values()]
    if stated:
        t = {b: stated.step_seconds(b) for b in batches}
    else:
        print(f"[{name}] step times", flush=True)
        t = interleaved_step_seconds(task, batches)
    times = {b: v["steps"] * t[b] for b, v in per_batch.items()}
    b_best = min(times, key=times.get)
    out = {"task": name, "clock": clock, "kind": KIND.get(name, ""), "n_train": task.n_train,
           "optimizer": task.optimizer,
           "ref_batch": task.reference_batch, "ref_lr": ref_lr, "step_seconds": {str(b): s for b, s in t.items()},
           "best": {"batch": b_best, "lr": per_batch[b_best]["lr"], "steps": per_batch[b_best]["steps"],
                    "examples": per_batch[b_best]["examples"], "seconds": times[b_best]},
           "b_crit": {"measured": gt["b_crit"], "low": gt["b_crit_low"], "high": gt["b_crit_high"],
                      "at_edge": gt["b_crit_at_edge"]},
           "short": per_batch[b_best]["steps"] < SHORT_RUN, "objectives": {}}
    for obj, r in recs.items():
        tr = trained[obj]
        secs = tr["steps"] * t[r["batch"]] if tr["reached"] else math.inf
        out["objectives"][obj] = {**{k: v for k, v in r.items() if k not in ("noise_steps", "measuring_history")},
                                  "trained": tr, "seconds": secs, "regret": secs / times[b_best]}
    first = recs[objectives[0]]
    out["noise_steps"], out["measuring_history"] = first["noise_steps"], first["measuring_history"]
    out["prediction"] = {"b_noise": first["b_noise"], "low": first["b_noise_low"], "high": first["b_noise_high"],
                         "level": first["b_noise_level"], "b_crit_at_target": first["b_crit_at_target"],
                         "ratio": first["b_noise"] / gt["b_crit"],
                         "covered": first["b_noise_low"] <= gt["b_crit"] <= first["b_noise_high"]}
    out["cost"] = first["measuring_examples"] / per_batch[b_best]["examples"]
    return out


def summary(results: list[dict], default: str) -> dict:
    """Median and worst regret per objective, B_crit ratio and coverage over every task; the measuring
    cost over the tasks whose best run is long enough for a 5% measurement (``short`` ones apart)."""
    long_ = [r for r in results if not r["short"]]
    out = {"tasks": len(results), "short_tasks": [r["task"] for r in results if r["short"]], "default": default}
    for obj in results[0]["objectives"]:
        reg = [r["objectives"][obj]["regret"] for r in results]
        out[f"regret_{obj}"] = {"median": statistics.median(reg), "worst": max(reg),
                                "within_1.2": sum(x <= 1.2 for x in reg) / len(reg)}
    ratios = [r["prediction"]["ratio"] for r in results]
    out["b_crit_ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                           "within_2x": sum(0.5 <= x <= 2 for x in ratios) / len(ratios)}
    out["coverage"] = sum(r["prediction"]["covered"] for r in results) / len(results)
    costs = [r["cost"] for r in (long_ or results)]
    out["cost"] = {"median": statistics.median(costs), "max": max(costs), "over": "long" if long_ else "all",
                   "within_5%": sum(c <= GOALS["cost"] for c in costs) / len(costs)}
    return out


def _row(r: dict, objectives) -> str:
    p, k = r["prediction"], r["b_crit"]
    cells = [r["task"], r["kind"], f"{r['best']['batch']} ({r['best']['lr']:.3g}), {r['best']['steps']:.0f} steps"]
    for obj in objectives:
        o = r["objectives"][obj]
        cells.append(f"{o['batch']} ({o['lr']:.3g}{', wu ' + str(o['warmup']) if o['warmup'] else ''})")
        cells.append("not reached" if not math.isfinite(o["regret"]) else f"{o['regret']:.2f}")
    cells.append(check_words(r["objectives"][objectives[0]].get("check") or {}))
    cells += [f"{p['b_noise']:.0f} [{p['low']:.0f}-{p['high']:.0f}]",
              f"{k['measured']:.0f} [{k['low']:.0f}-{k['high']:.0f}]",
              f"{p['ratio']:.2f}", "yes" if p["covered"] else "no", f"{r['cost']:.1%}"]
    return "| " + " | ".join(cells) + " |"


def check_words(c: dict) -> str:
    """The branch check of the first objective in a table cell."""
    if not c:
        return "off"
    how = "separated" if c["separated"] else "tie" if c["tied"] else "confirmed"
    extra = [f"{c['ruled_out']} ruled out"] if c["ruled_out"] else []
    extra += [f"{', '.join(c['not_taken'])} ahead, not taken"] if c["not_taken"] else []
    cost = (f"; {c['measuring_share']:.1%} + {c['branches_share']:.1%}" if c.get("measuring_share") is not None
            else "")
    return f"{c['winner']} ({how}{'; ' + '; '.join(extra) if extra else ''}{cost})"


def markdown(results: list[dict], s: dict) -> str:
    objectives = list(results[0]["objectives"])
    clock = results[0].get("clock", "cpu")
    head = ["task", "kind", "best in sweep: B (lr), steps"]
    for obj in objectives:
        head += [f"find {obj}: B (lr)", "regret"]
    head += [f"check ({objectives[0]}): chosen; measuring + branches of the predicted run",
             "B_noise predicted [90%]", "B_crit measured [95%]", "ratio", "covered", "cost"]
    stated = C.gpu_shaped().description if clock == "gpu" else STATED_DP
    title = "" if clock == "cpu" else f", clock '{clock}': {stated}"
    lines = [f"# find judged on the validation suite{title}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [_row(r, objectives) for r in results if not r["short"]]
    short = [r for r in results if r["short"]]
    if short:
        lines += ["", f"Listed apart for the measuring cost: the best run takes under {SHORT_RUN} steps, and find's "
                  "measuring run needs 30 steps at the reference batch at least, so it cannot stay within 5% of "
                  "such a run (regret, B_crit and coverage below include these tasks):", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += [_row(r, objectives) for r in short]
    lines += ["", f"## Summary over {s['tasks']} tasks (default objective: `{s['default']}`)", ""]
    for obj in objectives:
        g = s[f"regret_{obj}"]
        lines.append(f"- regret, `{obj}`: median {g['median']:.2f}, worst {g['worst']:.2f}, "
                     f"{g['within_1.2']:.0%} of tasks within 1.2")
    c = s["b_crit_ratio"]
    lines += [f"- predicted / measured B_crit: median {c['median']:.2f}, range {c['min']:.2f}-{c['max']:.2f}, "
              f"within 2x on {c['within_2x']:.0%} of tasks",
              f"- the stated 90% interval covers the measured B_crit on {s['coverage']:.0%} of tasks",
              f"- measuring cost (examples / best run's examples, {s['cost']['over']} tasks): median "
              f"{s['cost']['median']:.1%}, worst {s['cost']['max']:.1%}, within 5% on {s['cost']['within_5%']:.0%}",
              "", "regret = time to target at the recommendation (two seeds, geometric mean of steps x t(B)) / the "
              "best time in the sweep; t(B) " + ("from one interleaved timing pass in this run" if clock == "cpu"
                                                 else f"the stated clock '{clock}', also find's hardware profile")
              + ". find is anchored at the sweep's best rate at the task's reference batch and capped at the "
              "sweep's largest batch."]
    return "\n".join(lines) + "\n"


def main(argv=None, registry=SUITE, store_path: Path = HERE / "ground_truth.json",
         out_dir: Path = RESULTS, cache_path: Path = HERE / "judge_runs.json") -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=None, help="comma-separated (default: every task in the ground truth)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--objectives", default=None, help="default: find's default objective, then the other of "
                                                           "fastest and balanced")
    ap.add_argument("--out", type=Path, default=None, help=f"folder for suite.json and suite.md (default {RESULTS})")
    ap.add_argument("--clock", choices=CLOCKS, default="cpu", help="this machine's, timed (default), or a stated one")
    args = ap.parse_args(argv)
    stem = "suite" if args.clock == "cpu" else f"suite_{args.clock}"
    out_dir = args.out or out_dir
    torch.set_num_threads(args.threads)
    store = read_json(store_path)
    names = args.tasks.split(",") if args.tasks else [n for n in registry if "summary" in store.get(n, {})]
    default = default_objective()
    objectives = (args.objectives.split(",") if args.objectives
                  else [default] + [o for o in ("fastest", "balanced") if o != default])
    cache = read_json(cache_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        if "summary" not in store.get(name, {}):
            print(f"[{name}] no ground truth yet: run ground_truth.py --tasks {name}", flush=True)
            continue
        results.append(judge_task(name, store[name], cache, lambda: write_json(cache_path, cache), objectives,
                                  registry, args.clock))
    if not results:
        return 1
    # tasks not judged in this call keep their last judgement (one file for the whole suite)
    judged = {r["task"] for r in results}
    kept = [r for r in read_json(out_dir / f"{stem}.json").get("tasks", []) if r["task"] not in judged
            and r["task"] in registry and list(r["objectives"]) == objectives]
    results = sorted(results + kept, key=lambda r: list(registry).index(r["task"]))
    s = summary(results, default)
    write_json(out_dir / f"{stem}.json", {"summary": s, "tasks": results})
    (out_dir / f"{stem}.md").write_text(markdown(results, s))
    print(markdown(results, s))
    return 0


if __name__ == "__main__":
    pin_malloc()
    sys.exit(main())
