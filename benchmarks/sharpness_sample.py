"""Is the stability cap an artefact of the 512 examples λ_max is measured on?

`find` caps an SGD rate at 0.9 x the bound 2(1+μ)/λ_max, λ_max found by power iteration of
Hessian-vector products on 512 training examples at the measuring run's end
(``plan.verify.measure_stability``). The top eigenvalue of a sample's Hessian is biased upward
against the full training loss's (a smaller sample has a rougher spectrum), and the bound with it
downward, so a cap that bites might be the sample's doing. Per SGD task of the validation suite and
built-in SGD task, and seed: `find`'s measuring run (``plan.find.measure``, the reference batch, the
sweep's best rate there, as the suite's judge anchors it), then λ_max at its end state on 512, 2,048
and 8,192 training examples (fewer where the set is smaller), each sample drawn as `find` draws it.
The figure is λ_max on the largest sample over λ_max on 512; beside it, the sweep's best rate at the
largest batch over the bound on 512 examples (above 1: the sweep trains above what the cap allows).

Writes benchmarks/results/sharpness_sample.{json,md}.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/sharpness_sample.py [--tasks a,b] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "suite"))

from common import read_json, write_json  # noqa: E402
from tasks import SUITE  # noqa: E402

from batchscope.errors import TaskError  # noqa: E402
from batchscope.plan.find import measure  # noqa: E402
from batchscope.plan.verify import measure_stability  # noqa: E402
from batchscope.tasks import load_task  # noqa: E402

RESULTS = HERE / "results"
SAMPLES = (512, 2048, 8192)
BUILT_IN = ("dots", "digits", "mnist1d")


def anchor(name: str, task, gt: dict) -> tuple[float, dict]:
    """The reference rate (the sweep's best at the reference batch, else the task's) and the sweep's
    best rate per batch (empty for a task without a ground truth)."""
    per_batch = gt.get(name, {}).get("summary", {}).get("per_batch", {})
    best = {int(b): v["lr"] for b, v in per_batch.items()}
    return best.get(task.reference_batch, task.lr), best


def one(name: str, task, seed: int, gt: dict) -> dict:
    ref_lr, best = anchor(name, task, gt)
    m = measure(task, task.reference_batch, ref_lr, 0.05, device="cpu", seed=seed, amp=False)
    rows = []
    for n in sorted({min(k, task.n_train) for k in SAMPLES}):
        t0 = time.perf_counter()
        s = measure_stability(task, m, seed, batch=n)
        rows.append({"examples": s["examples"], "lambda_max": s["lambda_max"], "bound": s["bound"],
                     "converged": s["converged"], "iterations": s["iterations"], "seconds": time.perf_counter() - t0})
    top = max(best) if best else None
    return {"task": name, "seed": seed, "ref_lr": ref_lr, "momentum": task.momentum,
            "samples": rows, "ratio": rows[-1]["lambda_max"] / rows[0]["lambda_max"],
            "sweep_batch": top, "sweep_lr": best.get(top) if top else None,
            "sweep_over_bound": best[top] / rows[0]["bound"] if top else None}


def markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# λ_max on 512 training examples against larger samples, at find's measuring-run end", "",
             "| task | seed | λ_max on 512 / 2,048 / 8,192 examples (converged) | largest / 512 | bound on 512 | "
             "sweep's best rate at its largest batch | / bound |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lam = " / ".join(f"{s['lambda_max']:.4g} ({s['examples']:,}{'' if s['converged'] else ', not converged'})"
                         for s in r["samples"])
        sweep = f"{r['sweep_lr']:.3g} (B={r['sweep_batch']})" if r["sweep_lr"] else "-"
        over = f"{r['sweep_over_bound']:.2f}" if r["sweep_over_bound"] else "-"
        lines.append(f"| {r['task']} | {r['seed']} | {lam} | {r['ratio']:.3f} | {r['samples'][0]['bound']:.3g} | "
                     f"{sweep} | {over} |")
    ratios = [r["ratio"] for r in rows]
    lines += ["", f"Over {len(rows)} measurements: largest-sample / 512-example λ_max median "
              f"{statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}. A ratio below 1 would "
              "mean the 512-example sample overstates λ_max and so cuts the cap; the sweep / bound column says "
              "where the sweep's best rate lies above the bound find would allow.", "",
              f"One torch thread, {meta['cores']} cores, load average {meta['load'][0]:.1f} at the start; "
              f"{meta['minutes']:.1f} min."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=None, help="comma-separated (default: every SGD task of the suite, and "
                                                  + ", ".join(BUILT_IN) + ")")
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    gt = read_json(HERE / "suite" / "ground_truth.json")
    t0, load = time.perf_counter(), os.getloadavg()
    names = args.tasks.split(",") if args.tasks else [*SUITE, *BUILT_IN]
    try:
        tasks = {n: SUITE[n]() if n in SUITE else load_task(n) for n in names}
    except TaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    not_sgd = [n for n, t in tasks.items() if t.optimizer != "sgd"]
    if args.tasks is None:
        tasks = {n: t for n, t in tasks.items() if n not in not_sgd}
    elif not_sgd:
        print(f"error: {', '.join(not_sgd)}: not plain SGD or SGD with momentum, which is what the bound is for",
              file=sys.stderr)
        return 2
    rows = []
    for name, task in tasks.items():
        for seed in (int(s) for s in args.seeds.split(",")):
            rows.append(one(name, task, seed, gt))
            print(f"{name} seed {seed}: ratio {rows[-1]['ratio']:.3f}", flush=True)
    meta = {"cores": os.cpu_count(), "load": load, "minutes": (time.perf_counter() - t0) / 60}
    write_json(RESULTS / "sharpness_sample.json", {"meta": meta, "rows": rows})
    md = markdown(rows, meta)
    (RESULTS / "sharpness_sample.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
