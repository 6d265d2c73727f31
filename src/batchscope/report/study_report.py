"""`batchscope report DIR`: a Markdown and an HTML page, with PNG plots and a table beside each, for a study.

The page is built once as a list of blocks (heading, paragraph, table, image) and rendered to both
formats, so the two can never disagree.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..study.bcrit import BcritFit
from ..study.findings import (ACC_FLOOR, REL_FLOOR, SPIKE, StudyFindings, analyse, by_batch, distance, peak_loss_ratio,
                              select, val_metric)
from ..study.plan import StudyPlan
from ..study.runner import RunRecord, SavedStudy, load_study
from . import study_plots
from ..serialize import write_json, write_text


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    json: Path
    plots: tuple


def _f(x, digits: int = 3, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if pct:
        return f"{100 * x:.1f}%"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}g}"


def _count(x) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:,.0f}"


def _pm(cell, pct: bool = False) -> str:
    if cell.mean is None:
        return "-"
    if cell.n > 1:
        return (f"{100 * cell.mean:.1f} ± {100 * cell.se:.1f}%" if pct else f"{cell.mean:.3g} ± {cell.se:.2g}")
    return _f(cell.mean, pct=pct)


class Page:
    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list, rows: list) -> None:
        self.blocks.append(("table", header, rows))

    def img(self, path: Optional[Path], alt: str) -> None:
        if path is not None:
            self.blocks.append(("img", path.name, alt))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "table":
                header, rows = b[1], b[2]
                out.append("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n" +
                           "\n".join("| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows))
            else:
                out.append(f"![{b[2]}]({b[1]})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
               "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto;line-height:1.4}"
               "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
               "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}</style>"
               "</head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{html.escape(b[1]).replace('**', '')}</p>")
            elif b[0] == "table":
                head = "".join(f"<th>{html.escape(str(c))}</th>" for c in b[1])
                body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
                out.append(f"<table><tr>{head}</tr>{body}</table>")
            else:
                out.append(f"<img src='{html.escape(b[1])}' alt='{html.escape(b[2])}'>")
        return "\n".join(out) + "</body></html>\n"


def _setup(page: Page, plan: StudyPlan, facts: dict, records: list[RunRecord]) -> None:
    total = len(plan.batch_sizes) * len(plan.optimizers) * len(plan.lr_rules) * len(plan.lr_grid) * \
        len(plan.warmup_epochs) * len(plan.seeds)
    diverged = sum(r.status == "diverged" for r in records)
    train_min = sum(r.wall_seconds for r in records) / 60
    page.h(2, "Setup")
    budget = f"{plan.epochs:g} epochs for every batch size" if plan.budget == "epochs" else \
        f"{plan.steps:,} optimizer steps for every batch size"
    rows = [
        ("task", f"{facts.get('name', plan.task)}: {facts.get('description', '')}"),
        ("model", f"{facts.get('model', '')} ({_f(facts.get('parameters'))} parameters)"),
        ("target", facts.get("target", "") + (f" (overridden: {plan.target:g})" if plan.target is not None else "")),
        ("batch sizes", ", ".join(map(str, plan.batch_sizes))),
        ("budget", budget),
        ("optimizers (lr at B_ref)", ", ".join(f"{o} {plan.lrs.get(o, float('nan')):g}" for o in plan.optimizers)),
        ("lr rules", ", ".join(plan.lr_rules) + f" (lr = lr_ref x (B/{plan.b_ref})^p with p = 0 for none, 1/2 for "
                     "sqrt, 1 for linear)"),
        ("lr multipliers", ", ".join(f"{m:g}" for m in plan.lr_grid)),
        ("warm-up (epochs, linear)", ", ".join(f"{w:g}" for w in plan.warmup_epochs)),
        ("seeds", ", ".join(map(str, plan.seeds))),
        ("gradient norms", f"{plan.grad_norm_batches} fresh batches at {100 * plan.grad_norm_early:g}% of the run "
                           "and at its end (fixed-lr arm, first seed)"),
        ("runs", f"{len(records)} of {total} finished, {diverged} diverged; {train_min:.1f} min of run time "
                 "(summed over runs)"),
    ]
    page.table(["", "value"], rows)


def _findings(page: Page, findings: StudyFindings, plan: StudyPlan) -> None:
    page.h(2, "What the experiments show")
    page.table(["finding", "verdict", "numbers"], [(f.claim, f.verdict.upper(), f.summary) for f in findings.findings])
    note = (f"A difference counts when it exceeds twice the standard error between seeds and a floor "
            f"({100 * ACC_FLOOR:g} accuracy points, {100 * REL_FLOOR:g}% of a distance). A run is unsteady when its "
            f"mini-batch loss rose above {SPIKE:g}x its initial loss (or diverged); warm-up is judged on pairs of runs "
            "that differ only in warm-up. Mixed: held for some optimizers or batch sizes, not for others. "
            "Inconclusive: the direction held but a sign test cannot rule out chance (p > 0.1).")
    if len(plan.seeds) == 1:
        note += " This study has one seed, so only the floors guard against noise."
    page.p(note)


def _accuracy(page: Page, plan: StudyPlan, records: list[RunRecord], findings: StudyFindings, out: Path) -> Path:
    page.h(2, "Validation accuracy and generalization gap against batch size")
    page.p("Fixed learning rate (rule 'none', multiplier 1), no warm-up; mean ± standard error over seeds; "
           "final numbers on the whole training and validation sets.")
    path = study_plots.accuracy_and_gap(plan, records, out / "accuracy_gap.png")
    page.img(path, "validation accuracy and generalization gap against batch size")
    rows = []
    for opt in plan.optimizers:
        rs = select(records, optimizer=opt)
        acc = by_batch(rs, val_metric)
        tr = {c.batch_size: c for c in by_batch(rs, lambda r: r.final.get("train_metric"))}
        gap = {c.batch_size: c for c in by_batch(rs, lambda r: r.final.get("gap"))}
        steps = {c.batch_size: c for c in by_batch(rs, lambda r: float(r.steps))}
        for c in acc:
            rows.append((opt, c.batch_size, _pm(tr[c.batch_size], True), _pm(c, True), _pm(gap[c.batch_size], True),
                         _count(steps[c.batch_size].mean), c.n, c.diverged))
    page.table(["optimizer", "B", "train acc", "val acc", "gap", "steps", "seeds", "diverged"], rows)
    notes = [f"{t['optimizer']}: from B={t['from_batch']} to B={t['to_batch']} the training accuracy changes by "
             f"{100 * t['train_change']:+.1f} points and the gap by {100 * t['gap_change']:+.1f} points"
             + (" - the large batches lose accuracy on the training set too, so at this budget they are "
                "under-trained rather than generalizing worse" if t["under_trained"] else "")
             for t in findings.train_accuracy]
    if notes:
        page.p("; ".join(notes) + ".")
    return path


def _distance(page: Page, plan: StudyPlan, records: list[RunRecord], out: Path) -> Path:
    page.h(2, "Distance from the initial weights")
    page.p("L2 distance ‖w − w0‖ over all parameters during training (first seed), SGD beside Adam, fixed learning "
           "rate; the table gives the final distance and the cosine similarity cos(w, w0) per layer.")
    path = study_plots.distance_curves(plan, records, out / "distance.png")
    page.img(path, "distance from the initial weights against epoch")
    rows = []
    layers: list[str] = []
    for r in records:
        layers = [k for k in r.cosine if k != "total"]
        if layers:
            break
    for opt in plan.optimizers:
        rs = select(records, optimizer=opt)
        for c in by_batch(rs, distance):
            first = [r for r in rs if r.spec.batch_size == c.batch_size and r.status == "ok"]
            cos = min(first, key=lambda r: r.spec.seed).cosine if first else {}
            dist = min(first, key=lambda r: r.spec.seed).distance if first else {}
            rows.append((opt, c.batch_size, _pm(c), _f(cos.get("total"), 4),
                         " / ".join(_f(dist.get(k)) for k in layers), " / ".join(_f(cos.get(k), 3) for k in layers)))
    page.table(["optimizer", "B", "‖w − w0‖", "cos(w, w0)", f"distance per layer ({', '.join(layers)})",
                "cosine per layer"], rows)
    return path


def _grad_norms(page: Page, plan: StudyPlan, records: list[RunRecord], out: Path) -> Optional[Path]:
    page.h(2, "Gradient-norm distribution")
    page.p(f"|g_B| over {plan.grad_norm_batches} fresh batches of size B at an early checkpoint "
           f"({100 * plan.grad_norm_early:g}% of the run) and at the end, without updating the model. Larger batches "
           "average more examples, so their norms are smaller and spread less; the spread is the gradient noise.")
    path = study_plots.grad_norm_histograms(plan, records, out / "grad_norms.png")
    page.img(path, "gradient-norm histograms per batch size")
    rows = []
    for r in sorted((r for r in records if r.grad_norms), key=lambda r: (r.spec.optimizer, r.spec.batch_size)):
        for label in ("early", "late"):
            st = r.grad_norms.get(label)
            if st:
                rows.append((r.spec.optimizer, r.spec.batch_size, label, st.step, st.n, _f(st.mean), _f(st.std),
                             _f(st.std / st.mean if st.mean else None), _f(st.p05), _f(st.median), _f(st.p95)))
    page.table(["optimizer", "B", "checkpoint", "step", "N", "mean", "std", "std/mean", "p5", "median", "p95"], rows)
    return path


def _bcrit(page: Page, plan: StudyPlan, findings: StudyFindings, facts: dict, noise: Optional[dict],
           out: Path) -> Optional[Path]:
    page.h(2, "Empirical critical batch size")
    page.p("Steps S and examples E = B S to reach the target, with the learning-rate arm that got there in the fewest "
           "steps at each batch size (median over seeds; every seed must reach it), fitted to "
           "(S/S_min - 1)(E/E_min - 1) = 1, i.e. S = S_min (1 + B_crit/B) with B_crit = E_min/S_min "
           "(McCandlish et al. 2018). Interval: residual bootstrap of the fit in log S. Steps to target are "
           "interpolated linearly between evaluations.")
    path = study_plots.steps_vs_examples(findings.bcrit, out / "bcrit.png")
    page.img(path, "steps against examples to the target, with the fitted hyperbola and B_crit")
    rows, fits = [], []
    for opt, v in findings.bcrit.items():
        for b, p in v["points"].items():
            rows.append((opt, b, _f(p["steps"], 4), _f(p["examples"], 4), _f(p["lr"]),
                         f"{p['rule']} x{p['multiplier']:g}"
                         + (f", warm-up {p['warmup_epochs']:g}" if p["warmup_epochs"] else "")))
        if v["fit"]:
            f = BcritFit.from_dict(v["fit"])
            fits.append((opt, f"{f.s_min:.4g} [{f.s_min_low:.4g}, {f.s_min_high:.4g}]",
                         f"{f.e_min:.4g} [{f.e_min_low:.4g}, {f.e_min_high:.4g}]",
                         f"{f.b_crit:.3g} [{f.b_crit_low:.3g}, {f.b_crit_high:.3g}]",
                         f"{f.residual_std:.3f}", f.at_edge or "-"))
        elif v["note"]:
            fits.append((opt, "-", "-", "-", "-", v["note"]))
    page.table(["optimizer", "B", "steps to target", "examples to target", "lr", "arm"], rows)
    page.table(["optimizer", "S_min [95%]", "E_min [95%]", "B_crit [95%]", "residual sd of log S", "note"], fits)
    if noise and noise.get("b_simple") is not None:
        ratios = ", ".join(f"{o}: B_crit/B_simple = {v['b_crit_over_b_simple']:.2g}"
                           for o, v in findings.bcrit.items() if v["b_crit_over_b_simple"] is not None)
        end = noise.get("end") or {}
        page.p(f"Measured gradient noise scale beside it: B_simple = {noise['b_simple']:.3g} "
               f"({100 * noise.get('level', 0.9):.0f}% interval {noise['low']:.3g} to {noise['high']:.3g}; "
               f"{noise.get('where', '')})" + (f", {end['b_simple']:.3g} at the end of that run" if end else "") +
               (f". {ratios}" if ratios else "") + ". McCandlish et al. (2018) use B_simple as an estimate of the "
               "noise scale B_noise, which B_crit equals on the ideal hyperbola; they report the two within an "
               "order of magnitude of each other, with B_simple growing as the loss falls.")
    elif noise and noise.get("error"):
        page.p(f"B_simple could not be measured ({noise['where']}): {noise['error']}")
    return path


def _rules_and_warmup(page: Page, plan: StudyPlan, records: list[RunRecord], out: Path) -> Optional[Path]:
    page.h(2, "Learning-rate scaling and warm-up")
    page.p("Final validation accuracy per learning-rate rule and warm-up (top), and the mini-batch training loss at "
           "the largest batch size (bottom). Peak loss ratio: the highest mini-batch loss over the initial loss.")
    path = study_plots.lr_rules_and_warmup(plan, records, out / "lr_warmup.png")
    page.img(path, "effect of learning-rate scaling and warm-up")
    rows = []
    for opt in plan.optimizers:
        for rule in plan.lr_rules:
            for mult in plan.lr_grid:
                for w in plan.warmup_epochs:
                    rs = select(records, optimizer=opt, rule=rule, multiplier=mult, warmup=w)
                    for c in by_batch(rs, val_metric):
                        peaks = [peak_loss_ratio(r) for r in rs if r.spec.batch_size == c.batch_size]
                        lr = next(r.spec.lr for r in rs if r.spec.batch_size == c.batch_size)
                        rows.append((opt, rule, f"{mult:g}", f"{w:g}", c.batch_size, _f(lr), _pm(c, True),
                                     _f(max(peaks)), c.diverged))
    page.table(["optimizer", "rule", "lr x", "warm-up ep", "B", "lr", "val acc", "peak loss ratio", "diverged"], rows)
    return path


def _runs(page: Page, records: list[RunRecord], damaged: list[str]) -> None:
    page.h(2, "Every run")
    if damaged:
        page.p(f"{len(damaged)} stored run record(s) are damaged and left out: {', '.join(damaged)}; "
               "`batchscope study --resume DIR` runs them again.")
    rows = [(r.key, r.status, _f(r.spec.lr), r.steps, _f(r.final.get("val_metric"), pct=True),
             _f(r.final.get("gap"), pct=True), _f(r.distance.get("total")), _f(r.target_step, 4),
             _f(r.wall_seconds, 3))
            for r in sorted(records, key=lambda r: (r.spec.optimizer, r.spec.lr_rule, r.spec.lr_multiplier,
                                                    r.spec.warmup_epochs, r.spec.batch_size, r.spec.seed))]
    page.table(["run", "status", "lr", "steps", "val acc", "gap", "‖w − w0‖", "steps to target", "wall s"], rows)


def _adaptive(page: Page, findings: StudyFindings) -> None:
    if not findings.adaptive:
        return
    page.h(2, "Adaptive batch size against the best fixed batch")
    rows = []
    for c in findings.adaptive:
        for name, arm in (("adaptive", c["adaptive"]), ("best fixed", c["fixed"])):
            if arm is None:
                rows.append((c["optimizer"], name, "did not reach the target", "", "", "", "", ""))
                continue
            batch = (f"{c['start_batch']} → {'/'.join(map(str, c['final_batches']))}" if name == "adaptive"
                     else f"{arm['batch_size']} ({arm['lr_rule']})")
            rows.append((c["optimizer"], name, batch, _f(arm["time"]), _f(arm["clock_seconds"]),
                         _f(arm["examples"], 4), _f(arm["final_metric"], pct=True), _f(arm["wall_seconds"])))
    page.table(["optimizer", "arm", "batch", "time to target s (Σ t(B))", "own clock s", "examples to target",
                "final val", "wall s (run)"], rows)
    page.p(" ".join(c["summary"] for c in findings.adaptive) + " Time to target counts every step at the step "
           "time t(B) the fixed runs measured, so both arms are timed on the same clock; 'own clock' is each run's "
           "training time to the target (for the adaptive run including the noise measurement), 'wall' the "
           "whole run with its evaluations. Means over seeds.")


def write_report(directory: "str | Path", out: "str | Path | None" = None,
                 study: Optional[SavedStudy] = None) -> ReportFiles:
    """Read the study in ``directory`` and write report.md, report.html, findings.json and the PNGs to ``out``.

    ``study``: the directory's :func:`~batchscope.study.runner.load_study`, when the caller read it already.
    """
    directory = Path(directory)
    out = Path(out) if out is not None else directory
    plan, facts, every, noise, damaged = _load(directory, study)   # before any mkdir: a refusal leaves nothing
    out.mkdir(parents=True, exist_ok=True)
    findings = analyse(plan, every, noise)
    records = [r for r in every if not r.spec.adaptive]   # the sections below are about the fixed batches
    page = Page()
    title = f"Batch-size study: {facts.get('name', plan.task)}"
    page.h(1, title)
    _setup(page, plan, facts, records)
    _findings(page, findings, plan)
    plots = [_accuracy(page, plan, records, findings, out), _distance(page, plan, records, out),
             _grad_norms(page, plan, records, out), _bcrit(page, plan, findings, facts, noise, out),
             _rules_and_warmup(page, plan, records, out)]
    _adaptive(page, findings)
    _runs(page, every, damaged)
    md = write_text(out / "report.md", page.markdown())
    htm = write_text(out / "report.html", page.html(title))
    js = write_json(out / "findings.json", _findings_doc(plan, facts, noise, findings))
    return ReportFiles(md, htm, js, tuple(p for p in plots if p is not None))


def _findings_doc(plan: StudyPlan, facts: dict, noise: Optional[dict], findings: StudyFindings) -> dict:
    return {"plan": plan.to_dict(), "task": facts, "noise": noise, **findings.to_dict()}


def study_findings(study: SavedStudy) -> dict:
    """What findings.json holds, computed without writing anything (for when the report cannot be written)."""
    return _findings_doc(study.plan, study.facts, study.noise, analyse(study.plan, study.records, study.noise))


def _load(directory: Path, study: Optional[SavedStudy] = None):
    study = study if study is not None else load_study(directory)
    return study.plan, study.facts, study.records, study.noise, study.damaged
