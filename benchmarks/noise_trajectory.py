"""B_simple along training on each built-in task: does it grow as the loss falls?

McCandlish et al. 2018 report that the noise scale grows as training progresses (their MNIST
row: about 20 at the start, 200 on average). Each task trains with its default optimizer and
learning rate; the per-step estimates are cut into windows of equal length and each window gets
its ratio of averages with a 90% interval.

    PYTHONPATH=src python benchmarks/noise_trajectory.py [--tasks mnist1d,digits,dots,text]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from batchscope.noise import estimate_from_samples, measure_noise
from batchscope.report.noise_plot import plot_trajectory
from batchscope.serialize import write_json

CONFIGS = {  # task: (batch size, micro-batch, steps)
    "mnist1d": (128, 16, 800),
    "digits": (64, 8, 500),
    "dots": (128, 16, 500),
    "text": (64, 8, 300),
}


def _spearman(a, b):
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        for k, i in enumerate(order):
            r[i] = float(k)
        return r
    return statistics.correlation(ranks(a), ranks(b))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default=",".join(CONFIGS))
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "noise_trajectory.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for name in args.tasks.split(","):
        b, m, steps = CONFIGS[name]
        t0 = time.perf_counter()
        r = measure_noise(name, b, m, steps, eval_every=steps)
        secs = time.perf_counter() - t0
        plot_trajectory(r.history, Path(args.out).parent / f"noise_trajectory_{name}.png",
                        f"{name}: B={b}, micro-batch {m}, {r.train.config['optimizer']} lr={r.train.config['lr']:g}")
        size = len(r.raw) // args.windows
        windows = []
        for w in range(args.windows):
            part = r.raw[w * size:(w + 1) * size] if w < args.windows - 1 else r.raw[w * size:]
            est = estimate_from_samples([p.g2 for p in part], [p.trace for p in part], level=0.9)
            windows.append({"steps": f"{part[0].step}-{part[-1].step}", "loss": statistics.fmean(p.loss for p in part),
                            "b_simple": est.b_simple, "low": est.low, "high": est.high, "g2": est.g2,
                            "trace": est.trace})
        head = r.raw[:10]  # the very start: the model at (almost) its initialisation
        est = estimate_from_samples([p.g2 for p in head], [p.trace for p in head], level=0.9)
        start = {"steps": f"{head[0].step}-{head[-1].step}", "loss": statistics.fmean(p.loss for p in head),
                 "b_simple": est.b_simple, "low": est.low, "high": est.high, "g2": est.g2, "trace": est.trace}
        first, last = windows[0], windows[-1]
        rho = _spearman([-w["loss"] for w in windows], [w["b_simple"] for w in windows])
        results[name] = {
            "batch_size": b, "micro_batch": m, "steps": steps, "optimizer": r.train.config["optimizer"],
            "lr": r.train.config["lr"], "seconds": secs, "final_metric": r.train.final.metric,
            "first_10_steps": start, "windows": windows, "spearman_b_vs_minus_loss": rho,
            "grows_as_loss_falls": last["b_simple"] > first["b_simple"] and last["loss"] < first["loss"],
            "intervals_separate": last["low"] > first["high"],
            "final_estimate": r.estimate.to_dict(),
        }
    for name, res in results.items():
        print(f"\n{name}: B={res['batch_size']}, micro-batch {res['micro_batch']}, {res['steps']} steps, "
              f"{res['optimizer']} lr={res['lr']:g} ({res['seconds']:.0f} s)")
        print(f"  {'steps':<12}{'loss':>8}{'|G|^2':>11}{'tr(S)':>11}{'B_simple':>10}{'90% interval':>22}")
        for w in [res["first_10_steps"], *res["windows"]]:
            print(f"  {w['steps']:<12}{w['loss']:>8.3f}{w['g2']:>11.4g}{w['trace']:>11.4g}{w['b_simple']:>10.4g}"
                  f"{w['low']:>12.4g}..{w['high']:<10.4g}")
        print(f"  (first row: the first 10 steps alone; then {len(res['windows'])} equal windows)")
        print(f"  grows as the loss falls: {res['grows_as_loss_falls']} (first vs last window intervals separate: "
              f"{res['intervals_separate']}; Spearman over windows {res['spearman_b_vs_minus_loss']:+.2f})")
    write_json(args.out, {"configs": {k: CONFIGS[k] for k in results}, "tasks": results})
    return results


if __name__ == "__main__":
    main()
