"""Pilot runs of the long tier: the validation curves its late targets were read from.

Per task (tasks.LONG): runs of 20,000 steps at the reference batch (32) with the task's rate and
x0.5, x2 of it, runs of 5,000 at batch 512 with the rate scaled by sqrt(512/32) (x1 and x2), then
the reference setting for 80,000 steps (40,000 for the transformer), evaluated ~60 times each.
(The first runs were made with other task rates; their keys say the rate, and runs without
``val_examples`` were evaluated on 2,000 validation examples for MNIST-1D, 4,000 positions for the
character MLP and 512 windows for the transformer.)
Nothing here is a ground truth: it shows where each curve flattens (the target in tasks.py is a
value the reference setting reaches there) and how many steps a large batch needs (so the tier's
cost could be estimated before the sweep). Every run is kept in benchmarks/suite/long_pilot.json
as it finishes.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/suite/long_pilot.py [--tasks a,b] [--steps 20000]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import pin_malloc, read_json, write_json  # noqa: E402
from tasks import LONG  # noqa: E402

from batchscope import DivergedError, TrainConfig, train  # noqa: E402

HERE = Path(__file__).parent
STORE = HERE / "long_pilot.json"


def curve(task, batch: int, lr: float, steps: int, evals: int = 60) -> dict:
    """Validation loss and metric every steps/evals steps; None where the run diverged."""
    cfg = TrainConfig(batch_size=batch, lr=lr, steps=steps, eval_every=max(1, steps // evals), max_seconds=3600)
    t0 = time.perf_counter()
    try:
        r = train(task, cfg)
    except DivergedError as e:
        return {"batch": batch, "lr": lr, "diverged": True, "error": str(e)}
    return {"batch": batch, "lr": lr, "diverged": False, "seconds": time.perf_counter() - t0,
            "history": [{"step": p.step, "eval_loss": p.eval_loss, "metric": p.metric, "loss": p.loss}
                        for p in r.history]}


LONG_STEPS = {"long_charlm_transformer_adamw": 40_000}   # the reference run to past the target (default 80,000)


def settings(task, steps: int) -> list[tuple[int, float, int]]:
    """(batch, rate, steps): the reference batch at three rates, batch 512 at two, then the reference setting
    (batch 32, the task's rate) long enough to reach a target late for batch 512 too."""
    big = 512
    scaled = task.lr * math.sqrt(big / task.reference_batch)
    return ([(task.reference_batch, task.lr * f, steps) for f in (1.0, 0.5, 2.0)]
            + [(big, scaled * f, max(1000, steps // 4)) for f in (1.0, 2.0)]
            + [(task.reference_batch, task.lr, LONG_STEPS.get(task.name, 80_000))])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(LONG))
    ap.add_argument("--steps", type=int, default=20_000, help="steps at the reference batch")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    store = read_json(STORE)
    for name in args.tasks.split(","):
        task = LONG[name]()
        for b, lr, steps in settings(task, args.steps):
            key = f"{name}|{b}|{lr:.6g}|{steps}"
            if key in store:
                continue
            store[key] = {**curve(task, b, lr, steps), "val_examples": task.n_val}
            write_json(STORE, store)
            h = store[key].get("history") or [{}]
            print(f"[{name}] B={b} lr={lr:.4g} {steps} steps: last val loss {h[-1].get('eval_loss')}, "
                  f"metric {h[-1].get('metric')} ({store[key].get('seconds', 0):.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    pin_malloc()
    sys.exit(main())
