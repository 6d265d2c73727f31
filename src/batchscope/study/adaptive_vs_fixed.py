"""The adaptive arm against the best fixed batch: time, examples and final metric to the study's target.

Time to target is counted the same way for both arms, from the step times the fixed runs measured:
a fixed run at B takes steps x t(B), an adaptive run the sum of t(B_i) over the batches B_i of its
steps, with t(B) the median training seconds per step of the fixed runs at B (linear in between,
as step time is affine in B; the adaptive batch never leaves the grid's range). Clock noise of
one run then does not decide the comparison. Each run's own training clock to the target (which
for the adaptive run includes measuring the noise) and its wall time are reported beside it.
The best fixed batch is the learning-rate arm and batch with the least time to target among the
arms whose every seed reached it (:func:`~batchscope.study.findings.steps_to_target`).
"""

from __future__ import annotations

import math
from statistics import median
from typing import Optional

import numpy as np

from .runner import RunRecord

REL_FLOOR = 0.02    # a time difference under 2 % is not called a difference


def seconds_per_step(r: RunRecord) -> Optional[float]:
    """Training seconds per step of one run: the median over its evaluation intervals, the first left out.

    The first interval holds one-time costs (the first run in a process warms up the allocator and
    kernels), and on a shared machine single intervals catch pauses; the median keeps the steady rate.
    """
    pts = [(p["step"], p["seconds"]) for p in r.curve if p.get("step", 0) > 0 and p.get("seconds") is not None]
    rates = [(s1 - s0) / (k1 - k0) for (k0, s0), (k1, s1) in zip(pts, pts[1:]) if k1 > k0]
    if rates:
        return float(median(rates))
    if r.steps > 0 and r.seconds is not None and math.isfinite(r.seconds):
        return r.seconds / r.steps
    return None


def step_times(fixed: list[RunRecord]) -> dict[int, float]:
    """Median training seconds per optimizer step of the finished fixed runs, per batch size."""
    per: dict[int, list[float]] = {}
    for r in fixed:
        t = seconds_per_step(r) if r.status == "ok" else None
        if t is not None and t > 0:
            per.setdefault(r.spec.batch_size, []).append(t)
    return {b: float(median(v)) for b, v in sorted(per.items())}


def step_time_at(times: dict[int, float], b: float) -> float:
    """t(b) interpolated linearly between measured batch sizes, extrapolated along the nearest segment."""
    bs, ts = list(times), list(times.values())
    if len(bs) == 1:
        return ts[0] * b / bs[0] if b > bs[0] else ts[0]
    if bs[0] <= b <= bs[-1]:
        return float(np.interp(b, bs, ts))
    i = 0 if b < bs[0] else len(bs) - 2
    slope = (ts[i + 1] - ts[i]) / (bs[i + 1] - bs[i])
    return max(0.0, ts[i] + slope * (b - bs[i]))


def modelled_seconds(batch_runs: list, steps: float, times: dict[int, float]) -> float:
    """Sum of t(B) over the first ``steps`` (fractional) steps of a run whose batches are ``[[B, n], ...]``."""
    total, left = 0.0, steps
    for b, n in batch_runs:
        take = min(n, left)
        total += take * step_time_at(times, b)
        left -= take
        if left <= 0:
            break
    return total


def _mean_se(values: list[float]) -> tuple[float, float]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return float("nan"), float("nan")
    se = float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(np.mean(v)), se


def _arm(runs: list[RunRecord], times: dict[int, float]) -> dict:
    """Mean over the seeds of one arm (all of which reached the target) and its standard errors."""
    def model(r: RunRecord) -> float:
        if r.spec.adaptive:
            return modelled_seconds(r.adaptive.get("batch_runs", []), r.target_step, times)
        return r.target_step * step_time_at(times, r.spec.batch_size)

    t, t_se = _mean_se([model(r) for r in runs])
    metric, metric_se = _mean_se([r.final.get("val_metric") for r in runs])
    return {"seeds": len(runs), "time": t, "time_se": t_se, "steps": _mean_se([r.target_step for r in runs])[0],
            "examples": _mean_se([r.target_examples for r in runs])[0],
            "clock_seconds": _mean_se([r.target_seconds for r in runs])[0],
            "wall_seconds": _mean_se([r.wall_seconds for r in runs])[0],
            "final_metric": metric, "final_metric_se": metric_se, "lr": runs[0].spec.lr}


