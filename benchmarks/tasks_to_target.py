"""Each built-in task trained to its target at its reference batch and learning rate.

Prints a table and writes benchmarks/results/tasks_to_target.json: data size, parameter count, and
the measured steps, examples and training seconds (evaluations excluded) to the target.

    python benchmarks/tasks_to_target.py [--threads 1] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from batchscope import TrainConfig, load_task, train
from batchscope.serialize import write_json
from batchscope.tasks import BUILTINS

OUT = Path(__file__).parent / "results" / "tasks_to_target.json"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in BUILTINS:
        task = load_task(name)
        b = task.reference_batch
        runs = [train(task, TrainConfig(batch_size=b, until_target=True, epochs=100, seed=s,
                                        eval_every=max(1, task.n_train // (16 * b))))
                for s in range(args.seeds)]
        reached = [r for r in runs if r.reached_target]
        rows.append({
            "task": name, "train_examples": task.n_train, "val_examples": task.n_val,
            "parameters": task.parameter_count(), "model": task.model_description,
            "target": task.target.describe(task.metric_name), "batch": b, "lr": task.lr,
            "optimizer": task.optimizer, "seeds": args.seeds, "reached": len(reached),
            "steps_median": statistics.median(r.target_step for r in reached) if reached else None,
            "steps_all": [r.target_step for r in runs],
            "seconds_median": statistics.median(r.target_seconds for r in reached) if reached else None,
            "threads": args.threads,
        })
        print(rows[-1], flush=True)
    write_json(OUT, rows)
    print(f"\n| task | train / val | params | target | B | lr | steps to target (median of {args.seeds}) | seconds |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['task']} | {r['train_examples']:,} / {r['val_examples']:,} | {r['parameters']:,} | "
              f"{r['target']} | "
              f"{r['batch']} | {r['lr']:g} | {r['steps_median']:,.0f} | {r['seconds_median']:.2f} |")


if __name__ == "__main__":
    main()
