"""What the study shows: tables over the runs and a verdict, with numbers, on each commonly reported finding.

Every verdict is computed from the runs in the store. A difference counts only when it exceeds the
noise between seeds (twice the standard error of the difference) and a floor (half a point of
accuracy, 2 % of a distance); with one seed only the floor applies, which the report says.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from statistics import median
from typing import Iterable, Optional

import numpy as np

from .adaptive_vs_fixed import adaptive_vs_fixed
from .bcrit import BcritFit, fit_bcrit
from .plan import StudyPlan
from .runner import RunRecord

HELD, NOT_HELD, MIXED, NOT_TESTED = "held", "did not hold", "mixed", "not tested"
INCONCLUSIVE = "inconclusive"   # the direction held, but within what chance gives
ACC_FLOOR = 0.005      # half a percentage point
REL_FLOOR = 0.02       # 2 % of a distance or a loss ratio
SPIKE = 1.5            # a run whose loss rose above 1.5x its initial value was not steady


@dataclass(frozen=True)
class Cell:
    """Mean and standard error over seeds of one quantity at one batch size of one arm."""

    batch_size: int
    mean: Optional[float]
    se: float
    n: int
    diverged: int = 0


def _cell(b: int, values: list, diverged: int = 0) -> Cell:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return Cell(b, None, float("nan"), 0, diverged)
    se = float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else 0.0
    return Cell(b, float(np.mean(vals)), se, len(vals), diverged)


def spearman(x: Iterable[float], y: Iterable[float]) -> float:
    """Rank correlation (average ranks for ties)."""
    def ranks(a):
        a = np.asarray(list(a), dtype=float)
        order = a.argsort()
        r = np.empty(len(a))
        r[order] = np.arange(len(a))
        for v in np.unique(a):
            r[a == v] = r[a == v].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _tol(a: Cell, b: Cell, floor: float) -> float:
    return max(floor, 2 * math.sqrt(a.se ** 2 + b.se ** 2))


def select(records: list[RunRecord], *, optimizer: str, rule: str = "none", multiplier: float = 1.0,
           warmup: float = 0.0) -> list[RunRecord]:
    return [r for r in records if r.spec.optimizer == optimizer and r.spec.lr_rule == rule
            and r.spec.lr_multiplier == multiplier and r.spec.warmup_epochs == warmup]


def by_batch(records: list[RunRecord], value) -> list[Cell]:
    """One Cell per batch size of ``value(record)``; diverged runs are counted, not averaged."""
    sizes = sorted({r.spec.batch_size for r in records})
    out = []
    for b in sizes:
        rs = [r for r in records if r.spec.batch_size == b]
        out.append(_cell(b, [value(r) for r in rs if r.status == "ok"], sum(r.status == "diverged" for r in rs)))
    return out


def val_metric(r: RunRecord) -> Optional[float]:
    return r.final.get("val_metric")


def distance(r: RunRecord) -> Optional[float]:
    return r.distance.get("total")


def peak_loss_ratio(r: RunRecord) -> float:
    """The highest mini-batch loss of the run over the loss at initialisation (inf when it diverged)."""
    if r.status == "diverged":
        return float("inf")
    if not r.step_losses or not r.initial_loss:
        return float("nan")
    return max(r.step_losses) / r.initial_loss


@dataclass(frozen=True)
class Finding:
    name: str
    claim: str
    verdict: str
    summary: str
    numbers: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(x: Optional[float], pct: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.3g}"


def _combine(parts: list[str]) -> str:
    tested = [p for p in parts if p != NOT_TESTED]
    if not tested:
        return NOT_TESTED
    if all(p == HELD for p in tested):
        return HELD
    if all(p == NOT_HELD for p in tested):
        return NOT_HELD
    return MIXED


def _cells_ok(cells: list[Cell]) -> list[Cell]:
    return [c for c in cells if c.mean is not None]


def finding_large_batch_accuracy(plan: StudyPlan, records: list[RunRecord]) -> Finding:
    claim = "At a fixed number of epochs and a fixed learning rate, larger batches reach lower validation accuracy."
    name = "large_batches_lower_accuracy"
    if (plan.budget != "epochs" or "none" not in plan.lr_rules or 1.0 not in plan.lr_grid
            or 0.0 not in plan.warmup_epochs):
        return Finding(name, claim, NOT_TESTED, "needs an epoch budget and the arm with lr rule 'none', "
                       "multiplier 1 and no warm-up")
    parts, texts, numbers = [], [], {}
    for opt in plan.optimizers:
        cells = _cells_ok(by_batch(select(records, optimizer=opt), val_metric))
        if len(cells) < 2:
            parts.append(NOT_TESTED)
            continue
        lo, hi = cells[0], cells[-1]
        drop = lo.mean - hi.mean
        rho = spearman([c.batch_size for c in cells], [c.mean for c in cells])
        ok = drop > _tol(lo, hi, ACC_FLOOR) and rho < 0
        parts.append(HELD if ok else NOT_HELD)
        numbers[opt] = {"acc_small": lo.mean, "acc_large": hi.mean, "b_small": lo.batch_size,
                        "b_large": hi.batch_size, "drop": drop, "spearman": rho}
        texts.append(f"{opt}: {_fmt(lo.mean, True)} at B={lo.batch_size} vs {_fmt(hi.mean, True)} at "
                     f"B={hi.batch_size} (drop {100 * drop:.1f} points, needed > {100 * _tol(lo, hi, ACC_FLOOR):.1f}; "
                     f"rank correlation {rho:+.2f}) [{parts[-1]}]")
    return Finding(name, claim, _combine(parts), "; ".join(texts) or "no runs", numbers)


def finding_lr_scaling(plan: StudyPlan, records: list[RunRecord]) -> Finding:
    claim = "Scaling the learning rate with the batch size closes part of that gap."
    name = "lr_scaling_closes_gap"
    rules = [r for r in plan.lr_rules if r != "none"]
    if "none" not in plan.lr_rules or not rules or 1.0 not in plan.lr_grid or plan.budget != "epochs":
        return Finding(name, claim, NOT_TESTED, "needs the rule 'none' beside 'linear' or 'sqrt' at an epoch budget")
    parts, texts, numbers = [], [], {}
    for opt in plan.optimizers:
        base = {c.batch_size: c for c in _cells_ok(by_batch(select(records, optimizer=opt), val_metric))}
        if len(base) < 2:
            parts.append(NOT_TESTED)
            continue
        b0 = min(base)
        larger = sorted(b for b in base if b != b0)
        gap_none = float(np.mean([base[b0].mean - base[b].mean for b in larger]))
        best = None
        for rule in rules:
            for w in plan.warmup_epochs:
                cells = by_batch(select(records, optimizer=opt, rule=rule, warmup=w), val_metric)
                got = {c.batch_size: c for c in cells}
                # A diverged arm is at chance, not missing: count it as the loss of all it had gained.
                accs = [got[b].mean if b in got and got[b].mean is not None and not got[b].diverged else 0.0
                        for b in larger]
                gap_rule = float(np.mean([base[b0].mean - a for a in accs]))
                closed = 1 - gap_rule / gap_none if gap_none > 0 else float("nan")
                numbers[f"{opt}/{rule}/w{w:g}"] = {"gap_none": gap_none, "gap_rule": gap_rule, "closed": closed}
                if best is None or gap_rule < best[2]:
                    best = (rule, w, gap_rule, closed)
        if gap_none <= ACC_FLOOR:
            parts.append(NOT_TESTED)
            texts.append(f"{opt}: no gap to close (mean gap {100 * gap_none:.1f} points without scaling)")
            continue
        rule, w, gap_rule, closed = best
        ok = gap_none - gap_rule > ACC_FLOOR
        parts.append(HELD if ok else NOT_HELD)
        texts.append(f"{opt}: mean gap to B={b0} over larger batches {100 * gap_none:.1f} points at a fixed lr; "
                     f"best rule {rule}" + (f" with {w:g} warm-up epochs" if w else "") +
                     f" leaves {100 * gap_rule:.1f} points (closes {_fmt(closed, True)}) [{parts[-1]}]")
    return Finding(name, claim, _combine(parts), "; ".join(texts) or "no runs", numbers)


def finding_distance(plan: StudyPlan, records: list[RunRecord]) -> Finding:
    claim = "Small batches travel farther from the initial weights."
    name = "small_batches_travel_farther"
    parts, texts, numbers = [], [], {}
    for opt in plan.optimizers:
        cells = _cells_ok(by_batch(select(records, optimizer=opt), distance))
        if len(cells) < 2:
            parts.append(NOT_TESTED)
            continue
        lo, hi = cells[0], cells[-1]
        rho = spearman([c.batch_size for c in cells], [c.mean for c in cells])
        ok = lo.mean - hi.mean > _tol(lo, hi, REL_FLOOR * lo.mean) and rho < 0
        parts.append(HELD if ok else NOT_HELD)
        numbers[opt] = {"dist_small": lo.mean, "dist_large": hi.mean, "ratio": lo.mean / hi.mean, "spearman": rho}
        texts.append(f"{opt}: ‖w − w0‖ = {lo.mean:.3g} at B={lo.batch_size} vs {hi.mean:.3g} at B={hi.batch_size} "
                     f"({lo.mean / hi.mean:.2f}x, rank correlation {rho:+.2f}) [{parts[-1]}]")
    if not texts:
        return Finding(name, claim, NOT_TESTED, "needs the fixed-lr arm at two or more batch sizes")
    return Finding(name, claim, _combine(parts), "; ".join(texts), numbers)


def finding_adam_vs_sgd(plan: StudyPlan, records: list[RunRecord]) -> Finding:
    claim = "Adam travels farther from the initial weights than SGD."
    name = "adam_travels_farther"
    adam = next((o for o in plan.optimizers if o in ("adam", "adamw")), None)
    if adam is None or "sgd" not in plan.optimizers:
        return Finding(name, claim, NOT_TESTED, "needs both sgd and adam (or adamw) in the study")
    sgd = {c.batch_size: c for c in _cells_ok(by_batch(select(records, optimizer="sgd"), distance))}
    ada = {c.batch_size: c for c in _cells_ok(by_batch(select(records, optimizer=adam), distance))}
    common = sorted(set(sgd) & set(ada))
    if not common:
        return Finding(name, claim, NOT_TESTED, "no batch size with finished runs of both optimizers")
    ratios = {b: ada[b].mean / sgd[b].mean for b in common}
    farther = [b for b in common if ada[b].mean - sgd[b].mean > _tol(ada[b], sgd[b], REL_FLOOR * sgd[b].mean)]
    nearer = [b for b in common if sgd[b].mean - ada[b].mean > _tol(ada[b], sgd[b], REL_FLOOR * sgd[b].mean)]
    verdict = HELD if len(farther) == len(common) else NOT_HELD if len(nearer) == len(common) or not farther else MIXED
    summary = (f"{adam}/sgd distance ratio {min(ratios.values()):.2f}-{max(ratios.values()):.2f} "
               f"(median {median(ratios.values()):.2f}); {adam} farther at {len(farther)} of {len(common)} batch sizes"
               + (f", nearer at {len(nearer)}" if nearer else ""))
    return Finding(name, claim, verdict, summary, {"ratios": ratios, "farther": farther, "nearer": nearer})


def sign_test(wins: int, losses: int) -> float:
    """One-sided p-value of at least ``wins`` successes in ``wins + losses`` fair coin flips."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n if n else 1.0


