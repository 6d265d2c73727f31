"""The study's PNG plots. matplotlib is imported only here and only when a plot is drawn."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from ..study.bcrit import BcritFit
from ..study.findings import by_batch, select, val_metric
from ..study.plan import StudyPlan
from ..study.runner import RunRecord
from .plots import pyplot, save


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _colors(n: int):
    plt = pyplot()
    cmap = plt.get_cmap("viridis")
    return [cmap(i / max(1, n - 1) * 0.9) for i in range(n)]


def accuracy_and_gap(plan: StudyPlan, records: list[RunRecord], path: Path) -> Path:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for opt in plan.optimizers:
        rs = select(records, optimizer=opt)
        acc = [c for c in by_batch(rs, val_metric) if c.mean is not None]
        gap = [c for c in by_batch(rs, lambda r: r.final.get("gap")) if c.mean is not None]
        ax1.errorbar([c.batch_size for c in acc], [c.mean for c in acc], [c.se for c in acc], marker="o",
                     capsize=3, label=opt)
        ax2.errorbar([c.batch_size for c in gap], [c.mean for c in gap], [c.se for c in gap], marker="o",
                     capsize=3, label=opt)
    for ax, title in ((ax1, "final validation accuracy"), (ax2, "generalization gap (train - val accuracy)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size B")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        _legend(ax)
    fig.suptitle(f"fixed learning rate, {plan.epochs:g} epochs" if plan.budget == "epochs" else f"{plan.steps} steps")
    return save(fig, path, dpi=110)


def distance_curves(plan: StudyPlan, records: list[RunRecord], path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(plan.optimizers), figsize=(5 * len(plan.optimizers), 4), sharey=True,
                             squeeze=False)
    colors = _colors(len(plan.batch_sizes))
    for ax, opt in zip(axes[0], plan.optimizers):
        rs = select(records, optimizer=opt)
        for color, b in zip(colors, plan.batch_sizes):
            runs = [r for r in rs if r.spec.batch_size == b and r.status == "ok"]
            if not runs:
                continue
            r = min(runs, key=lambda r: r.spec.seed)
            ax.plot([p["epoch"] for p in r.curve], [p["distance"] for p in r.curve], color=color, label=f"B={b}")
        ax.set_title(f"{opt}, fixed lr")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=8)
    axes[0][0].set_ylabel("‖w − w0‖ (all layers)")
    return save(fig, path, dpi=110)


def grad_norm_histograms(plan: StudyPlan, records: list[RunRecord], path: Path) -> Optional[Path]:
    rs = [r for r in records if r.grad_norms]
    if not rs:
        return None
    plt = pyplot()
    opts = [o for o in plan.optimizers if any(r.spec.optimizer == o for r in rs)]
    fig, axes = plt.subplots(len(opts), 2, figsize=(10, 3.6 * len(opts)), squeeze=False)
    colors = dict(zip(plan.batch_sizes, _colors(len(plan.batch_sizes))))
    for row, opt in zip(axes, opts):
        for ax, label in zip(row, ("early", "late")):
            runs = sorted((r for r in rs if r.spec.optimizer == opt and label in r.grad_norms),
                          key=lambda r: r.spec.batch_size)
            all_norms = np.concatenate([np.asarray(r.grad_norms[label].norms) for r in runs]) if runs else np.array([])
            if all_norms.size == 0:
                continue
            lo, hi = np.log10(max(all_norms.min(), 1e-12)), np.log10(all_norms.max())
            bins = np.logspace(lo, hi + 1e-9, 40)
            for r in runs:
                st = r.grad_norms[label]
                ax.hist(st.norms, bins=bins, histtype="step", color=colors[r.spec.batch_size], density=True,
                        label=f"B={r.spec.batch_size} (step {st.step})")
            ax.set_xscale("log")
            from matplotlib.ticker import NullFormatter

            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{opt}: {label} checkpoint")
            ax.set_xlabel("|g_B| of one batch")
            _legend(ax, fontsize=7)
    return save(fig, path, dpi=110)


def steps_vs_examples(bcrit: dict, path: Path) -> Optional[Path]:
    usable = {o: v for o, v in bcrit.items() if v["points"]}
    if not usable:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(usable), figsize=(5.5 * len(usable), 4.2), squeeze=False)
    for ax, (opt, v) in zip(axes[0], usable.items()):
        pts = v["points"]
        bs = np.array([float(b) for b in pts])
        s = np.array([p["steps"] for p in pts.values()])
        ax.scatter(s, s * bs, color="k", zorder=3)
        for b, si in zip(bs, s):
            ax.annotate(f"B={b:g}", (si, si * b), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if v["fit"]:
            fit = BcritFit.from_dict(v["fit"])
            grid = np.logspace(math.log10(bs.min() / 4), math.log10(bs.max() * 4), 200)
            ax.plot([fit.steps_at(b) for b in grid], [fit.examples_at(b) for b in grid], color="C0",
                    label="(S/S_min - 1)(E/E_min - 1) = 1")
            ax.scatter([fit.steps_at(fit.b_crit)], [fit.examples_at(fit.b_crit)], marker="*", s=180, color="C3",
                       zorder=4, label=f"B_crit = {fit.b_crit:.3g} [{fit.b_crit_low:.3g}, {fit.b_crit_high:.3g}]")
            ax.axvline(fit.s_min, color="0.6", ls=":", label=f"S_min = {fit.s_min:.3g}")
            ax.axhline(fit.e_min, color="0.6", ls="--", label=f"E_min = {fit.e_min:.3g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        from matplotlib.ticker import NullFormatter

        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("optimizer steps to target S")
        ax.set_ylabel("examples to target E = B S")
        ax.set_title(f"{opt}: best learning rate per batch size")
        ax.grid(alpha=0.3, which="both")
        _legend(ax, fontsize=7)
    return save(fig, path, dpi=110)


def lr_rules_and_warmup(plan: StudyPlan, records: list[RunRecord], path: Path) -> Optional[Path]:
    arms = [(rule, w) for rule in plan.lr_rules for w in plan.warmup_epochs]
    if len(arms) < 2:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(2, len(plan.optimizers), figsize=(5.5 * len(plan.optimizers), 8), squeeze=False)
    big = plan.batch_sizes[-1]
    for col, opt in enumerate(plan.optimizers):
        ax = axes[0][col]
        for i, (rule, w) in enumerate(arms):
            cells = by_batch(select(records, optimizer=opt, rule=rule, warmup=w), val_metric)
            pts = [(c.batch_size, c.mean) for c in cells if c.mean is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ls="-" if w == 0 else "--", color=f"C{plan.lr_rules.index(rule)}",
                        label=f"lr {rule}" + (f", warm-up {w:g} ep" if w else ""))
            for c in cells:
                if c.diverged:
                    ax.scatter([c.batch_size], [0], marker="x", color=f"C{plan.lr_rules.index(rule)}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size B")
        ax.set_ylabel("final validation accuracy")
        ax.set_title(f"{opt}: learning-rate rules (x = diverged)")
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=7)
        ax = axes[1][col]
        for rule, w in arms:
            rs = [r for r in select(records, optimizer=opt, rule=rule, warmup=w) if r.spec.batch_size == big]
            if not rs:
                continue
            r = min(rs, key=lambda r: r.spec.seed)
            losses = np.asarray(r.step_losses, dtype=float)
            ax.plot(np.arange(1, len(losses) + 1), losses, ls="-" if w == 0 else "--",
                    color=f"C{plan.lr_rules.index(rule)}", lw=1,
                    label=f"lr {rule}" + (f", warm-up {w:g} ep" if w else "")
                    + (" (diverged)" if r.status != "ok" else ""))
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("mini-batch training loss")
        ax.set_title(f"{opt}: training loss at B={big}, seed {min(plan.seeds)}")
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=7)
    return save(fig, path, dpi=110)
