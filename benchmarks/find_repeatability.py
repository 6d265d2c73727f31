"""Do two `find` runs with different seeds give the same answer? Before and after the branch check.

Per task: the hardware is profiled once (so only the seed differs between the two runs), then
`find` runs with seed 0 and seed 1, anchored as the suite's judge anchors it (benchmarks/suite/run.py:
the sweep's best rate at the task's reference batch, capped at the sweep's largest batch; the built-in
tasks at their own rate, uncapped). Each run gives both answers:

- *before*: the prediction the branch check starts from (``verification.predicted``): the model's
  batch and its rate, capped by the SGD stability bound. It is what ``find(verify=False)`` returns
  for the same seed and profile: the measuring run, the fit and the bound come before the check.
- *after*: the checked recommendation (``find`` as it is by default).

Two answers agree when their batch sizes are within one power of two (a ratio of 2 or less). The
table also gives the rates, what the check said (confirmed, kept: cannot separate, measured winner),
and the check's cost next to the measuring run's.

Writes benchmarks/results/find_repeatability.{json,md}.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/find_repeatability.py [--tasks a,b] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "suite"))

from tasks import SUITE  # noqa: E402

from batchscope.hardware import profile_hardware  # noqa: E402
from batchscope.plan.find import find  # noqa: E402
from batchscope.serialize import to_jsonable  # noqa: E402
from batchscope.tasks import load_task  # noqa: E402

RESULTS = HERE / "results"
BUILT_IN = ("dots", "digits", "mnist1d")
AGREE = 2.0     # batch ratio within which two answers agree (one power of two)


def anchors(name: str) -> tuple:
    """(task, ref_lr, max_batch) as the suite's judge uses them; built-in tasks at their own settings."""
    if name in SUITE:
        task = SUITE[name]()
        gt = json.loads((HERE / "suite" / "ground_truth.json").read_text())[name]["summary"]["per_batch"]
        per_batch = {int(b): v for b, v in gt.items()}
        return task, per_batch[task.reference_batch]["lr"], max(per_batch)
    return load_task(name), None, None


def one_find(task, seed: int, profile, ref_lr, max_batch) -> dict:
    t0 = time.perf_counter()
    r = find(task, seed=seed, profile=profile, ref_lr=ref_lr, max_batch=max_batch)
    rec, v = r.recommendation, r.recommendation.verification
    s = rec.evidence.get("stability", {})
    return {"seed": seed, "before": {"batch": v["predicted"]["batch"], "lr": v["predicted"]["lr"]},
            "after": {"batch": rec.batch_size, "lr": rec.lr}, "uncapped_lr": v["predicted"]["uncapped_lr"],
            "verdict": v["verdict"], "separated": v["separated"], "tied": v["tied"],
            "ruled_out": [b["label"] for b in v["branches"] if b["status"].startswith("ruled out")],
            "branches": [{k: b[k] for k in ("label", "batch", "lr", "steps", "examples", "seconds", "loss", "se",
                                            "start_loss", "end_loss", "eval_loss", "status")} for b in v["branches"]],
            "cost": v["cost"], "stability": {k: s.get(k) for k in ("lambda_max", "converged", "bound", "cap",
                                                                    "capped")},
            "measuring": {k: r.measuring[k] for k in ("steps", "examples", "seconds", "batch_size")},
            "predicted_examples": rec.predicted["examples"], "seconds": time.perf_counter() - t0}


def agree(a: dict, b: dict) -> bool:
    return max(a["batch"], b["batch"]) / min(a["batch"], b["batch"]) <= AGREE


def verdict_word(run: dict) -> str:
    if run["separated"]:
        return "winner"
    return "kept (tie)" if run["tied"] else "confirmed"


def task_row(name: str, seeds) -> dict:
    task, ref_lr, max_batch = anchors(name)
    print(f"[{name}] profiling", flush=True)
    profile = profile_hardware(task, max_batch=max_batch)
    runs = []
    for seed in seeds:
        print(f"[{name}] find --seed {seed}", flush=True)
        runs.append(one_find(task, seed, profile, ref_lr, max_batch))
    a, b = runs[0], runs[1]
    return {"task": name, "optimizer": task.optimizer, "ref_lr": ref_lr if ref_lr is not None else task.lr,
            "max_batch": max_batch, "runs": runs, "agree_before": agree(a["before"], b["before"]),
            "agree_after": agree(a["after"], b["after"])}


