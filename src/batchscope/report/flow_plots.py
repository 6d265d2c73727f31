"""PNG plots of the sweeps and of a pipeline step (matplotlib, imported only when plotting)."""

from __future__ import annotations

from pathlib import Path

from ..flow.line import Line
from ..flow.pipeline import PipelineResult, bubble_formula
from ..flow.sweep import SweepResult
from .plots import pyplot, save


def _band(ax, x, sweep: SweepResult, name: str, label: str, **kw):
    mean = sweep.series(name)
    line, = ax.plot(x, mean, marker="o", ms=3, label=label, **kw)
    low = [f[name].low for f in sweep.figures]
    high = [f[name].high for f in sweep.figures]
    if any(h > lo for h, lo in zip(high, low)):
        ax.fill_between(x, low, high, alpha=0.2, color=line.get_color())


def plot_transfer_sweep(sweep: SweepResult, line: Line, path: "str | Path") -> Path:
    """Lead times, WIP and value-added fraction against the transfer batch."""
    plt = pyplot()
    x = list(sweep.values)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    _band(axes[0], x, sweep, "lead_time", "order (last unit)")
    _band(axes[0], x, sweep, "mean_unit_lead_time", "mean unit")
    _band(axes[0], x, sweep, "first_unit_lead_time", "first unit")
    axes[0].set_ylabel(f"lead time ({line.time_unit})")
    _band(axes[1], x, sweep, "wip_average", "average WIP")
    axes[1].set_ylabel("units in the line (time average)")
    _band(axes[2], x, sweep, "value_added_fraction", "value-added fraction")
    axes[2].set_ylabel("processing time / lead time")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("transfer batch (units)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{line.name}: order {line.order_quantity}, process batch {line.process_batch}"
                 + (" (bands: 95% intervals)" if line.random else ""))
    return save(fig, path)


def plot_process_sweep(sweep: SweepResult, line: Line, path: "str | Path") -> Path:
    """Capacity of each station against the process batch (with its no-set-up limit), and the
    order's lead time."""
    plt = pyplot()
    x = list(sweep.values)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, st in enumerate(line.stations):
        curve, = axes[0].plot(x, [c[i] for c in sweep.capacities], marker="o", ms=3, label=st.name)
        axes[0].axhline(st.resources / st.mean_unit_time, ls=":", color=curve.get_color(), lw=1)
    axes[0].plot(x, [min(c) for c in sweep.capacities], color="black", lw=2, ls="--", label="bottleneck")
    axes[0].set_ylabel(f"capacity (units / {line.time_unit})")
    axes[0].set_title("resources B / (set-up + B p); dotted: limit resources / p", fontsize=10)
    _band(axes[1], x, sweep, "lead_time", "order lead time")
    axes[1].set_ylabel(f"lead time ({line.time_unit})")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("process batch (units)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{line.name}: order {line.order_quantity}, transfer batch min({line.transfer_batch}, process batch)")
    return save(fig, path)


def plot_pipeline(result: PipelineResult, path: "str | Path") -> Path:
    """Gantt chart of the step (forward light, backward dark) and the bubble against M."""
    plt = pyplot()
    p = result.stages
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 * p + 2.5), gridspec_kw={"width_ratios": [2, 1]})
    for (s, _, t0, t1, _) in result.trace.intervals:
        device = s if s < p else 2 * p - 1 - s
        axes[0].barh(device + 1, t1 - t0, left=t0, color="tab:blue" if s < p else "tab:orange",
                     edgecolor="white", linewidth=0.3)
    axes[0].set_yticks(range(1, p + 1))
    axes[0].invert_yaxis()
    axes[0].legend(handles=[plt.Rectangle((0, 0), 1, 1, color="tab:blue"),
                            plt.Rectangle((0, 0), 1, 1, color="tab:orange")],
                   labels=["forward", "backward"], fontsize=8, loc="lower right")
    axes[0].set_xlabel("time")
    axes[0].set_ylabel("device (stage)")
    axes[0].set_title(f"GPipe step: P={p}, M={result.micro_batches}, bubble {result.bubble_fraction:.3f}")
    ms = sorted({1, 2, 4, 8, 16, 32, 64, result.micro_batches})
    axes[1].plot(ms, [bubble_formula(result.stage_times, m) for m in ms], marker="o", ms=3, label="formula")
    axes[1].plot([result.micro_batches], [result.bubble_fraction], "r*", ms=10, label="simulated")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("micro-batches M")
    axes[1].set_ylabel("bubble (idle) fraction")
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    return save(fig, path)
