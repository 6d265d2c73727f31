"""The suite's ground truth: per task, a batch-size x learning-rate sweep to the target, two seeds.

For every task (benchmarks/suite/tasks.py):
1. batch sizes: powers of two, from the task's reference batch upward, then downward. Upward stops
   when doubling the batch saves under 15% of the steps twice in a row (well past the critical
   batch), or at a quarter of the training set; downward stops below 8 or when halving the batch
   saves under 15% of the examples twice in a row (well below it).
2. learning rates that follow the optimum: at each batch the centre is the neighbouring batch's best
   rate scaled by sqrt(B / B_neighbour) (the task's own rate at the reference batch); the grid is
   x0.5, x1, x2 of the centre, extended by factors of two while the best is at an edge (up to three
   times), seed 0. Seed 1 is run at every rate within 1.5x of the best seed-0 steps, and the best
   rate is the one with the fewest steps by the geometric mean of the two seeds. Steps to the target
   are interpolated between evaluations (~40 before the target).
3. step time per batch from one interleaved timing pass (three rounds), so time to the target is
   steps x t(B) on one machine state.
4. the measured critical batch: S(B) = S_min (1 + B_crit / B) fitted to both seeds' steps at the best
   rate per batch (`batchscope.study.fit_bcrit`, 95% residual-bootstrap interval).

Everything is stored in benchmarks/suite/ground_truth.json after every run, so an interrupted sweep
resumes where it stopped; the file is committed and the judge (run.py) only reads it.

    nice -n 5 python benchmarks/suite/ground_truth.py [--tasks a,b] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import (EVALS_BEFORE_TARGET, MAX_SECONDS, MAX_STEPS, geomean, interleaved_step_seconds,  # noqa: E402
                    pin_malloc, read_json, run_to_target, write_json)
from tasks import KIND, SUITE  # noqa: E402

from batchscope.study import fit_bcrit  # noqa: E402

HERE = Path(__file__).parent
STORE = HERE / "ground_truth.json"
SATURATED = 0.85        # doubling the batch keeps > 85% of the steps (or halving it > 85% of the examples)
MAX_EXTEND = 3
MIN_BATCH = 8
MAX_BATCH = 8192


class Sweep:
    """The sweep of one task, resumable from the runs already in the store.

    The class attributes are the sweep's settings; the long tier (long_tier.py) changes them in a
    subclass (longer caps, every batch of a fixed range), the short suite keeps these.
    """

    factors = (1.0, 0.5, 2.0)      # the rate grid around the centre, in the order run
    max_extend = MAX_EXTEND        # times the grid is extended while the best rate is at an edge
    seeds = (0, 1)                 # seed 1 only at rates within 1.5x of seed 0's best
    saturate = True                # stop a direction once doubling (halving) stops paying, twice
    first_estimate = 300           # expected steps at the reference batch (sets the first evaluations)
    max_seconds = MAX_SECONDS

    def first_cap(self, batch: int, est_steps: float) -> int:
        """Step cap of a run at ``batch`` before any rate there has reached the target."""
        return MAX_STEPS

    def __init__(self, task, store: dict, save):
        self.task, self.save = task, save
        self.entry = store.setdefault(task.name, {"kind": KIND.get(task.name, ""), "runs": []})
        self.entry.update(facts(task))

    def _find(self, batch: int, lr: float, seed: int):
        for r in self.entry["runs"]:
            if r["batch"] == batch and r["seed"] == seed and math.isclose(r["lr"], lr, rel_tol=1e-9):
                return r
        return None

    def trial(self, batch: int, lr: float, seed: int, est_steps: float, cap: int) -> dict:
        row = self._find(batch, lr, seed)
        if row is None:
            row = run_to_target(self.task, batch, lr, seed=seed, eval_every=int(est_steps // EVALS_BEFORE_TARGET),
                                max_steps=cap, max_seconds=self.max_seconds)
            self.entry["runs"].append(row)
            self.save()
            what = (f"{row['steps']:.1f} steps" if row["reached"]
                    else "diverged" if row["diverged"] else f"not reached ({row.get('stopped')})")
            print(f"  {self.task.name} B={batch:5d} lr={lr:.4g} seed={seed}: {what}", flush=True)
        return row

    def batch(self, b: int, centre: float, est_steps: float):
        """Best rate at batch ``b`` (seed 0) and its steps for both seeds; None if nothing reached."""
        tried: dict[float, dict] = {}

        def best():
            ok = [(r["steps"], lr) for lr, r in tried.items() if r["reached"]]
            return min(ok) if ok else None

        def cap():
            b0 = best()
            return (self.first_cap(b, est_steps) if b0 is None
                    else int(1.5 * b0[0]) + 2 * max(1, int(b0[0] // EVALS_BEFORE_TARGET)))

        for f in self.factors:
            lr = centre * f
            tried[lr] = self.trial(b, lr, 0, best()[0] if best() else est_steps, cap())
        if best() is None:   # nothing reached: look further out once on both sides
            for f in (min(self.factors) / 2, max(self.factors) * 2):
                tried[centre * f] = self.trial(b, centre * f, 0, est_steps, self.first_cap(b, est_steps))
        for _ in range(self.max_extend):
            top = best()
            if top is None:
                break
            lrs = sorted(tried)
            if top[1] == lrs[0]:
                nxt = lrs[0] / 2
            elif top[1] == lrs[-1]:
                nxt = lrs[-1] * 2
            else:
                break
            tried[nxt] = self.trial(b, nxt, 0, top[0], cap())
        top = best()
        if top is None:
            return None
        # Seed 1 at every rate within 1.5x of the best seed-0 steps, and the best rate by the geometric
        # mean of both seeds: picking by one seed alone favours the rate whose seed was lucky.
        pairs = {}
        for lr, r in tried.items():
            if r["reached"] and r["steps"] <= 1.5 * top[0]:
                pairs[lr] = [r["steps"]]
                for seed in self.seeds[1:]:
                    other = self.trial(b, lr, seed, r["steps"], 3 * int(r["steps"]) + 50)
                    pairs[lr].append(other["steps"] if other["reached"] else None)
        lr = min(pairs, key=lambda k: (None in pairs[k], geomean(pairs[k])))
        return {"lr": lr, "steps": pairs[lr], "grid": {repr(k): r["steps"] for k, r in sorted(tried.items())}}

    def run(self, max_batch: int, min_batch: int = MIN_BATCH) -> None:
        task = self.task
        b_ref = task.reference_batch
        found = {}
        ref = self.batch(b_ref, task.lr, self.first_estimate)
        if ref is None:
            raise RuntimeError(f"{task.name}: the target was not reached at the reference batch {b_ref}")
        found[b_ref] = ref
        for direction in (2, 0.5):
            b, flat = b_ref, 0
            while True:
                nb = int(b * direction)
                if nb < min_batch or nb > max_batch:
                    break
                prev = found[b]
                est = geomean(prev["steps"]) * math.sqrt(b / nb)
                got = self.batch(nb, prev["lr"] * math.sqrt(nb / b), est)
                if got is None:
                    break
                found[nb] = got
                s_prev, s_new = geomean(prev["steps"]), geomean(got["steps"])
                gain = s_new / s_prev if direction > 1 else (s_new * nb) / (s_prev * b)
                flat = flat + 1 if gain > SATURATED else 0
                if self.saturate and (flat >= 2 or (direction > 1 and s_new < 8)):
                    break
                b = nb
        self.entry["best_per_batch"] = {str(b): v for b, v in sorted(found.items())}
        self.save()


def facts(task) -> dict:
    return {"n_train": task.n_train, "optimizer": task.optimizer, "task_lr": task.lr,
            "reference_batch": task.reference_batch, "parameters": task.parameter_count(),
            "target": task.target.describe(task.metric_name), "model": task.model_description,
            "description": task.description}


def summarize(entry: dict) -> dict:
    """Best run per batch, time to target, the fitted critical batch: a pure function of the store."""
    best = {int(b): v for b, v in entry["best_per_batch"].items()}
    t = {int(b): s for b, s in entry["step_seconds"].items()}
    bs, ss = [], []
    for b, v in sorted(best.items()):
        for s in v["steps"]:
            if s is not None:
                bs.append(b)
                ss.append(s)
    fit = fit_bcrit(bs, ss, confidence=0.95)
    rows = {b: {"lr": v["lr"], "steps": geomean(v["steps"]), "examples": geomean(v["steps"]) * b,
                "step_seconds": t[b], "seconds": geomean(v["steps"]) * t[b]} for b, v in sorted(best.items())}
    b_best = min(rows, key=lambda b: rows[b]["seconds"])
    return {"per_batch": rows, "best_batch": b_best, "best_seconds": rows[b_best]["seconds"],
            "best_examples": rows[b_best]["examples"], "best_steps": rows[b_best]["steps"],
            "b_crit": fit.b_crit, "b_crit_low": fit.b_crit_low, "b_crit_high": fit.b_crit_high,
            "b_crit_at_edge": fit.at_edge, "fit_residual_std": fit.residual_std, "s_min": fit.s_min,
            "e_min": fit.e_min}


def ground_truth(name: str, store: dict, save, registry=SUITE, min_batch: int = MIN_BATCH,
                 max_batch: int = MAX_BATCH) -> None:
    task = registry[name]()
    entry = store.get(name, {})
    if "summary" in entry:
        return
    t0 = time.perf_counter()
    print(f"[{name}] sweep ({task.n_train:,} examples, {task.optimizer})", flush=True)
    Sweep(task, store, save).run(min(max_batch, task.n_train // 4), min_batch)
    entry = store[name]
    print(f"[{name}] step times", flush=True)
    entry["step_seconds"] = {str(b): s for b, s in
                             interleaved_step_seconds(task, [int(b) for b in entry["best_per_batch"]]).items()}
    entry["summary"] = summarize(entry)
    entry["sweep_wall_seconds"] = entry.get("sweep_wall_seconds", 0) + time.perf_counter() - t0
    save()
    s = entry["summary"]
    print(f"[{name}] best B={s['best_batch']} ({s['best_steps']:.0f} steps), B_crit {s['b_crit']:.0f} "
          f"[{s['b_crit_low']:.0f}-{s['b_crit_high']:.0f}]", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(SUITE))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--store", type=Path, default=STORE)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    store = read_json(args.store)

    def save():
        write_json(args.store, store)

    for name in args.tasks.split(","):
        ground_truth(name, store, save)
    return 0


if __name__ == "__main__":
    pin_malloc()
    sys.exit(main())