def _pair(rows, key) -> str:
    return " / ".join(f"{r[key]['batch']} ({r[key]['lr']:.3g})" for r in rows)


def markdown(results: list[dict], summary: dict) -> str:
    lines = ["# find: two seeds, before and after the branch check", "",
             "| task | opt | before: B (lr), seed 0 / 1 | agree | after: B (lr), seed 0 / 1 | agree | check said "
             "(seed 0 / 1) | ruled out | check cost: examples (x measuring run), seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        runs = r["runs"]
        cost = " / ".join(f"{x['cost']['examples']:,} ({x['cost']['share_of_measuring']['examples']:.2g}x), "
                          f"{x['cost']['seconds']:.2g} s" for x in runs)
        ruled = " / ".join(", ".join(x["ruled_out"]) or "-" for x in runs)
        lines.append(f"| {r['task']} | {r['optimizer']} | {_pair(runs, 'before')} | "
                     f"{'yes' if r['agree_before'] else 'no'} | {_pair(runs, 'after')} | "
                     f"{'yes' if r['agree_after'] else 'no'} | {' / '.join(verdict_word(x) for x in runs)} | "
                     f"{ruled} | {cost} |")
    s = summary
    lines += ["", f"## Summary over {s['tasks']} tasks", "",
              f"- agree within one power of two, before the check: {s['agree_before']}/{s['tasks']} "
              f"({s['agree_before'] / s['tasks']:.0%}); after: {s['agree_after']}/{s['tasks']} "
              f"({s['agree_after'] / s['tasks']:.0%})",
              f"- the check's verdicts over {s['runs']} runs: {s['verdicts']}",
              f"- the check's cost, examples as a multiple of the measuring run's: median "
              f"{s['cost_vs_measuring']['median']:.2g}x, range {s['cost_vs_measuring']['min']:.2g}-"
              f"{s['cost_vs_measuring']['max']:.2g}x; as a share of the predicted run's examples: median "
              f"{s['cost_vs_predicted']['median']:.2g}, range {s['cost_vs_predicted']['min']:.2g}-"
              f"{s['cost_vs_predicted']['max']:.2g}",
              "", "before = the model's prediction with the stability cap (what `find --no-verify` gives for the "
              "same seed and profile); after = the checked recommendation. One hardware profile per task, "
              "measured once on this CPU, for both seeds. Suite tasks anchored as in benchmarks/suite/run.py."]
    return "\n".join(lines) + "\n"


def summarise(results: list[dict]) -> dict:
    runs = [x for r in results for x in r["runs"]]
    vm = [x["cost"]["share_of_measuring"]["examples"] for x in runs]
    vp = [x["cost"]["share_of_predicted_run_examples"] for x in runs if x["cost"]["share_of_predicted_run_examples"]]
    words = [verdict_word(x) for x in runs]
    return {"tasks": len(results), "runs": len(runs), "agree_before": sum(r["agree_before"] for r in results),
            "agree_after": sum(r["agree_after"] for r in results),
            "verdicts": {w: words.count(w) for w in sorted(set(words))},
            "cost_vs_measuring": {"median": statistics.median(vm), "min": min(vm), "max": max(vm)},
            "cost_vs_predicted": {"median": statistics.median(vp), "min": min(vp), "max": max(vp)}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=None, help=f"comma-separated (default: the suite, then {', '.join(BUILT_IN)})")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = args.tasks.split(",") if args.tasks else [*SUITE, *BUILT_IN]
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    for name in names:
        results.append(task_row(name, seeds))
        s = summarise(results)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "find_repeatability.json").write_text(json.dumps(
            to_jsonable({"summary": s, "tasks": results}), indent=1) + "\n")
        (args.out / "find_repeatability.md").write_text(markdown(results, s))
    print(markdown(results, summarise(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
