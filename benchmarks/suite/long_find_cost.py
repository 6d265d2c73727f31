"""What `find` costs on the long tier, against the best fixed run: measuring run, timed steps, branches, λ_max probe.

The goal measured: "measuring plus branches cost at most 10% of the best fixed run's examples where that
run exceeds 1,000 steps". For every long task x clock (cpu, gpu, dp8: the clock as the task's hardware
profile, long_anchors.write_profile) x seed (0, 1), `find` runs exactly as the long tier's find arm runs it
(long_anchors.find_only: ``find(task, profile=<the clock's profile>, max_batch=4096, seed=seed,
ref_lr=<the ground truth's best rate at batch 32>)``, the branch check on, its default) and no training run
follows. Counted, in training examples:

- measuring: the measuring run at batch 32 to its budget stop (what long_judge charges as find's measuring);
- timed: the real steps find times after it (TIMING_STEPS whole steps, with their warm-up);
- branches: every branch of the check (verify.cost: steps and examples summed over the branches);
- probe: the λ_max probe's training examples (SGD only; its power iteration reuses them, ``iterations``
  Hessian-vector products, each about two backward passes over them).

The best fixed run under the clock is the long judge's (long_judge.best_fixed: the swept batch with the
least time on the clock; its examples and steps the geometric mean of the ground truth's two seeds at its
best rate). share = (measuring + timed + branches + probe) / best fixed examples; a case is *eligible*
where the best fixed run takes more than 1,000 steps, and *within* where its share is at most 10%. The
recommendation is compared, field by field, with the one stored for the same task, clock and seed in
long_anchor_runs_checked.json (the find arm's runs with the checks): a determinism check.

Each find is stored as it finishes in benchmarks/suite/long_find_cost_runs.json (task|clock|seed), written
atomically, so a killed run resumes; results: benchmarks/results/suite_long_find_cost.{md,json}.

    OMP_NUM_THREADS=1 nice -n 5 env PYTHONPATH=src python benchmarks/suite/long_find_cost.py \\
        [--tasks a,b] [--clocks cpu,gpu,dp8] [--seeds 0,1] [--store PATH] [--report-only] [--name STEM]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import long_anchors as A  # noqa: E402
import long_judge as J  # noqa: E402
from common import pin_malloc, read_json, write_json  # noqa: E402
from tasks import LONG  # noqa: E402

from batchscope.plan.branch_check import BRANCH_SHARE, MIN_BRANCH_STEPS  # noqa: E402

STORE = HERE / "long_find_cost_runs.json"
CHECKED = HERE / "long_anchor_runs_checked.json"
RESULTS = J.RESULTS
NAME = "suite_long_find_cost"
LONG_STEPS = 1000        # the goal counts the cases whose best fixed run takes more steps than this
GOAL_SHARE = 0.10        # of the best fixed run's examples
PARTS = ("measuring", "timed", "branches", "probe")
REC_FIELDS = ("batch", "lr", "warmup", "micro_batch", "b_crit", "b_crit_low", "b_crit_high")


def best_fixed_run(entry: dict, clock) -> dict:
    """The long judge's best fixed run under ``clock``: batch, rate, steps and examples (geometric means)."""
    b = J.best_fixed(entry, clock)
    got = J.arm_seconds(J.fixed_arm(entry, b), None, clock, J.seeds_of(entry))
    return {"batch": b, "lr": entry["best_per_batch"][str(b)]["lr"], "steps": got["steps"],
            "examples": got["examples"], "seconds": got["seconds"]}


def parts(rec: dict) -> dict:
    """A stored find record's examples by part (PARTS); None where find refused."""
    if "error" in rec:
        return None
    return {"measuring": rec["measuring"]["examples"], "timed": rec["timed_steps"]["examples"],
            "branches": rec["verification"]["examples"], "probe": rec["stability"]["examples"]}


def share(cost: dict, best_examples: float) -> dict:
    """Each part's examples, their total, and each as a share of the best fixed run's examples."""
    total = sum(cost.values())
    return {"total": total, "share": total / best_examples,
            "shares": {k: v / best_examples for k, v in cost.items()},
            "share_measuring_branches": (cost["measuring"] + cost["branches"]) / best_examples}


