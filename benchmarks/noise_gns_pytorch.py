"""Side by side with the `gns-pytorch` package (PyPI): same model, data and parameters.

gns-pytorch's ``compute_gns(per_example_losses, model)`` takes per-example gradients with one
``autograd.grad`` per example (or vmap over them), compares batch sizes 1 and n on a subset of the
batch, and returns the ratio for that one batch (negative or NaN values clamped to 0); its README
suggests an EMA of those per-call ratios. batchscope averages |G|² and tr(Σ) over calls and divides
once. Both run on the same K batches of the mnist1d MLP at fixed parameters.

    pip install gns-pytorch        # optional; the `bench` extra
    PYTHONPATH=src python benchmarks/noise_gns_pytorch.py [--batches 40]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from batchscope import TrainConfig, train
from batchscope.data import take
from batchscope.noise import NoiseScaleMonitor
from batchscope.serialize import write_json
from batchscope.tasks import load_task


def run_gns_pytorch(compute_gns, model, task, batches, **kwargs):
    random.seed(0)
    values, secs = [], []
    for idx in batches:
        x, y = take(task.train_data, idx)
        t0 = time.perf_counter()
        losses = nn.functional.cross_entropy(model(x), y, reduction="none")
        values.append(compute_gns(losses, model, **kwargs))
        secs.append(time.perf_counter() - t0)
    ema = 0.0
    for i, v in enumerate(values):  # the README's EMA (0.9), bias-corrected so early calls are not shrunk
        ema = 0.9 * ema + 0.1 * v
    ema /= 1 - 0.9 ** len(values)
    return {"b_simple_mean_of_ratios": statistics.fmean(values), "b_simple_ema_of_ratios": ema,
            "median_per_call": statistics.median(values), "clamped_to_zero": sum(v == 0.0 for v in values),
            "ms_per_batch": statistics.median(secs) * 1e3}


def run_ours(model, task, batches, micro_batch):
    loss_fn = task.loss_fn
    acc = len(batches[0]) // micro_batch

    def step(monitor):
        t0 = time.perf_counter()
        for xs, ys in zip(*(t.split(micro_batch) for t in take(task.train_data, idx))):
            (loss_fn(model(xs), ys) / acc).backward()
        if monitor is not None:
            monitor.update()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    out = {}
    mb = NoiseScaleMonitor(model, micro_batch=micro_batch, decay=1.0)
    plain, with_mb = [], []
    for idx in batches:  # interleave: the cost is the difference to the same backward without measuring
        with_mb.append(step(mb))
        mb.close()
        plain.append(step(None))
        mb.bind(model)
    mb.close()
    e = mb.estimate()
    out["batchscope microbatch"] = {"b_simple": e.b_simple, "low": e.low, "high": e.high,
                                    "ms_per_batch_extra": (statistics.median(with_mb) - statistics.median(plain)) * 1e3,
                                    "ms_per_batch_backward": statistics.median(plain) * 1e3}
    ex = NoiseScaleMonitor(model, method="exact", loss_fn=loss_fn, decay=1.0)
    secs = []
    for idx in batches:
        t0 = time.perf_counter()
        ex.update(batch=take(task.train_data, idx))
        secs.append(time.perf_counter() - t0)
    e = ex.estimate()
    out["batchscope exact"] = {"b_simple": e.b_simple, "low": e.low, "high": e.high,
                               "ms_per_batch": statistics.median(secs) * 1e3}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "noise_gns_pytorch.json"))
    args = ap.parse_args(argv)
    from gns_pytorch import compute_gns
    from importlib.metadata import version

    torch.set_num_threads(1)
    task = load_task("mnist1d")
    trained = train(task, TrainConfig(batch_size=args.batch_size, steps=args.train_steps, eval_every=args.train_steps))
    torch.manual_seed(0)
    points = {"init": task.make_model(), f"after {args.train_steps} SGD steps": trained.model}
    g = torch.Generator().manual_seed(321)
    batches = [torch.randperm(task.n_train, generator=g)[: args.batch_size] for _ in range(args.batches)]
    results = {}
    for name, model in points.items():
        model.train()
        r = run_ours(model, task, batches, args.micro_batch)
        r["gns-pytorch (all params, whole batch)"] = run_gns_pytorch(compute_gns, model, task, batches,
                                                                     param_percentage=1.0, batch_percentage=1.0)
        r["gns-pytorch (defaults: 25% of batch)"] = run_gns_pytorch(compute_gns, model, task, batches)
        try:
            r["gns-pytorch (whole batch, use_vmap)"] = run_gns_pytorch(compute_gns, model, task, batches,
                                                                       param_percentage=1.0, batch_percentage=1.0,
                                                                       use_vmap=True)
        except Exception as e:  # report, do not hide, a failure of the other tool
            r["gns-pytorch (whole batch, use_vmap)"] = {"error": f"{type(e).__name__}: {e}"[:300]}
        results[name] = r
    print(f"mnist1d MLP, B={args.batch_size}, {args.batches} batches at fixed parameters; gns-pytorch "
          f"{version('gns-pytorch')}; 1 thread")
    for name, r in results.items():
        print(f"\n{name}")
        print(f"  {'tool':<40}{'B_simple':>12}{'other':>32}{'cost ms/batch':>16}")
        for tool, v in r.items():
            if "error" in v:
                print(f"  {tool:<40}  {v['error']}")
            elif tool.startswith("batchscope"):
                cost = v.get("ms_per_batch", v.get("ms_per_batch_extra"))
                extra = f"90%: {v['low']:.4g}..{v['high']:.4g}"
                print(f"  {tool:<40}{v['b_simple']:>12.4g}{extra:>32}{cost:>16.2f}")
            else:
                extra = f"EMA {v['b_simple_ema_of_ratios']:.4g}, median {v['median_per_call']:.4g}"
                print(f"  {tool:<40}{v['b_simple_mean_of_ratios']:>12.4g}{extra:>32}{v['ms_per_batch']:>16.2f}")
    doc = {"task": "mnist1d", "batch_size": args.batch_size, "micro_batch": args.micro_batch,
           "batches": args.batches, "gns_pytorch_version": version("gns-pytorch"), "points": results,
           "notes": "batchscope microbatch cost is the extra time over the same accumulated backward without the "
                    "monitor (the estimate rides on training's backward); exact and gns-pytorch costs are "
                    "per call, on top of training"}
    write_json(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
