"""Memory ceiling: predicted (fit + confirm) vs the true ceiling found by exhaustive bisection.

For each built-in task and a budget small enough that memory, not the data set, binds on this
machine, both searches run with the same real probe (one training step in a forked child, its
peak resident size measured; see batchscope.hardware.memory). The true ceiling is what doubling
from 1 and then bisecting to a single example finds. Reported: both ceilings, the relative gap,
probe steps, steps over budget and seconds. The two searches alternate within each repeat so
machine load affects both alike.

    PYTHONPATH=src python benchmarks/memory_ceiling.py [--repeats 3] [--tasks dots,digits,mnist1d,text]

Writes benchmarks/results/memory_ceiling.json and .md.

The CUDA comparison (the same on a GPU, beside PyTorch Lightning's batch-size finder and
Accelerate's find_executable_batch_size) needs a GPU; none was available when these results were
taken, so it is not in them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from batchscope.hardware import bisect_ceiling, cpu_memory_probe, device_facts, find_ceiling, format_bytes
from batchscope.serialize import write_json
from batchscope.tasks import load_task

MiB = 2**20
BUDGETS = {  # MiB; chosen so the ceiling is well inside the training set
    "dots": [2, 3],
    "digits": [16, 32],
    "mnist1d": [8, 32],
    "text": [32, 128],
}
RESULTS = Path(__file__).parent / "results"


def timed(search, *args, **kw):
    t0 = time.perf_counter()
    c = search(*args, **kw)
    return c, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tasks", default=",".join(BUDGETS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.tasks.split(","):
        task = load_task(name)
        probe = cpu_memory_probe(task)
        for mib in BUDGETS[name]:
            budget = mib * MiB
            for rep in range(args.repeats):
                pred, pred_s = timed(find_ceiling, probe, budget, task.n_train)
                true, true_s = timed(bisect_ceiling, probe, budget, task.n_train)
                row = {
                    "task": name, "budget": budget, "repeat": rep,
                    "predicted": pred.max_batch, "first_prediction": pred.first_prediction,
                    "true": true.max_batch, "true_limited_by": true.limited_by,
                    "gap": pred.max_batch / true.max_batch - 1,
                    "first_gap": (pred.first_prediction / true.max_batch - 1) if pred.first_prediction else None,
                    "predicted_steps": pred.steps, "predicted_over": pred.over_budget, "predicted_seconds": pred_s,
                    "bisection_steps": true.steps, "bisection_over": true.over_budget, "bisection_seconds": true_s,
                    "m1": pred.fit.slope if pred.fit else None, "probes": [p.to_dict() for p in pred.probes],
                }
                rows.append(row)
                print(f"{name:8s} {format_bytes(budget):>10s} #{rep}: predicted {pred.max_batch:5d} "
                      f"({pred.steps:2d} steps, {pred.over_budget} over, {pred_s:5.1f} s)  true {true.max_batch:5d} "
                      f"({true.steps:2d} steps, {true.over_budget} over, {true_s:5.1f} s)  gap {row['gap']:+.2%}",
                      flush=True)
    summary = []
    for name in args.tasks.split(","):
        for mib in BUDGETS[name]:
            rs = [r for r in rows if r["task"] == name and r["budget"] == mib * MiB]
            summary.append({
                "task": name, "budget_mib": mib,
                "true_median": statistics.median(r["true"] for r in rs),
                "predicted_median": statistics.median(r["predicted"] for r in rs),
                "worst_abs_gap": max(abs(r["gap"]) for r in rs),
                "first_prediction_worst_abs_gap": max(abs(r["first_gap"]) for r in rs if r["first_gap"] is not None),
                "predicted_steps_median": statistics.median(r["predicted_steps"] for r in rs),
                "predicted_over_max": max(r["predicted_over"] for r in rs),
                "bisection_steps_median": statistics.median(r["bisection_steps"] for r in rs),
                "bisection_over_median": statistics.median(r["bisection_over"] for r in rs),
                "predicted_seconds_median": statistics.median(r["predicted_seconds"] for r in rs),
                "bisection_seconds_median": statistics.median(r["bisection_seconds"] for r in rs),
                "within_5pct": all(abs(r["gap"]) <= 0.05 for r in rs),
                "at_most_2_over": all(r["predicted_over"] <= 2 for r in rs),
            })
    lines = [
        "# Memory ceiling: prediction vs exhaustive bisection (CPU)",
        "",
        f"Device: {device_facts('cpu')['name']}, torch threads 1, {args.repeats} repeats per budget, "
        "probe = one training step in a forked child (peak resident size).",
        "",
        "| task | budget | true ceiling | predicted | worst gap | fit-only worst gap | steps (pred / bisect) "
        "| over budget (pred max / bisect median) | seconds (pred / bisect) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['task']} | {s['budget_mib']} MiB | {s['true_median']:g} | {s['predicted_median']:g} "
            f"| {s['worst_abs_gap']:.1%} | {s['first_prediction_worst_abs_gap']:.1%} "
            f"| {s['predicted_steps_median']:g} / {s['bisection_steps_median']:g} "
            f"| {s['predicted_over_max']} / {s['bisection_over_median']:g} "
            f"| {s['predicted_seconds_median']:.1f} / {s['bisection_seconds_median']:.1f} |")
    ok5 = all(s["within_5pct"] for s in summary)
    ok2 = all(s["at_most_2_over"] for s in summary)
    lines += ["", f"Goal within 5% in every run: {'met' if ok5 else 'MISSED'}; at most two steps over budget in "
              f"every run: {'met' if ok2 else 'MISSED'}.",
              "", "Gap = predicted / true - 1 (negative: the prediction is below the true ceiling). "
              "'Fit-only' is the line fitted to the small probes alone, before any confirming step.",
              "", "Not run here: the CUDA comparison with Lightning's and Accelerate's batch-size finders "
              "(no GPU was available for these results)."]
    md = "\n".join(lines) + "\n"
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "memory_ceiling.json", {"device": device_facts("cpu"), "summary": summary, "runs": rows})
    (RESULTS / "memory_ceiling.md").write_text(md)


if __name__ == "__main__":
    main()