def branch_rule(rec: dict) -> Optional[str]:
    """Which rule set the branches' length: BRANCH_SHARE of the predicted run, or the floor of
    MIN_BRANCH_STEPS steps of the largest batch branched (branch_check.branch_examples)."""
    v = rec.get("verification") or {}
    if not v.get("batches") or not v.get("examples_per_branch"):
        return None
    return "min steps" if v["examples_per_branch"] == MIN_BRANCH_STEPS * max(v["batches"]) else "share"


def same_recommendation(rec: dict, checked: Optional[dict]) -> dict:
    """The recommendation against the stored one: 'same' (every field within 1e-9), the fields that differ,
    or 'no stored run'."""
    if not checked or "recommendation" not in checked:
        return {"verdict": "no stored run", "differs": []}
    if "recommendation" not in rec:
        return {"verdict": "find refused", "differs": []}
    a, b = rec["recommendation"], checked["recommendation"]
    differs = [k for k in REC_FIELDS if not _close(a.get(k), b.get(k))]
    if rec["measuring"]["steps"] != checked["measuring"]["steps"]:
        differs.append("measuring steps")
    return {"verdict": "same" if not differs else "differs", "differs": differs,
            "stored": {k: b.get(k) for k in ("batch", "lr", "warmup")}}


def _close(x, y) -> bool:
    if x is None or y is None:
        return x is y
    return math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=0.0)


def case(task_name: str, clock: str, seed: int, rec: dict, best: dict, checked: Optional[dict]) -> dict:
    """One task x clock x seed: the cost by part, the share of the best fixed run, the flags."""
    cost = parts(rec)
    row = {"task": task_name, "clock": clock, "seed": seed, "best": best,
           "eligible": best["steps"] > LONG_STEPS, "find_seconds": rec.get("find_seconds"),
           "determinism": same_recommendation(rec, checked)}
    if cost is None:
        return {**row, "error": rec["error"], "within": None}
    got = share(cost, best["examples"])
    dominant = max(cost, key=cost.get)
    r, v = rec["recommendation"], rec["verification"]
    return {**row, "examples": cost, **got, "within": got["share"] <= GOAL_SHARE, "dominant": dominant,
            "measuring_steps": rec["measuring"]["steps"], "recommendation": r, "branches": v["branches"],
            "branch_steps": v["steps"], "branch_batches": v["batches"], "examples_per_branch": v["examples_per_branch"],
            "branch_rule": branch_rule(rec), "probe_iterations": rec["stability"]["iterations"],
            # the recommended run as find predicts it (after the check): the branches' length follows it
            "predicted_examples": r["predicted_steps"] * r["batch"],
            "predicted_over_best": r["predicted_steps"] * r["batch"] / best["examples"],
            "seconds": {"measuring": rec["measuring"]["seconds"], "timed": rec["timed_steps"]["seconds"],
                        "branches": v["seconds"]}}


def summary(rows: list[dict]) -> dict:
    """Median and worst share over the eligible cases, how many are within the goal; the same over all."""
    def over(rs):
        ok = [r for r in rs if r.get("share") is not None]
        if not ok:
            return {"cases": len(rs), "measured": 0}
        shares = [r["share"] for r in ok]
        mb = [r["share_measuring_branches"] for r in ok]
        return {"cases": len(rs), "measured": len(ok), "refused": len(rs) - len(ok),
                "median": statistics.median(shares), "worst": max(shares),
                "within": sum(r["within"] for r in ok),
                "within_measuring_branches": sum(r["share_measuring_branches"] <= GOAL_SHARE for r in ok),
                "median_predicted_over_best": statistics.median(r["predicted_over_best"] for r in ok),
                "median_measuring_branches": statistics.median(mb), "worst_measuring_branches": max(mb),
                "dominant": {p: sum(r["dominant"] == p for r in ok) for p in PARTS},
                "branch_rule": {k: sum(r["branch_rule"] == k for r in ok) for k in ("share", "min steps")}}
    det = [r["determinism"]["verdict"] for r in rows]
    return {"eligible": over([r for r in rows if r["eligible"]]), "all": over(rows),
            "determinism": {k: det.count(k) for k in sorted(set(det))}, "goal_share": GOAL_SHARE,
            "long_steps": LONG_STEPS, "branch_share": BRANCH_SHARE, "min_branch_steps": MIN_BRANCH_STEPS}


