"""The `find` report: Markdown with PNG plots of every number the recommendation rests on."""

from __future__ import annotations

import math
from pathlib import Path

from ..plan.find import FindResult, micro_batch_limit_reason
from ..serialize import write_json, write_text
from .hardware_plot import plot_profile
from .plots import pyplot, save


def _plot_noise(result, path: Path) -> Path:
    plt = pyplot()
    g = result.growth
    advice = result.recommendation
    fig, ax = plt.subplots(figsize=(6, 4))
    w = [x for x in g["windows"] if x["b_simple"] and math.isfinite(x["b_simple"])]
    ax.plot([x["loss"] for x in w], [x["b_simple"] for x in w], "o", label="measured (window ratio of averages)")
    ax.plot(g["curve"]["loss"], g["curve"]["b_simple"], "-", label=f"fit: B_simple ~ L^{g['slope']:.2f}")
    bt = advice.b_simple_at_target
    if math.isfinite(bt["low"]) and math.isfinite(bt["high"]):
        ax.errorbar([bt["loss"]], [bt["value"]], yerr=[[bt["value"] - bt["low"]], [bt["high"] - bt["value"]]],
                    fmt="s", color="C3", capsize=4, label="the law at the target loss (90%)")
    else:
        ax.plot([bt["loss"]], [bt["value"]], "s", color="C3", label="the law at the target loss")
    ax.set(xscale="log", yscale="log", xlabel="training loss", ylabel="B_simple", title="noise scale against loss")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    return save(fig, path)


def _plot_candidates(result, path: Path) -> Path:
    plt = pyplot()
    advice = result.recommendation
    c = advice.candidates
    b = [x["batch_size"] for x in c]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(b, [x["seconds"] for x in c], "o-", label="predicted time to target (s)")
    ax.set(xscale="log", yscale="log", xlabel="batch size B", ylabel="seconds")
    ax2 = ax.twinx()
    ax2.plot(b, [x["relative_compute"] for x in c], "s--", color="C1", label="compute E/E_min")
    ax2.set(ylabel="compute / minimum", yscale="log")
    ax.axvline(advice.batch_size, color="C3", lw=1)
    ax.annotate(f"recommended B={advice.batch_size}", (advice.batch_size, ax.get_ylim()[1]), color="C3",
                ha="center", va="top", fontsize=8)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper center")
    ax.set_title("trade-off over batch sizes")
    return save(fig, path)


def write_find_report(result: FindResult, task, directory: "str | Path") -> Path:
    """find.json, three PNGs and README.md in ``directory``; each file complete or absent (atomic writes)."""
    d = Path(directory)
    write_json(d / "find.json", result.to_dict())
    plot_profile(result.profile, d / "hardware.png")
    _plot_noise(result, d / "noise_vs_loss.png")
    _plot_candidates(result, d / "tradeoff.png")
    return write_text(d / "README.md", _markdown(result, task))


def _task_line(task, target=None) -> str:
    """What the task is; a user's task that describes neither its data nor its model gets the facts known here."""
    data = task.description or f"{task.name}, {task.n_train:,} training examples"
    model = task.model_description or f"{task.parameter_count():,} parameters"
    return f"{data}; model {model}; target {target or task.target.describe(task.metric_name)}"


def _markdown(result: FindResult, task) -> str:
    r = result.recommendation
    m = result.measuring
    bc, bs = r.b_crit, r.b_simple_at_target
    lines = [
        f"# batchscope find: {task.name}",
        "",
        f"Task: {_task_line(task, m['target']['stated'])}.",
        "",
        "## Recommendation",
        "",
        f"- objective: **{r.objective}**",
        f"- batch size **{r.batch_size}** = micro-batch {r.micro_batch} x accumulation {r.accumulation}"
        f" x devices {r.devices}",
        f"- learning rate **{r.lr:.4g}** ({r.lr_rule}); warm-up {r.warmup_steps} steps",
        f"- why this rate: {r.lr_why}",
        f"- predicted: {r.predicted['steps']:,.0f} steps, {r.predicted['examples']:,.0f} examples, "
        f"{r.predicted['seconds']:.1f} s to the target",
        "",
        "## Evidence",
        "",
        f"- critical batch B_crit = {bc['value']:.0f} ({bc['level']:.0%}: {bc['low']:.0f} to {bc['high']:.0f}), "
        f"the one the planner uses in S(B) = S_min (1 + B_crit / B): {bc['how']}",
        f"- calibration: {bc['calibration']}",
        f"- target in loss units: training loss {bs['loss']:.3g}, from: {bs['how']}",
        f"- the growth law's B_simple at that loss: {bs['value']:.3g} (90%: {bs['low']:.3g} to {bs['high']:.3g}), "
        f"extrapolated {bs['extrapolation']:.1f}x beyond the measured losses; it shapes only the plot below",
        f"- hardware ({result.profile.device.get('type')}): step time = {r.evidence['alpha'] * 1e3:.3g} ms + "
        f"{r.evidence['beta'] * 1e6:.3g} us x B; micro-batch at most {r.evidence['micro_batch_limit']:,} "
        f"({micro_batch_limit_reason(result.profile)})",
        f"- measuring run: batch {m['batch_size']} (micro-batch {m['micro_batch']}), lr {m['lr']:g}, "
        f"{m['steps']} steps, {m['examples']:,} examples = {m['fraction_of_projected_run']:.1%} of the projected "
        f"{m['projected_examples_to_target']:,.0f} examples to the target ({m['stopped_because']})",
        "",
        "![step time and memory](hardware.png)",
        "",
        "![noise scale against loss](noise_vs_loss.png)",
        "",
        "## Candidates",
        "",
        "| batch | micro x accum | steps | examples | seconds | time / fastest | compute / E_min |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in r.candidates:
        mark = " **<-**" if c["batch_size"] == r.batch_size else ""
        lines.append(f"| {c['batch_size']}{mark} | {c['micro_batch']} x {c['accumulation']} | {c['steps']:,.0f} | "
                     f"{c['examples']:,.0f} | {c['seconds']:.2f} | {c['relative_time']:.2f} | "
                     f"{c['relative_compute']:.2f} |")
    lines += ["", "![trade-off](tradeoff.png)", "", "## Growth schedule", "",
              "B_crit at each loss moves along the growth law from the window it was measured on; the schedule "
              f"ends at the recommended batch {r.batch_size} (beyond it, `train --adaptive` measures as it goes).", "",
              "| from training loss | B_crit there | batch | micro x accum | lr |", "|---:|---:|---:|---:|---:|"]
    for s in r.schedule:
        lines.append(f"| {s['from_loss']:.3g} | {s['b_crit']:.0f} | {s['batch_size']} | "
                     f"{s['micro_batch']} x {s['accumulation']} | {s['lr']:.4g} |")
    lines += ["", "## Caveats", ""] + [f"- {c}" for c in r.caveats]
    lines += ["", "## Constraints", ""] + [f"- {c}" for c in r.constraints]
    return "\n".join(lines) + "\n"
