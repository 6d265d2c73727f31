"""The long tier's ground truth: a batch x rate sweep of runs of thousands of steps, two seeds.

The same sweep as the short suite (ground_truth.Sweep: powers of two walked out from the reference
batch, a rate grid x0.5, x1, x2 that follows the optimum by sqrt(B / B_neighbour) and is extended
while its best rate sits at an edge, seed 1 at every rate within 1.5x of seed 0's best, the best
rate by the geometric mean of both seeds), with what long runs need:

- every batch of BATCHES (32 .. 4,096) is swept: no stop when doubling stops paying, since under
  the GPU-shaped and 8-device clocks (clocks.py) the largest batches are the ones that can win (a
  sweep stored over fewer batches is extended, its runs kept, its timing passes redone);
- the first run at a batch is capped at FIRST_CAP x the steps expected there (the neighbour's
  steps x sqrt(B_neighbour / B)), not at a fixed count, so one hopeless rate costs a bounded time
  (at the reference batch, where nothing is known yet, only MAX_SECONDS bounds it);
- the first evaluations at the reference batch are spaced for the steps the pilot needed
  (long_pilot.json), ~40 before the crossing as everywhere else.

Then two interleaved timing passes over the swept batches (A: this machine's clock; B: the A/A
control, the same again), and the fitted critical batch. Every finished run is written to
benchmarks/suite/long_ground_truth.json at once, so a killed sweep resumes where it stopped:

    OMP_NUM_THREADS=1 nohup nice -n 15 env PYTHONPATH=src python benchmarks/suite/long_tier.py \
        >> benchmarks/suite/long_tier.log 2>&1 &
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import ground_truth  # noqa: E402
from common import geomean, pin_malloc, read_json, step_seconds, write_json  # noqa: E402
from tasks import LONG, LONG_KIND, text_fingerprint  # noqa: E402

from batchscope.study import fit_bcrit  # noqa: E402

HERE = Path(__file__).parent
STORE = HERE / "long_ground_truth.json"
PILOT = HERE / "long_pilot.json"
# 16 is left out: nearly twice the steps of 32 at nearly its step time, about the cost of the rest of the sweep
BATCHES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
FIRST_CAP = 4.0          # x the expected steps: the cap of a batch's first run
MAX_STEPS = 400_000
MAX_SECONDS = 1800.0     # training seconds of one run (nice'd, on a shared machine)
TIMING_ROUNDS = 3


def pilot_steps(task, pilot: dict) -> float:
    """Steps the pilot's reference-batch run (the task's rate) took to the target; None if it never got there."""
    for key, run in pilot.items():
        name, b, lr, _ = key.split("|")
        if name != task.name or int(b) != task.reference_batch or not math.isclose(float(lr), task.lr, rel_tol=1e-5):
            continue
        for p in run.get("history") or []:
            if task.target.reached(p["eval_loss"], p["metric"]):
                return float(p["step"])
    return None


class LongSweep(ground_truth.Sweep):
    saturate = False
    first_estimate = 5000      # when the pilot never reached the target at the reference batch
    max_seconds = MAX_SECONDS

    def first_cap(self, batch: int, est_steps: float) -> int:
        if batch == self.task.reference_batch:   # nothing to scale from yet: only the time limit
            return MAX_STEPS
        return int(min(MAX_STEPS, FIRST_CAP * est_steps + 1000))


def timing_pass(task, batches, rounds: int = TIMING_ROUNDS) -> dict[str, float]:
    """Step time per batch: ``rounds`` interleaved rounds, the least of the per-round medians (other load
    only ever slows a step, so the lower envelope is the closest to the machine's own time)."""
    seen: dict[int, list[float]] = {b: [] for b in sorted(set(batches))}
    for _ in range(rounds):
        for b in seen:
            seen[b].append(step_seconds(task, b))
    return {str(b): min(v) for b, v in seen.items()}


def summarize(entry: dict) -> dict:
    """Best rate and steps per batch, and the critical batch fitted to both seeds' steps."""
    best = {int(b): v for b, v in entry["best_per_batch"].items()}
    bs, ss = zip(*[(b, s) for b, v in sorted(best.items()) for s in v["steps"] if s is not None])
    rows = {str(b): {"lr": v["lr"], "steps": geomean(v["steps"]), "seed_steps": v["steps"],
                     "examples": geomean(v["steps"]) * b} for b, v in sorted(best.items())}
    if len(set(bs)) < 3:      # two parameters and a spread need three batches (a test's tiny sweep has two)
        return {"per_batch": rows, "b_crit": None}
    fit = fit_bcrit(list(bs), list(ss), confidence=0.95)
    return {"per_batch": rows, "b_crit": fit.b_crit, "b_crit_low": fit.b_crit_low, "b_crit_high": fit.b_crit_high,
            "b_crit_at_edge": fit.at_edge, "fit_residual_std": fit.residual_std, "s_min": fit.s_min,
            "e_min": fit.e_min}


def ground_truth_task(name: str, store: dict, save, registry=LONG, batches=BATCHES, sweep_cls=LongSweep,
                      pilot: dict | None = None, rounds: int = TIMING_ROUNDS) -> dict:
    """Sweep, time and summarise one task; a task already summarised is left as it is."""
    task = registry[name]()
    if "summary" in store.get(name, {}):
        if {str(b) for b in batches} <= set(store[name]["best_per_batch"]):
            return store[name]
        del store[name]["summary"]     # swept over fewer batches: extend it, keeping its runs
    t0, c0 = time.perf_counter(), time.process_time()
    print(f"[{name}] sweep {batches[0]}..{batches[-1]} ({task.n_train:,} examples, {task.optimizer}, "
          f"{task.target.describe(task.metric_name)})", flush=True)
    sweep = sweep_cls(task, store, save)
    sweep.first_estimate = pilot_steps(task, read_json(PILOT) if pilot is None else pilot) or sweep.first_estimate
    entry = store[name]
    entry["kind"] = LONG_KIND.get(name, entry.get("kind", ""))
    sweep.run(max(batches), min(batches))
    swept = [int(b) for b in entry["best_per_batch"]]
    print(f"[{name}] timing passes A and B over {swept}", flush=True)
    entry["step_seconds"] = timing_pass(task, swept, rounds)
    entry["step_seconds_control"] = timing_pass(task, swept, rounds)
    entry["summary"] = summarize(entry)
    # this call's share: a resumed sweep adds to what the killed one had spent
    entry["wall_seconds"] = entry.get("wall_seconds", 0.0) + time.perf_counter() - t0
    entry["cpu_seconds"] = entry.get("cpu_seconds", 0.0) + time.process_time() - c0
    entry["train_seconds"] = sum(r.get("train_seconds") or 0.0 for r in entry["runs"])
    entry["load_average"] = os.getloadavg()[0]
    save()
    s = entry["summary"]
    fitted = f"B_crit {s['b_crit']:.0f} [{s['b_crit_low']:.0f}-{s['b_crit_high']:.0f}]" if s["b_crit"] else "no B_crit"
    print(f"[{name}] done: {fitted}, {len(entry['runs'])} runs, {entry['wall_seconds'] / 60:.1f} min wall, "
          f"{entry['cpu_seconds'] / 60:.1f} min CPU", flush=True)
    return entry


def progress(store: dict) -> str:
    """One line per task: runs so far, batches done, training seconds."""
    out = []
    for name in LONG:
        e = store.get(name)
        if not e:
            out.append(f"{name}: not started")
            continue
        done = sorted({r["batch"] for r in e["runs"]})
        secs = sum(r.get("train_seconds") or 0.0 for r in e["runs"])
        out.append(f"{name}: {'done' if 'summary' in e else 'running'}, {len(e['runs'])} runs at batches {done}, "
                   f"{secs / 60:.1f} min of training")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(LONG))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--store", type=Path, default=STORE)
    ap.add_argument("--progress", action="store_true", help="print how far the stored sweep got and stop")
    args = ap.parse_args(argv)
    store = read_json(args.store)
    if args.progress:
        print(progress(store))
        return 0
    torch.set_num_threads(args.threads)
    store.setdefault("_meta", {}).update({"text": text_fingerprint(), "threads": args.threads,
                                          "torch": torch.__version__, "batches": list(BATCHES)})

    def save():
        write_json(args.store, store)

    for name in args.tasks.split(","):
        ground_truth_task(name, store, save)
    return 0


if __name__ == "__main__":
    pin_malloc()
    sys.exit(main())