def summary_line(s: dict) -> str:
    e = s["eligible"]
    if not e.get("measured"):
        return f"No eligible case measured ({e['cases']} eligible)."
    return (f"Eligible cases (best fixed run > {s['long_steps']:,} steps): {e['measured']}"
            + (f" ({e['refused']} refused)" if e["refused"] else "")
            + f"; share of the best fixed run's examples median {e['median']:.1%}, worst {e['worst']:.1%}; "
            f"{e['within']} of {e['measured']} within {s['goal_share']:.0%} (measuring + branches alone: median "
            f"{e['median_measuring_branches']:.1%}, worst {e['worst_measuring_branches']:.1%}, "
            f"{e['within_measuring_branches']} within).")


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.1%}"


def table(rows: list[dict]) -> list[str]:
    head = ["task", "clock", "seed", "measuring: steps, examples", "timed", "branches: n, examples", "probe",
            "total", "best fixed: B, steps, examples", "predicted run / best (examples)", "share", "(meas.+br.)",
            "> 1,000 steps", "within 10%", "largest part", "branch length", "rec. (B, lr)", "= stored"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        b = r["best"]
        best = f"{b['batch']}, {b['steps']:,.0f}, {b['examples']:,.0f}"
        det = r["determinism"]
        same = det["verdict"] + (f" ({', '.join(det['differs'])})" if det["differs"] else "")
        if "error" in r:
            out.append(f"| {r['task']} | {r['clock']} | {r['seed']} | refused: {r['error'][:60]} | | | | | {best} | "
                       f"| | | {'yes' if r['eligible'] else 'no'} | | | | | {same} |")
            continue
        x = r["examples"]
        rec = r["recommendation"]
        out.append(" | ".join([
            f"| {r['task']}", r["clock"], str(r["seed"]), f"{r['measuring_steps']:,}, {x['measuring']:,}",
            f"{x['timed']:,}", f"{r['branches']}, {x['branches']:,}", f"{x['probe']:,}", f"{r['total']:,}", best,
            f"{r['predicted_over_best']:.2f}", _pct(r["share"]), _pct(r["share_measuring_branches"]),
            "yes" if r["eligible"] else "no",
            "yes" if r["within"] else "no", r["dominant"], r["branch_rule"] or "-",
            f"{rec['batch']}, {rec['lr']:.3g}", same]) + " |")
    return out


def markdown(rows: list[dict], s: dict, meta: dict) -> str:
    a = s["all"]
    lines = [
        "# find's cost on the long tier: measuring run, timed steps, branches, λ_max probe", "",
        "Each row is one `find` on a long task, under one clock (the clock as its hardware profile), one seed, "
        "called as the long tier's find arm calls it (benchmarks/suite/long_anchors.py, `find_only`; the "
        "branch check on), trained for real on this CPU with no training run after it. Examples: the measuring "
        "run at batch 32 to its budget stop, the real steps timed after it, every branch of the check, the "
        "λ_max probe's training examples (SGD tasks; its power iteration reuses them). The best fixed run is "
        "the long judge's under that clock (hindsight: least time to the target; examples and steps the "
        "geometric mean of two seeds). share = all four parts / the best fixed run's examples; '(meas.+br.)' "
        "counts the measuring run and the branches only. 'predicted run / best': the examples find predicts its "
        "recommended run needs (after the check) over the best fixed run's; each branch's examples follow that "
        "prediction. '= stored': the recommendation against the one "
        "stored for the same key in benchmarks/suite/long_anchor_runs_checked.json (batch, rate, warm-up, "
        "micro-batch, B_crit and its interval within 1e-9, and the measuring run's steps). 'branch length': "
        f"which rule set each branch's examples, `BRANCH_SHARE` = {s['branch_share']:g} of the predicted run "
        f"('share') or the floor of {s['min_branch_steps']} steps of the largest batch branched ('min steps': "
        "also where the measuring run stopped at its step cap, which leaves the branches at their floor).",
        "", f"**{summary_line(s)}**", "", *table(rows), "",
        f"All {a['cases']} cases: share median {_pct(a.get('median'))}, worst {_pct(a.get('worst'))}, "
        f"{a.get('within', 0)} within {s['goal_share']:.0%}. Largest part: "
        + ", ".join(f"{k} in {v}" for k, v in a.get("dominant", {}).items() if v)
        + ". find's predicted run / the best fixed run, in examples: median "
        + f"{a.get('median_predicted_over_best', 0):.2f}"
        + ". Branch length set by: " + ", ".join(f"{k} in {v}" for k, v in a.get("branch_rule", {}).items())
        + ". Recommendation against the stored one: "
        + ", ".join(f"{k} {v}" for k, v in s["determinism"].items()) + ".", "",
        f"How measured: {meta['finds_stored']} finds, each run once and stored as it finished; find's own "
        f"seconds {meta['find_minutes']:.1f} min in all, load average {meta['load_min']:.1f}-{meta['load_max']:.1f} "
        f"(one torch thread, nice'd, on a shared {meta['cores']}-core machine: the examples do not depend on it, "
        f"the seconds in the JSON do). Store: {meta['store']}."]
    return "\n".join(lines) + "\n"


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=None, help="comma-separated (default: every task with a ground truth)")
    ap.add_argument("--clocks", default=",".join(A.CLOCKS))
    ap.add_argument("--seeds", default=",".join(map(str, A.SEEDS)))
    ap.add_argument("--store", type=Path, default=STORE)
    ap.add_argument("--report-only", action="store_true", help="write the results from the store; run nothing")
    ap.add_argument("--name", default=None, help=f"results file stem (default {NAME})")
    return ap.parse_args(argv)


