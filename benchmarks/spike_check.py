"""Does any recommended setting spike the loss? `find`'s recommendation and adaptive training, per task.

The claim checked: no setting recommended by `find` or taken by `train --adaptive` sends the smoothed
training loss above 1.5x its start, on any task of the validation suite or any built-in task. The
figure is the branch check's own (``batchscope.plan.branch_check.peak_ratio``): the largest trailing
mean of the per-step training losses (a window of a quarter of the steps, 2 to 20) over the training
loss at initialisation (step 0, on up to 2,048 training examples); above ``SPIKE`` = 1.5 the check
would rule the rate out. A diverged run counts with the ratio it reached before it stopped (inf for a
non-finite loss).

Per task (the 11 short suite tasks of benchmarks/suite/tasks.py and the built-in dots, digits,
mnist1d, text) and seed:

1. `find` with its defaults (default objective, branch check on), anchored as the suite anchors it:
   the sweep's best rate at the task's reference batch, capped at the sweep's largest batch
   (suite: benchmarks/suite/ground_truth.json, as suite/run.py; built-in: find_vs_sweep.json, as
   find_vs_sweep.py), with the hardware profile stored for the task on this machine
   (suite/adaptive_profiles/, results/adaptive_vs_fixed_profile_*.json) and ``seed``;
2. the recommendation (batch, rate, warm-up) trained to the target with the suite's
   ``run_to_target`` (suite: the judge's cadence and step cap from the ground truth's fit;
   built-in: find_vs_sweep's cadence, the suite's caps of 30,000 steps and 60 s of training), its
   peak ratio and where it falls; the branch check's own branches' peak ratios beside it;
3. adaptive training from the reference batch at that rate, as suite/adaptive.py (suite) and
   adaptive_vs_fixed.py (built-in) start it (``adaptive_run``): its peak ratio over every step
   trained (rolled-back steps included), its roll-backs and whether it diverged.

4. every recommendation whose run spiked, trained again at the other seeds (is it the setting or the
   seed?).

Every finished unit (one `find` + its run, one adaptive run, one repeat) is kept in
benchmarks/results/spike_check_runs.json (written atomically), so a killed run resumes. Results:
benchmarks/results/spike_check.{md,json}.

    PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 5 python benchmarks/spike_check.py [--tasks a,b] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
SUITE_DIR = HERE / "suite"
sys.path.insert(0, str(SUITE_DIR))
sys.path.insert(1, str(HERE))

from common import EVALS_BEFORE_TARGET, commit, pin_malloc, read_json, run_to_target, write_json  # noqa: E402
from tasks import SUITE  # noqa: E402
import adaptive as suite_adaptive  # noqa: E402
from adaptive_vs_fixed import MAX_SECONDS as ADAPTIVE_MAX_SECONDS, adaptive_run  # noqa: E402
from find_vs_sweep import batches_for, eval_every  # noqa: E402

from batchscope import load_task  # noqa: E402
from batchscope.hardware import HardwareProfile  # noqa: E402
from batchscope.plan.branch_check import SPIKE, peak_ratio  # noqa: E402
from batchscope.plan.find import find  # noqa: E402

RESULTS = HERE / "results"
STORE = RESULTS / "spike_check_runs.json"
BUILT_IN = ("dots", "digits", "mnist1d", "text")
GROUND_TRUTH = SUITE_DIR / "ground_truth.json"
FIND_VS_SWEEP = RESULTS / "find_vs_sweep.json"


# ---- where each task starts: the suite's anchors ------------------------------------------------

def plan_for(name: str) -> dict:
    """The anchor (reference batch and rate), the cap, the stored profile and the cadences for one task."""
    if name in SUITE:
        entry = read_json(GROUND_TRUTH)[name]
        gt = entry["summary"]
        per_batch = {int(b): v for b, v in gt["per_batch"].items()}
        s = suite_adaptive.setting(name, entry)
        return {"source": "suite", "ref_batch": s["b0"], "ref_lr": s["lr"], "max_batch": max(per_batch),
                "profile": str(SUITE_DIR / "adaptive_profiles" / f"{name}.json"),
                "fit": {"s_min": gt["s_min"], "b_crit": gt["b_crit"]}, "adaptive_every": s["eval_every"],
                "adaptive_max_seconds": s["max_seconds"]}
    fv = next(r for r in json.loads(FIND_VS_SWEEP.read_text()) if r["task"] == name)
    best = [int(b) for b in fv["sweep"]["best_per_batch"]]
    task = load_task(name)
    return {"source": "built-in", "ref_batch": fv["ref"]["batch"], "ref_lr": fv["ref"]["lr"],
            "max_batch": max(batches_for(task)), "adaptive_max_batch": max(best),
            "profile": str(RESULTS / f"adaptive_vs_fixed_profile_{name}.json"), "fit": None,
            "adaptive_every": None, "adaptive_max_seconds": ADAPTIVE_MAX_SECONDS}


def make_task(name: str):
    return SUITE[name]() if name in SUITE else load_task(name)


# ---- the two units of work --------------------------------------------------------------------

def branch_peaks(verification: dict) -> list[dict]:
    """The branch check's branches, each with the same figure (peak over the parent's loss at the fork)."""
    out = []
    for b in verification.get("branches", []):
        r = peak_ratio(b["losses"], b["start_loss"])
        out.append({"label": b["label"], "batch": b["batch"], "lr": b["lr"], "status": b["status"],
                    "peak_ratio": None if math.isnan(r) else r})
    return out


def find_unit(task, plan: dict, profile, seed: int) -> dict:
    """`find` (defaults, branch check on) and its recommendation trained to the target."""
    t0 = time.perf_counter()
    result = find(task, profile=profile, max_batch=plan["max_batch"], ref_lr=plan["ref_lr"], seed=seed)
    rec = result.recommendation
    find_seconds = time.perf_counter() - t0
    if plan["fit"]:      # the judge's cadence and cap (suite/run.py): from the ground truth's fitted steps
        expected = plan["fit"]["s_min"] * (1 + plan["fit"]["b_crit"] / rec.batch_size)
        kw = {"eval_every": int(expected // EVALS_BEFORE_TARGET), "max_steps": int(10 * expected) + 100}
    else:                # find_vs_sweep's cadence, the suite's caps
        kw = {"eval_every": eval_every(task, rec.batch_size)}
    t1 = time.perf_counter()
    run = run_to_target(task, rec.batch_size, rec.lr, seed=seed, warmup=rec.warmup_steps, **kw)
    ver = rec.verification or {}
    return {"objective": rec.objective, "batch": rec.batch_size, "lr": rec.lr, "warmup": rec.warmup_steps,
            "predicted_steps": rec.predicted["steps"], "find_seconds": find_seconds,
            "run_seconds": time.perf_counter() - t1, "run": run,
            "check": {"enabled": bool(ver.get("enabled")), "winner": ver.get("winner"),
                      "verdict": ver.get("verdict"), "branches": branch_peaks(ver)}}


def adaptive_unit(task, plan: dict, profile, seed: int) -> dict:
    t0 = time.perf_counter()
    r = adaptive_run(task, profile, plan["ref_batch"], plan["ref_lr"], plan.get("adaptive_max_batch",
                     plan["max_batch"]), seed, every=plan["adaptive_every"], max_seconds=plan["adaptive_max_seconds"])
    keep = ("seed", "reached", "diverged", "error", "steps", "steps_run", "stopped", "final_batch", "final_lr",
            "moves", "rollbacks", "peak_ratio", "peak_step", "start_loss", "rebound")
    out = {k: r[k] for k in keep if k in r}
    out["visited"] = suite_adaptive.visited(r)
    out["wall"] = time.perf_counter() - t0
    return out


# ---- tables -------------------------------------------------------------------------------------

def _ratio(x) -> str:
    return "-" if x is None else "inf" if x == math.inf else f"{x:.3f}"


def _outcome(r: dict) -> str:
    if r.get("diverged"):
        return "diverged"
    if r.get("reached"):
        return f"reached ({r['steps']:.0f} steps)"
    return f"not reached ({r.get('stopped', '?')}, {r.get('steps_run', '?')} steps)"


def rows_of(store: dict, names, seeds) -> list[dict]:
    """One row per (task, seed) with both arms, for the tasks and seeds done."""
    out = []
    for name in names:
        for seed in seeds:
            f, a = store.get(f"{name}/find/seed{seed}"), store.get(f"{name}/adaptive/seed{seed}")
            if f or a:
                out.append({"task": name, "seed": seed, "source": (f or a)["source"], "find": f, "adaptive": a})
    return out


def spikes(rows: list[dict]) -> list[dict]:
    """Every run whose peak ratio exceeds SPIKE, with where."""
    out = []
    for r in rows:
        f, a = r["find"], r["adaptive"]
        if f and f["run"].get("peak_ratio") is not None and f["run"]["peak_ratio"] > SPIKE:
            out.append({"task": r["task"], "seed": r["seed"], "arm": "find",
                        "setting": f"B={f['batch']} lr {f['lr']:.4g} warm-up {f['warmup']}",
                        "ratio": f["run"]["peak_ratio"], "step": f["run"]["peak_step"]})
        if a and a.get("peak_ratio") is not None and a["peak_ratio"] > SPIKE:
            out.append({"task": r["task"], "seed": r["seed"], "arm": "adaptive",
                        "setting": f"from B={a['visited'][0] if a.get('visited') else '?'}: "
                                   + " -> ".join(map(str, a.get("visited", []))),
                        "ratio": a["peak_ratio"], "step": a["peak_step"]})
    return out


def summary(rows: list[dict]) -> dict:
    runs = [("find", r["task"], r["seed"], r["find"]["run"]) for r in rows if r["find"]]
    runs += [("adaptive", r["task"], r["seed"], r["adaptive"]) for r in rows if r["adaptive"]]
    rated = [x for x in runs if x[3].get("peak_ratio") is not None]
    top = max(rated, key=lambda x: x[3]["peak_ratio"]) if rated else None
    branches = [(r["task"], r["seed"], b) for r in rows if r["find"] for b in r["find"]["check"]["branches"]
                if b["peak_ratio"] is not None]
    btop = max(branches, key=lambda x: x[2]["peak_ratio"]) if branches else None
    rebounds = [x for x in runs if x[3].get("rebound") is not None]
    rtop = max(rebounds, key=lambda x: x[3]["rebound"]) if rebounds else None
    return {"runs": len(runs), "find_runs": sum(x[0] == "find" for x in runs),
            "adaptive_runs": sum(x[0] == "adaptive" for x in runs), "over_spike": spikes(rows),
            "largest": {"arm": top[0], "task": top[1], "seed": top[2], "ratio": top[3]["peak_ratio"],
                        "step": top[3]["peak_step"]} if top else None,
            "largest_rebound": {"arm": rtop[0], "task": rtop[1], "seed": rtop[2], "ratio": rtop[3]["rebound"]}
            if rtop else None,
            "diverged": [f"{x[1]} seed {x[2]} ({x[0]})" for x in runs if x[3].get("diverged")],
            "rollbacks": sum(len(r["adaptive"].get("rollbacks", [])) for r in rows if r["adaptive"]),
            "branches": len(branches), "branches_over_spike": sum(b[2]["peak_ratio"] > SPIKE for b in branches),
            "branches_ruled_out": sum(b[2]["status"].startswith("ruled out") for b in branches),
            "largest_branch": {"task": btop[0], "seed": btop[1], "label": btop[2]["label"],
                               "batch": btop[2]["batch"], "lr": btop[2]["lr"], "status": btop[2]["status"],
                               "ratio": btop[2]["peak_ratio"]} if btop else None}


def markdown(rows: list[dict], s: dict, meta: dict, again: list[str] = ()) -> str:
    head = ["task", "seed", "find: B (lr, warm-up)", "find run: peak ratio (step)", "rebound", "find run",
            "branch check", "adaptive: batches", "adaptive: peak ratio (step)", "rebound", "roll-backs",
            "adaptive run"]
    lines = ["# Loss spikes at the recommended settings", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        f, a = r["find"], r["adaptive"]
        cells = [r["task"], str(r["seed"])]
        if f:
            fr = f["run"]
            w = f["check"]["winner"] or {}
            top = max((b["peak_ratio"] for b in f["check"]["branches"] if b["peak_ratio"] is not None), default=None)
            cells += [f"{f['batch']} ({f['lr']:.3g}, {f['warmup']})", f"{_ratio(fr.get('peak_ratio'))} "
                      f"({fr.get('peak_step')})", _ratio(fr.get("rebound")), _outcome(fr),
                      f"{w.get('label', '-')}; branch peaks max "
                      f"{_ratio(top)}"]
        else:
            cells += ["-"] * 5
        if a:
            rb = a.get("rollbacks", [])
            cells += [" -> ".join(map(str, a.get("visited", []))) or "-",
                      f"{_ratio(a.get('peak_ratio'))} ({a.get('peak_step')})", _ratio(a.get("rebound")),
                      "; ".join(f"step {b['step']} {b['trigger']} {b['from_batch']}->{b['to_batch']}" for b in rb)
                      or "0", _outcome(a)]
        else:
            cells += ["-"] * 5
        lines.append("| " + " | ".join(cells) + " |")
    lg, lb = s["largest"], s["largest_branch"]
    lines += ["", "## Summary", "",
              f"- runs: {s['runs']} ({s['find_runs']} at find's recommendation, {s['adaptive_runs']} adaptive), "
              f"over {len({r['task'] for r in rows})} tasks, seeds {', '.join(map(str, meta['seeds']))}",
              f"- runs whose smoothed loss rose above {SPIKE:g}x its start: {len(s['over_spike'])}"]
    lines += [f"  - {x['task']} seed {x['seed']}, {x['arm']} ({x['setting']}): {_ratio(x['ratio'])} at step "
              f"{x['step']}" for x in s["over_spike"]]
    if again:
        lines += ["- the spiking settings trained again at the other seeds (same batch, rate, warm-up, cadence):",
                  *again]
    if lg:
        lines.append(f"- largest peak ratio: {_ratio(lg['ratio'])} ({lg['task']} seed {lg['seed']}, {lg['arm']}, "
                     f"step {lg['step']})")
    if s["largest_rebound"]:
        x = s["largest_rebound"]
        lines.append(f"- largest rebound (smoothed loss over its lowest value before it): {_ratio(x['ratio'])} "
                     f"({x['task']} seed {x['seed']}, {x['arm']})")
    lines += [f"- diverged: {', '.join(s['diverged']) or 'none'}; adaptive roll-backs: {s['rollbacks']}"]
    if lb:
        lines.append(f"- the branch check's own branches ({s['branches']}): {s['branches_over_spike']} above "
                     f"{SPIKE:g}x the parent's loss at the fork, {s['branches_ruled_out']} ruled out; largest "
                     f"{_ratio(lb['ratio'])} ({lb['task']} seed "
                     f"{lb['seed']}, {lb['label']} B={lb['batch']} lr {lb['lr']:.3g}, {lb['status']})")
    lines += ["", "## How it was measured", "",
              "Peak ratio = the largest trailing mean of the run's per-step training losses (window: a quarter of "
              "the steps, 2 to 20; `batchscope.plan.branch_check.peak_ratio`, the branch check's spike rule) over "
              "the training loss at initialisation (step 0, on up to 2,048 training examples); the step is where "
              "that trailing mean ends. Rebound = the largest value of the same trailing mean over its lowest "
              "value before it (a rise late in a run, from far below the start, shows there and not in the ratio). "
              "A diverged run keeps the ratio it had reached (inf: a non-finite loss). "
              "find: default objective, branch check on, anchored at the sweep's best rate at the reference batch "
              "and capped at the sweep's largest batch (suite: ground_truth.json; built-in: find_vs_sweep.json), "
              "the stored hardware profile of the task, `seed` passed to find and to the training run; the "
              "recommendation trained to the target with the suite's run_to_target (suite: the judge's cadence "
              "and cap from the ground truth's fit; built-in: 1/16 epoch between evaluations, 30,000 steps and 60 "
              "s of training at most). Adaptive: `adaptive_run` from the reference batch at that rate, as "
              "suite/adaptive.py (suite) and adaptive_vs_fixed.py (built-in); its ratio counts every step trained, "
              "rolled-back ones included. 'branch peaks max': the largest of the same figure over find's own "
              "branches (their start: the measuring run's smoothed loss at the fork). A run from scratch is at its "
              "highest loss at initialisation on most tasks, so a ratio below 1 is the usual case.", "",
              f"Run: {meta['unit_wall'] / 60:.0f} min wall over the stored units (find, its run, adaptive; "
              f"repeats apart), {meta['threads']} torch thread(s); this report's invocation: load average "
              f"{meta['load_min']:.1f}-{meta['load_max']:.1f} on {os.cpu_count()} cores; code of the units "
              f"{meta['commit']}."]
    return "\n".join(lines) + "\n"


def repeat_key(name: str, f: dict, seed: int) -> str:
    return f"{name}/repeat/B{f['batch']}/lr{f['lr']:.6g}/wu{f['warmup']}/seed{seed}"


def repeats(store: dict, names, seeds, save) -> None:
    """Every find recommendation that spiked, trained again (same batch, rate, warm-up and cadence) at
    the other seeds: is the spike the setting's or the seed's?"""
    for name in names:
        for seed in seeds:
            f = store.get(f"{name}/find/seed{seed}")
            if not f or f["run"].get("peak_ratio") is None or f["run"]["peak_ratio"] <= SPIKE:
                continue
            task = None
            for other in seeds:
                key = repeat_key(name, f, other)
                if other == seed or key in store:
                    continue
                task = task or make_task(name)
                print(f"[{name}] repeat of seed {seed}'s setting at seed {other}", flush=True)
                r = run_to_target(task, f["batch"], f["lr"], seed=other, warmup=f["warmup"],
                                  eval_every=f["run"]["eval_every"])
                store[key] = {"task": name, "seed": other, "of_seed": seed, "run": r}
                save()


def repeat_lines(store: dict, names) -> list[str]:
    out = []
    for name in names:
        for key in sorted(k for k in store if k.startswith(f"{name}/repeat/")):
            r = store[key]["run"]
            out.append(f"  - {name}, seed {store[key]['of_seed']}'s setting ({key.split('/', 2)[2].rsplit('/', 1)[0]}) "
                       f"at seed {store[key]['seed']}: {_ratio(r.get('peak_ratio'))} at step {r.get('peak_step')}, "
                       f"{_outcome(r)}")
    return out


def report(store: dict, names, t0: float, loads: list, args, echo: bool = False) -> None:
    """NAME.{json,md} from every unit in the store for ``names`` (rewritten after each unit)."""
    done_seeds = sorted({int(k.rsplit("seed", 1)[1]) for k in store
                         if k.split("/")[0] in names and k.split("/")[1] in ("find", "adaptive")})
    rows = rows_of(store, names, done_seeds)
    if not rows:
        return
    units = [v for k, v in store.items() if k.split("/")[0] in names and k.split("/")[1] in ("find", "adaptive")]
    meta = {"wall": time.perf_counter() - t0, "unit_wall": sum(u.get("unit_wall", 0.0) for u in units),
            "threads": args.threads, "seeds": done_seeds,
            "load_min": min(loads), "load_max": max(loads),
            "commit": ", ".join(sorted({u.get("commit", "not recorded") for u in units}))}
    s = summary(rows)
    args.out.mkdir(exist_ok=True)
    write_json(args.out / f"{args.name}.json", {"summary": s, "meta": meta, "rows": rows})
    md = markdown(rows, s, meta, repeat_lines(store, names))
    (args.out / f"{args.name}.md").write_text(md)
    if echo:
        print(md, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join([*SUITE, *BUILT_IN]))
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (each task runs them in order)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--store", type=Path, default=STORE)
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    ap.add_argument("--name", default="spike_check", help="results file stem: NAME.md, NAME.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names, seeds = args.tasks.split(","), [int(s) for s in args.seeds.split(",")]
    store = read_json(args.store)
    t0, loads, code = time.perf_counter(), [os.getloadavg()[0]], commit()

    def save():
        write_json(args.store, store)
        loads.append(os.getloadavg()[0])
        report(store, names, t0, loads, args)

    for seed in seeds:
        for name in names:
            plan, task, profile = None, None, None
            for arm, unit in (("find", find_unit), ("adaptive", adaptive_unit)):
                key = f"{name}/{arm}/seed{seed}"
                if key in store:
                    continue
                if task is None:
                    plan, task = plan_for(name), make_task(name)
                    profile = HardwareProfile.load(plan["profile"])
                print(f"[{name} seed {seed}] {arm}", flush=True)
                t1 = time.perf_counter()
                store[key] = {"task": name, "seed": seed, "source": plan["source"],
                              "anchor": {k: plan[k] for k in ("ref_batch", "ref_lr", "max_batch")},
                              **unit(task, plan, profile, seed), "unit_wall": time.perf_counter() - t1,
                              "load": os.getloadavg()[0], "commit": code}
                save()
                got = store[key]["run"] if arm == "find" else store[key]
                print(f"[{name} seed {seed}] {arm}: peak ratio {_ratio(got.get('peak_ratio'))} at step "
                      f"{got.get('peak_step')}, {_outcome(got)}; {time.perf_counter() - t1:.0f}s, "
                      f"{(time.perf_counter() - t0) / 60:.1f} min so far", flush=True)
    repeats(store, names, seeds, save)
    report(store, names, t0, loads, args, echo=True)
    return 0


if __name__ == "__main__":
    pin_malloc()
    sys.exit(main())