def best_fixed(fixed: list[RunRecord], optimizer: str, times: dict[int, float]) -> Optional[dict]:
    """The fixed arm (batch, rule, multiplier, warm-up) with the least mean time to target, every seed reaching it."""
    arms: dict[tuple, list[RunRecord]] = {}
    for r in fixed:
        if r.spec.optimizer == optimizer:
            s = r.spec
            arms.setdefault((s.batch_size, s.lr_rule, s.lr_multiplier, s.warmup_epochs), []).append(r)
    best = None
    for (b, rule, mult, w), rs in arms.items():
        if b not in times or any(r.status != "ok" or r.target_step is None for r in rs):
            continue
        arm = {"batch_size": b, "lr_rule": rule, "lr_multiplier": mult, "warmup_epochs": w, **_arm(rs, times)}
        if best is None or arm["time"] < best["time"]:
            best = arm
    return best


def compare(optimizer: str, adaptive: list[RunRecord], fixed: list[RunRecord]) -> dict:
    """Adaptive vs best fixed for one optimizer: both arms' numbers, their time ratio, a verdict and a sentence."""
    times = step_times([r for r in fixed if r.spec.optimizer == optimizer])
    rule = "square-root" if optimizer in ("adam", "adamw") else "AdaScale"
    out = {"optimizer": optimizer, "lr_rule": rule, "start_batch": adaptive[0].spec.batch_size,
           "final_batches": [r.adaptive.get("final_batch") for r in adaptive], "adaptive": None, "fixed": None,
           "ratio": None, "verdict": "not compared"}
    reached = [r for r in adaptive if r.status == "ok" and r.target_step is not None]
    best = best_fixed(fixed, optimizer, times) if times else None
    out["fixed"] = best
    if reached:
        out["adaptive"] = {**_arm(reached, times), "reached": len(reached)} if times else None
    missing = []
    if len(reached) < len(adaptive):
        missing.append(f"the adaptive runs reached the target in {len(reached)} of {len(adaptive)} seed(s)")
    if best is None:
        missing.append("no fixed batch reached the target with every seed")
    if missing or out["adaptive"] is None:
        why = "; ".join(missing) or "no fixed run finished to time the steps"
        out["summary"] = (f"{optimizer}: not compared: {why} (train longer or lower the target with --target).")
        return out
    a, f = out["adaptive"], best
    ratio = a["time"] / f["time"]
    tol = max(REL_FLOOR * f["time"], 2 * math.sqrt(a["time_se"] ** 2 + f["time_se"] ** 2))
    verdict = "faster" if a["time"] < f["time"] - tol else "slower" if a["time"] > f["time"] + tol else "on par"
    out.update(ratio=ratio, verdict=verdict)
    b0, ends = out["start_batch"], out["final_batches"]
    path = (f"held at B={b0}" if all(b == b0 for b in ends)
            else f"from B={b0} to B={'/'.join(str(b) for b in ends)}")
    out["summary"] = (
        f"{optimizer}: the adaptive batch ({rule} rate, {path}) reached the target in {a['time']:.3g} s of steps vs "
        f"{f['time']:.3g} s for the best fixed batch B={f['batch_size']} ({f['lr_rule']} rule): {ratio:.2f}x, "
        f"{verdict}{' within seed noise' if verdict == 'on par' else ''}; examples {a['examples']:.3g} vs "
        f"{f['examples']:.3g}, final validation metric {a['final_metric']:.3g} vs {f['final_metric']:.3g}.")
    return out


def adaptive_vs_fixed(records: list[RunRecord]) -> list[dict]:
    """One :func:`compare` per optimizer that has adaptive runs (empty when the study has none)."""
    fixed = [r for r in records if not r.spec.adaptive]
    adaptive = [r for r in records if r.spec.adaptive]
    return [compare(opt, [r for r in adaptive if r.spec.optimizer == opt], fixed)
            for opt in sorted({r.spec.optimizer for r in adaptive})]
