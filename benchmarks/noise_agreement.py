"""Agreement: micro-batch estimator vs exact per-example estimator at the same parameters.

The mnist1d MLP is frozen at two points (initialisation, and after some SGD training); both
estimators see the same K batches of B examples at those parameters (no optimizer step), each
averaging |G|² and tr(Σ) over the K batches (decay 1: a plain mean) before dividing. Goal: the
two B_simple within 10%.

    PYTHONPATH=src python benchmarks/noise_agreement.py [--batches 200]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from batchscope import TrainConfig, train
from batchscope.data import take
from batchscope.noise import NoiseScaleMonitor
from batchscope.serialize import write_json
from batchscope.tasks import load_task


def measure(task, model, batches, micro_batch):
    loss_fn = task.loss_fn
    mb = NoiseScaleMonitor(model, micro_batch=micro_batch, decay=1.0)
    acc = len(batches[0]) // micro_batch
    t0 = time.perf_counter()
    for idx in batches:
        x, y = take(task.train_data, idx)
        for xs, ys in zip(x.split(micro_batch), y.split(micro_batch)):
            (loss_fn(model(xs), ys) / acc).backward()
        mb.update()
        model.zero_grad(set_to_none=True)
    t_mb = time.perf_counter() - t0
    mb.close()
    ex = NoiseScaleMonitor(model, method="exact", loss_fn=loss_fn, decay=1.0)
    t0 = time.perf_counter()
    for idx in batches:
        ex.update(batch=take(task.train_data, idx))
    t_ex = time.perf_counter() - t0
    out = {}
    for name, mon, secs in (("microbatch", mb, t_mb), ("exact", ex, t_ex)):
        e = mon.estimate()
        g2 = torch.tensor([r.g2 for r in mon.raw], dtype=torch.float64)
        tr = torch.tensor([r.trace for r in mon.raw], dtype=torch.float64)
        k = len(mon.raw)
        out[name] = {"b_simple": e.b_simple, "low": e.low, "high": e.high, "g2": e.g2, "trace": e.trace,
                     "g2_se": float(g2.std() / math.sqrt(k)), "trace_se": float(tr.std() / math.sqrt(k)),
                     "batches": k, "ms_per_batch": secs / k * 1e3}
    out["relative_difference"] = abs(out["microbatch"]["b_simple"] / out["exact"]["b_simple"] - 1.0)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "noise_agreement.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    task = load_task("mnist1d")
    trained = train(task, TrainConfig(batch_size=args.batch_size, steps=args.train_steps, eval_every=args.train_steps))
    torch.manual_seed(0)
    points = {"init": task.make_model(),
              f"after {args.train_steps} SGD steps (val acc {trained.final.metric:.2f})": trained.model}
    g = torch.Generator().manual_seed(123)
    batches = [torch.randperm(task.n_train, generator=g)[: args.batch_size] for _ in range(args.batches)]
    rows = {}
    for name, model in points.items():
        model.train()
        rows[name] = measure(task, model, batches, args.micro_batch)
    print(f"mnist1d MLP, B={args.batch_size}, micro-batch {args.micro_batch}, "
          f"{args.batches} batches at fixed parameters")
    print(f"{'parameters':<40}{'estimator':<12}{'|G|^2':>10}{'tr(S)':>10}{'B_simple':>10}"
          f"{'90% interval':>20}{'ms/batch':>10}")
    for name, r in rows.items():
        for est in ("microbatch", "exact"):
            e = r[est]
            print(f"{name:<40}{est:<12}{e['g2']:>10.4g}{e['trace']:>10.4g}{e['b_simple']:>10.4g}"
                  f"{e['low']:>10.4g}..{e['high']:<8.4g}{e['ms_per_batch']:>10.2f}")
        print(f"{'':<40}relative difference in B_simple: {r['relative_difference']:.1%}")
    doc = {"task": "mnist1d", "batch_size": args.batch_size, "micro_batch": args.micro_batch,
           "batches": args.batches, "points": rows, "goal": "B_simple within 10%",
           "met": all(r["relative_difference"] < 0.10 for r in rows.values())}
    write_json(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
