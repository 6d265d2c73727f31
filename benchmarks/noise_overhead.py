"""Cost of measuring: training step time with and without the noise monitor, in one run.

One model trains on mnist1d with gradient accumulation; each round runs one optimizer step per
variant, in rotating order, so load changes on a shared machine hit all variants alike. A
variant's monitor has its hooks attached only for its own steps (attaching is not timed). The
step time covers the forward/backward passes of all micro-batches, the monitor's update, the
optimizer step and zero_grad. Reported: median step time per variant and the median over rounds
of the per-round ratio to the step without a monitor. One thread.

    PYTHONPATH=src python benchmarks/noise_overhead.py [--rounds 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from batchscope.data import take
from batchscope.noise import NoiseScaleMonitor
from batchscope.serialize import write_json
from batchscope.tasks import load_task

VARIANTS = {
    "none": None,
    "microbatch": dict(),
    "microbatch, 2 micro-batches": dict(max_micro_batches=2),
    "microbatch, every 4th step": dict(every=4),
    "microbatch, per layer": dict(per_layer=True),
    "exact, every step": dict(method="exact"),
}


def run_config(task, batch_size: int, micro_batch: int, rounds: int) -> dict:
    torch.manual_seed(0)
    model = task.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=task.lr, momentum=0.9)
    acc = batch_size // micro_batch
    monitors = {k: None if kw is None else NoiseScaleMonitor(micro_batch=micro_batch, loss_fn=task.loss_fn, **kw)
                for k, kw in VARIANTS.items()}
    g = torch.Generator().manual_seed(1)

    def step(monitor) -> float:
        x, y = take(task.train_data, torch.randint(task.n_train, (batch_size,), generator=g))
        if monitor is not None:
            monitor.bind(model)
        t0 = time.perf_counter()
        for xs, ys in zip(x.split(micro_batch), y.split(micro_batch)):
            loss = task.loss_fn(model(xs), ys)
            (loss / acc).backward()
        if monitor is not None:
            monitor.update(loss, batch=(x, y) if monitor.method == "exact" else None)
        opt.step()
        opt.zero_grad(set_to_none=True)
        secs = time.perf_counter() - t0
        if monitor is not None:
            monitor.close()
        return secs

    for _ in range(20):  # warm-up
        step(monitors["microbatch"])
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    names = list(VARIANTS)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(step(monitors[name]))
    base = times["none"]
    rows = []
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base)]
        rows.append({"variant": name, "median_step_ms": statistics.median(ts) * 1e3,
                     "ratio_of_medians": statistics.median(ts) / statistics.median(base),
                     "median_paired_ratio": statistics.median(ratios),
                     "measured_steps": 0 if monitors[name] is None else len(monitors[name].raw)})
    return {"batch_size": batch_size, "micro_batch": micro_batch, "rounds": rounds, "rows": rows}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="128/16,512/64", help="B/m pairs, comma-separated")
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "noise_overhead.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    task = load_task("mnist1d")
    configs = []
    for pair in args.configs.split(","):
        b, m = (int(v) for v in pair.split("/"))
        configs.append(run_config(task, b, m, args.rounds))
    for c in configs:
        print(f"\nmnist1d MLP: B={c['batch_size']}, micro-batch {c['micro_batch']}, {c['rounds']} interleaved "
              f"rounds, 1 thread")
        print(f"{'variant':<30}{'step ms':>10}{'ratio (medians)':>17}{'ratio (paired)':>16}")
        for r in c["rows"]:
            print(f"{r['variant']:<30}{r['median_step_ms']:>10.3f}{r['ratio_of_medians']:>17.4f}"
                  f"{r['median_paired_ratio']:>16.4f}")
    doc = {"task": "mnist1d", "threads": 1, "configs": configs,
           "goal": "microbatch monitor overhead under 3% of the training step",
           "met": {f"B={c['batch_size']}/m={c['micro_batch']}":
                   next(r for r in c["rows"] if r["variant"] == "microbatch")["median_paired_ratio"] < 1.03
                   for c in configs}}
    write_json(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
