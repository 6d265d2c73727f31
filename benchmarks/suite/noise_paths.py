"""Noise scales along a whole run to the target, per suite task: the evidence for calibrating `find`.

`find` sees only the first ~5% of a run. To tell a wrong quantity from a wrong extrapolation, this
trains each task once at its reference batch and best rate (from the ground truth) all the way to
the target, recording at every step the unbiased |G|² and tr(Σ) (eight micro-batches per step, the
estimate `find` uses), for Adam-type optimizers the same on the preconditioned gradient, and at
eight points the Hessian-weighted tr(HΣ)/GᵀHG (batchscope.noise.hessian) beside B_simple on the
same 128 examples (256 for the first three tasks measured; every point records its n). The
transformer has none: forward-mode AD of CPU flash attention is not implemented in torch.

Writes benchmarks/suite/noise_paths.json (resumable per task).

    nice -n 5 python benchmarks/suite/noise_paths.py [--tasks a,b]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import read_json, write_json  # noqa: E402
from tasks import SUITE  # noqa: E402

from batchscope import Callback, TrainConfig, train  # noqa: E402
from batchscope.noise import NoiseScaleMonitor  # noqa: E402
from batchscope.noise.hessian import hessian_noise_scale  # noqa: E402

HERE = Path(__file__).parent
STORE = HERE / "noise_paths.json"
HESSIAN_EXAMPLES = 128
HESSIAN_POINTS = 8


class HessianProbe(Callback):
    """tr(HΣ)/GᵀHG and tr(Σ)/|G|² on a fixed sample of training examples at chosen steps."""

    def __init__(self, task, steps: set[int], seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(task.n_train, generator=g)[:HESSIAN_EXAMPLES]
        x, y = task.train_data.tensors
        self.x, self.y, self.task, self.steps = x[idx], y[idx], task, steps
        self.points, self.error = [], None

    def _probe(self, ctx, loss):
        if self.error is not None:
            return
        t0 = time.perf_counter()
        try:
            h = hessian_noise_scale(ctx.model, self.task.loss_fn, self.x, self.y)
        except Exception as e:  # a model torch.func cannot transform: say so once, keep training
            self.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            return
        self.points.append({"step": ctx.step, "loss": loss, **h.to_dict(), "seconds": time.perf_counter() - t0})

    def on_train_begin(self, ctx):
        if 0 in self.steps:
            self._probe(ctx, None)

    def on_step_end(self, ctx, loss):
        if ctx.step in self.steps:
            self._probe(ctx, loss)


def measure(task, batch: int, lr: float, expected_steps: float) -> dict:
    micro = max(1, batch // 8)
    monitors = [NoiseScaleMonitor()]
    if task.optimizer != "sgd":
        monitors.append(NoiseScaleMonitor(preconditioned=True))
    at = {0} | {max(1, int(expected_steps * f)) for f in (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)}
    probe = HessianProbe(task, at)
    cfg = TrainConfig(batch_size=batch, micro_batch=micro, lr=lr, until_target=True,
                      steps=int(3 * expected_steps) + 100, eval_every=max(1, int(expected_steps // 40)))
    r = train(task, cfg, [*monitors, probe])
    out = {"batch": batch, "micro_batch": micro, "lr": lr, "reached": r.reached_target, "steps": r.steps,
           "raw": [list(s) for s in monitors[0].raw],
           "evals": [{"step": p.step, "examples": p.examples, "loss": p.loss, "eval_loss": p.eval_loss,
                      "metric": p.metric} for p in r.history],
           "hessian": probe.points, "hessian_error": probe.error}
    if len(monitors) > 1:
        out["raw_preconditioned"] = [list(s) for s in monitors[1].raw]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(SUITE))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    gt, store = read_json(HERE / "ground_truth.json"), read_json(STORE)
    for name in args.tasks.split(","):
        if name in store or "summary" not in gt.get(name, {}):
            continue
        task = SUITE[name]()
        row = gt[name]["summary"]["per_batch"][str(task.reference_batch)]
        print(f"[{name}] B={task.reference_batch} lr={row['lr']:.4g}, ~{row['steps']:.0f} steps", flush=True)
        store[name] = measure(task, task.reference_batch, row["lr"], row["steps"])
        write_json(STORE, store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
