"""`plan` output: the device-count table (80 columns), the frontier lines, and the time/cost plot."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .console import make_table


def duration(seconds: float) -> str:
    """A run length people read at a glance: 42 s, 3.5 min, 7.2 h, 3.1 d."""
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 90:
        return f"{seconds:.3g} s"
    if seconds < 5400:
        return f"{seconds / 60:.3g} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} d"


def money(x: float) -> str:
    return f"{x:,.2f}" if x >= 1 else f"{x:.3g}"


def _mark(r, plan) -> str:
    tags = [t for t, row in (("F", plan.fastest), ("C", plan.cheapest), ("K", plan.knee)) if row == r]
    return "".join(tags)


def plan_table(dp, task_name: str, links: Optional[str] = None):
    """One row per device count (its fastest batch); F fastest, C cheapest, K knee; ``links``: the interconnect."""
    plan = dp.plan
    priced = plan.best[0].cost is not None
    cols = ["devices", "batch", "micro x acc", "step", "sync", "to target", "device-h"]
    cols += ["cost"] if priced else []
    rows = []
    for r in plan.best:
        row = [f"{_mark(r, plan):>3} {r.devices}", r.batch_size, f"{r.micro_batch} x {r.accumulation}",
               duration(r.step_seconds), f"{(r.step_seconds - r.compute_seconds) / r.step_seconds:.0%}",
               duration(r.seconds), f"{r.device_hours:.3g}"]
        rows.append(row + ([money(r.cost)] if priced else []))
    caption = "F fastest, C cheapest, K knee; sync: share of the step added by the all-reduce"
    if links:
        caption += f"\n{links}"
    return make_table(f"{task_name}: the fastest global batch for each device count", cols, rows, caption)


def frontier_lines(dp) -> list[str]:
    p = dp.plan

    def say(r) -> str:
        cost = f", costing {money(r.cost)}" if r.cost is not None else ""
        devices = f"{r.devices} device{'s' if r.devices > 1 else ''}"
        return (f"{devices} at global batch {r.batch_size}: {duration(r.seconds)} to target, "
                f"{r.device_hours:.3g} device-hours{cost}")

    knee = (f"{say(p.knee)}; doubling the devices from here saves at most {p.knee_fraction:.0%} of the time"
            if p.knee is not None else f"none up to {p.best[-1].devices} devices: every doubling planned saved "
            f"more than {p.knee_fraction:.0%} of the time")
    return [f"fastest:  {say(p.fastest)}", f"cheapest: {say(p.cheapest)}", f"knee:     {knee}"]


def plot_plan(dp, path: "str | Path", title: Optional[str] = None) -> Path:
    """Time to target and device-hours against the device count (log-log), the frontier marked."""
    from .plots import pyplot, save

    plt = pyplot()
    best = dp.plan.best
    n = [r.devices for r in best]
    longest = max(r.seconds for r in best)
    unit, scale = ("s", 1.0) if longest < 120 else ("min", 60.0) if longest < 7200 else ("h", 3600.0)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(n, [r.seconds / scale for r in best], "o-", color="tab:blue")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(n, [str(d) for d in n])
    ax.set_xlabel("devices (each at its fastest global batch)")
    ax.set_ylabel(f"time to target ({unit})", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(n, [r.device_hours for r in best], "s--", color="tab:red")
    ax2.set_yscale("log")
    ax2.set_ylabel("device-hours", color="tab:red")
    labels: dict = {}
    for label, r in (("fastest", dp.plan.fastest), ("cheapest", dp.plan.cheapest), ("knee", dp.plan.knee)):
        if r is not None:
            labels.setdefault(r.devices, (r, []))[1].append(label)
    for r, names in labels.values():
        ax.annotate(f"{', '.join(names)}\nB={r.batch_size}", (r.devices, r.seconds / scale),
                    textcoords="offset points", xytext=(0, 10), ha="center", fontsize=8)
    ax.set_title(title or "time and cost against the device count", fontsize=10)
    return save(fig, path)