def finding_warmup(plan: StudyPlan, records: list[RunRecord]) -> Finding:
    """Paired comparison: the same optimizer, rule, multiplier, batch size and seed with and without warm-up.

    Only pairs in which at least one run was unsteady (a loss spike above SPIKE x the initial loss,
    or divergence) can show steadying; among them, warm-up wins when its peak loss is lower. A
    one-sided sign test says whether the wins could be chance.
    """
    claim = "Warm-up steadies large-batch training."
    name = "warmup_steadies_large_batches"
    warm = [w for w in plan.warmup_epochs if w > 0]
    if not warm or 0.0 not in plan.warmup_epochs:
        return Finding(name, claim, NOT_TESTED, "needs runs with and without warm-up (for example --warmup-epochs 0,2)")
    w = max(warm)
    large = sorted(plan.batch_sizes)[len(plan.batch_sizes) // 2:]
    index = {(r.spec.optimizer, r.spec.lr_rule, r.spec.lr_multiplier, r.spec.batch_size, r.spec.seed,
              r.spec.warmup_epochs): r for r in records if r.spec.batch_size in large}
    pairs = []
    for (opt, rule, mult, b, seed, wu), r0 in index.items():
        r1 = index.get((opt, rule, mult, b, seed, w)) if wu == 0 else None
        if r1 is not None:
            pairs.append((f"{opt}/{rule}/x{mult:g}/B{b}/s{seed}", peak_loss_ratio(r0), peak_loss_ratio(r1),
                          r0.status == "diverged", r1.status == "diverged"))
    if not pairs:
        return Finding(name, claim, NOT_TESTED, "no finished pairs of runs with and without warm-up at the large "
                       "batch sizes")
    unsteady = [p for p in pairs if p[1] > SPIKE or p[2] > SPIKE]
    wins = [p[0] for p in unsteady if p[2] < p[1]]
    losses = [p[0] for p in unsteady if p[2] > p[1]]
    p_value = sign_test(len(wins), len(losses))
    numbers = {"warmup_epochs": w, "batch_sizes": large, "pairs": len(pairs), "unsteady_pairs": len(unsteady),
               "unsteady_without": sum(p[1] > SPIKE for p in pairs), "unsteady_with": sum(p[2] > SPIKE for p in pairs),
               "diverged_without": sum(p[3] for p in pairs), "diverged_with": sum(p[4] for p in pairs),
               "warmup_lower_peak": wins, "warmup_higher_peak": losses, "p_value": p_value}
    head = (f"{len(pairs)} paired runs at B >= {large[0]} with and without {w:g} epochs of warm-up: "
            f"{numbers['unsteady_without']} unsteady without ({numbers['diverged_without']} diverged), "
            f"{numbers['unsteady_with']} with ({numbers['diverged_with']} diverged)")
    if not unsteady:
        return Finding(name, claim, NOT_HELD, head + "; no run was unsteady either way, so there was nothing to "
                       "steady at these learning rates", numbers)
    head += (f"; of the {len(unsteady)} pairs with an unsteady run, warm-up lowered the peak loss in {len(wins)} and "
             f"raised it in {len(losses)} (sign test p = {p_value:.2g})")
    if len(wins) <= len(losses):
        return Finding(name, claim, NOT_HELD, head, numbers)
    return Finding(name, claim, HELD if p_value <= 0.1 else INCONCLUSIVE, head, numbers)


def steps_to_target(records: list[RunRecord], optimizer: str) -> dict[int, dict]:
    """Per batch size, the learning-rate arm that reached the target in the fewest steps (median over seeds).

    An arm counts only if every one of its seeds reached the target, so a lucky seed cannot win.
    """
    arms: dict[tuple, list[RunRecord]] = {}
    for r in records:
        if r.spec.optimizer == optimizer:
            s = r.spec
            arms.setdefault((s.batch_size, s.lr_rule, s.lr_multiplier, s.warmup_epochs), []).append(r)
    best: dict[int, dict] = {}
    for (b, rule, mult, w), rs in arms.items():
        if any(r.target_step is None or r.status != "ok" for r in rs):
            continue
        s = float(median(r.target_step for r in rs))
        if s <= 0:
            continue
        if b not in best or s < best[b]["steps"]:
            best[b] = {"steps": s, "examples": s * b, "lr": rs[0].spec.lr, "rule": rule, "multiplier": mult,
                       "warmup_epochs": w, "seeds": len(rs)}
    return dict(sorted(best.items()))


def fit_study_bcrit(records: list[RunRecord], optimizer: str) -> tuple[dict, Optional[BcritFit], str]:
    points = steps_to_target(records, optimizer)
    if len(points) < 3:
        return points, None, (f"{optimizer}: the target was reached at {len(points)} batch size(s); the fit needs 3 "
                              "(train longer, lower the target with --target, or add learning rates)")
    fit = fit_bcrit(list(points), [p["steps"] for p in points.values()])
    return points, fit, ""


def train_accuracy_change(plan: StudyPlan, records: list[RunRecord]) -> list[dict]:
    """Per optimizer, how training accuracy and the gap change from the smallest to the largest batch.

    ``under_trained`` is True when the large batches lose training accuracy too (beyond the floor)
    while their gap shrinks: at this budget they are under-trained rather than generalizing worse.
    """
    out = []
    for opt in plan.optimizers:
        rs = select(records, optimizer=opt)
        tr = _cells_ok(by_batch(rs, lambda r: r.final.get("train_metric")))
        gap = _cells_ok(by_batch(rs, lambda r: r.final.get("gap")))
        if len(tr) < 2 or len(gap) < 2:
            continue
        lost_train = tr[0].mean - tr[-1].mean
        out.append({"optimizer": opt, "from_batch": tr[0].batch_size, "to_batch": tr[-1].batch_size,
                    "train_change": -lost_train, "gap_change": gap[-1].mean - gap[0].mean,
                    "under_trained": bool(lost_train > ACC_FLOOR and gap[-1].mean < gap[0].mean)})
    return out


def not_enough_finished(records: list[RunRecord]) -> str:
    """The reason a finding that needs finished runs gives when divergence took them ("" if none diverged)."""
    diverged = sum(r.status == "diverged" for r in records)
    if not diverged:
        return ""
    return f"not enough finished runs: {diverged} of {len(records)} diverged"


@dataclass(frozen=True)
class StudyFindings:
    findings: list
    bcrit: dict          # optimizer -> {"points", "fit" (BcritFit dict or None), "note", "b_crit_over_b_simple"}
    train_accuracy: list = field(default_factory=list)   # see train_accuracy_change
    diverged: list = field(default_factory=list)         # keys of the runs that diverged
    adaptive: list = field(default_factory=list)         # adaptive vs best fixed, per optimizer (adaptive_vs_fixed)

    def to_dict(self) -> dict:
        return {"findings": [f.to_dict() for f in self.findings], "bcrit": self.bcrit,
                "train_accuracy": self.train_accuracy, "diverged": self.diverged, "adaptive": self.adaptive}


def analyse(plan: StudyPlan, records: list[RunRecord], noise: Optional[dict] = None) -> StudyFindings:
    """Every finding, the B_crit fit per optimizer, and its ratio to the measured B_simple (``noise``).

    The findings and the fit are over the fixed-batch runs; adaptive runs are set against them apart.
    """
    every = records
    records = [r for r in records if not r.spec.adaptive]
    findings = [finding_large_batch_accuracy(plan, records), finding_lr_scaling(plan, records),
                finding_distance(plan, records), finding_adam_vs_sgd(plan, records), finding_warmup(plan, records)]
    why = not_enough_finished(records)
    if why:
        findings = [replace(f, summary=f"{why}; {f.summary}") if f.verdict == NOT_TESTED else f for f in findings]
    b_simple = (noise or {}).get("b_simple")
    bcrit = {}
    for opt in plan.optimizers:
        points, fit, note = fit_study_bcrit(records, opt)
        if fit is None and why:
            note = f"{why}; {note}"
        ratio = fit.b_crit / b_simple if fit is not None and b_simple and math.isfinite(b_simple) else None
        bcrit[opt] = {"points": points, "fit": fit.to_dict() if fit else None, "note": note,
                      "b_crit_over_b_simple": ratio}
    return StudyFindings(findings, bcrit, train_accuracy_change(plan, records),
                         [r.key for r in every if r.status == "diverged"], adaptive_vs_fixed(every))