def main(argv=None, registry=LONG, gt_path: Path = J.STORE, checked_path: Path = CHECKED, out_dir: Path = RESULTS,
         profiles: Path = J.PROFILES, name: str = NAME, max_batch: int = A.MAX_BATCH) -> int:
    """``max_batch``: find's, as the find arm's Setting gives it (long_anchors.MAX_BATCH)."""
    args = parse(argv)
    name = args.name or name
    gt, checked, runs = read_json(gt_path), read_json(checked_path), read_json(args.store)
    ready = [n for n in registry if "summary" in gt.get(n, {})]
    try:
        clocks = A._choice("clock", args.clocks, A.CLOCKS)
        names = A._choice("task", args.tasks, ready) if args.tasks else ready
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError as e:
        print(f"error: {e} (tasks need a ground truth: run long_tier.py)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    rows, new = [], 0
    for task_name in names:
        s = A.Setting(registry[task_name](), gt[task_name], max_batch=max_batch, profiles=profiles)
        cl = J.task_clocks(s.task, s.entry)
        for clock in clocks:
            best = best_fixed_run(s.entry, cl[clock])
            for seed in seeds:
                key = f"{task_name}|{clock}|{seed}"
                if key not in runs and not args.report_only:
                    t0 = time.perf_counter()
                    runs[key] = {"task": task_name, "clock": clock, "seed": seed, **A.find_only(s, clock, seed),
                                 "wall": time.perf_counter() - t0, "load": os.getloadavg()[0]}
                    write_json(args.store, runs)
                    new += 1
                if key not in runs:
                    continue
                rows.append(case(task_name, clock, seed, runs[key], best,
                                 checked.get(f"find|{task_name}|{clock}|{seed}")))
                r = rows[-1]
                print(f"  {key}: " + (f"share {r['share']:.1%} (measuring {r['examples']['measuring']:,}, timed "
                                      f"{r['examples']['timed']:,}, branches {r['examples']['branches']:,}, probe "
                                      f"{r['examples']['probe']:,}; best fixed {best['examples']:,.0f}), "
                                      f"recommendation {r['determinism']['verdict']}"
                                      if "error" not in r else f"refused: {r['error']}"), flush=True)
    if not rows:
        print("nothing stored yet", flush=True)
        return 1
    s = summary(rows)
    meta = {"finds_run": new, "finds_stored": len(rows), "cores": os.cpu_count(),
            "find_minutes": sum(r.get("find_seconds") or 0.0 for r in rows) / 60,
            "load_min": min(runs[f"{r['task']}|{r['clock']}|{r['seed']}"].get("load", 0.0) for r in rows),
            "load_max": max(runs[f"{r['task']}|{r['clock']}|{r['seed']}"].get("load", 0.0) for r in rows),
            "store": str(args.store.relative_to(HERE.parent.parent)) if args.store.is_relative_to(HERE.parent.parent)
            else str(args.store)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"{name}.json", {"summary": s, "meta": meta, "cases": rows})
    md = markdown(rows, s, meta)
    (out_dir / f"{name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    pin_malloc()
    sys.exit(main())
