"""Check `find`'s recommendation in the user's own loop before giving it: the stability bound of the
rate, then short branches forked from the measuring run's end state.

1. **Stability** (SGD-type optimizers): λ_max of the training loss on :data:`SHARPNESS_BATCH` training
   examples at the measuring run's end (power iteration of Hessian-vector products,
   :func:`batchscope.noise.hessian.sharpness`; weight decay adds its own curvature), the heavy-ball
   bound 2(1 + μ)/λ_max (:func:`~batchscope.noise.hessian.sgd_stability_bound`), and the cap
   :data:`~batchscope.plan.branch_check.SAFETY` x the bound (never below the reference rate): every rate
   find recommends or tries stays at or below it. Adam-type optimizers have no such bound; the branches
   guard their rate.
2. **Branches** (``verify=True``): the settings of :func:`~batchscope.plan.branch_check.candidate_settings`,
   each trained from a fork of the measuring run (model, optimizer, RNG) for the same examples, in the same
   order (a permutation of their own); the decisions are :mod:`batchscope.plan.branch_check`'s. Time is
   the profile's: each step costs the modelled step time of its batch on the hardware planned for
   (the seconds it took here are reported beside it). The parent run is left as it was.

:func:`check` is the one call `find` makes after its recommendation is computed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch

from ..data import IndexStream
from ..hardware import HardwareProfile, StepTimeModel
from ..noise.hessian import sgd_settings, sgd_stability_bound, task_sharpness
from ..tasks import Task
from ..train import FixedBatch, StepPlan
from . import recommend
from .branch_check import (SAFETY, Figures, Setting, branch_examples, budget_figures, candidate_settings, cap_rate,
                           decide, final_schedule, next_checks, stability_cap)

if TYPE_CHECKING:
    from .find import FindResult, Measurement

SHARPNESS_BATCH = 512     # training examples λ_max is measured on
BRANCH_SEED = 7919        # the branches' own data order: the same permutation for every branch
TIME_BASIS = ("modelled: each branch step costs the profile's step time at its batch (the hardware planned "
              "for); 'seconds' is what it took here")


# ---- the stability bound ---------------------------------------------------------------------------------

def measure_stability(task: Task, m: "Measurement", seed: int = 0, batch: int = SHARPNESS_BATCH) -> dict:
    """λ_max at the measuring run's end and the bound and cap it sets (inf: no bound), as JSON-ready numbers.

    The parent run is untouched: its buffers, gradients and the global RNG are as before.
    """
    run = m.live
    opt = run.ctx.optimizer
    name = type(opt).__name__
    base = {"optimizer": name, "lr_ref": m.lr, "safety": SAFETY}
    if not isinstance(opt, torch.optim.SGD):
        return {**base, "bound": math.inf, "cap": math.inf, "capped": False,
                "how": f"{task.optimizer} is adaptive: no curvature bound on its rate; the branch check guards it"}
    g = sgd_settings(opt)
    momentum, nesterov, wd = g["momentum"], g["nesterov"], g["weight_decay"]
    n = min(batch, task.n_train)
    idx = torch.randperm(task.n_train, generator=torch.Generator().manual_seed(seed + BRANCH_SEED))[:n]
    try:
        s = task_sharpness(task, run.ctx.model, idx, run.ctx.device, seed=seed)
    except (ValueError, RuntimeError) as e:   # a non-finite loss; an operation without a double backward
        first = (str(e).strip().splitlines() or [""])[0]
        return {**base, "bound": math.inf, "cap": math.inf, "capped": False, "examples": n,
                "how": f"lambda_max not measured ({type(e).__name__}: {first}): no bound; the branch check guards "
                       "the rate"}
    lam = s.value + wd                                   # weight decay adds wd to every eigenvalue
    bound = sgd_stability_bound(lam, momentum, nesterov)
    formula = "2(1+mu)/((1+2mu) lambda)" if nesterov else "2(1+mu)/lambda"
    return {**base, "lambda_max": lam, "iterations": s.iterations, "converged": s.converged,
            "rel_change": s.rel_change, "examples": n, "momentum": momentum, "nesterov": nesterov,
            "weight_decay": wd, "bound": bound, "cap": stability_cap(bound, m.lr), "capped": False,
            "how": f"lambda_max {lam:.4g} on {n} training examples at the measuring run's end "
                   f"({'converged' if s.converged else 'not converged'} after {s.iterations} products); "
                   f"bound {formula} = {bound:.4g}; cap {SAFETY:g} x bound, never below the reference rate "
                   f"{m.lr:.4g}"}


# ---- the branches --------------------------------------------------------------------------------------

class BranchBatch(FixedBatch):
    """A fixed batch for a branch: its own data order, no step limit, and a linear ramp from the parent's
    rate to the branch's over ``ramp`` steps when the branch's rate is higher."""

    def __init__(self, task: Task, cfg, batch: int, micro_batch: int, lr: float, from_lr: float, ramp: int,
                 seed: int):
        super().__init__(task, cfg, batch_size=batch, micro_batch=micro_batch, lr=lr)
        self.stream = IndexStream(task.n_train, batch, seed)
        self.from_lr, self.ramp, self.first = from_lr, ramp if lr > from_lr else 0, 0

    def begin(self, ctx) -> None:
        super().begin(ctx)
        self.first = ctx.step

    def plan(self, ctx) -> StepPlan:
        k = ctx.step - self.first
        f = min(1.0, (k + 1) / self.ramp) if self.ramp else 1.0
        return StepPlan(self.stream.next(), self.micro_batch, self.start_batch // self.micro_batch,
                        tuple(self.from_lr + (base - self.from_lr) * f for base in self.base_lrs))

    def exhausted(self, ctx) -> bool:
        return False


def _inputs(result: "FindResult", m: "Measurement", task: Task, profile: HardwareProfile) -> recommend.Inputs:
    r, b_ref = result.recommendation, m.run.config["batch_size"]
    return recommend.Inputs(step_time=StepTimeModel.from_profile(profile), b_crit=r.b_crit["value"],
                            b_crit_low=r.b_crit["low"], b_crit_high=r.b_crit["high"], b_ref=b_ref,
                            steps_ref=m.projection.examples / b_ref, lr_ref=m.lr, optimizer=task.optimizer)


def run_branches(task: Task, m: "Measurement", settings: list[Setting], rows: dict, examples: int,
                 warmup, seed: int) -> list[Figures]:
    """Train one branch per setting from the measuring run's end; ``rows``: batch -> candidate row."""
    run = m.live
    decay_loss, weight = run.smoothed
    start = decay_loss / weight if weight > 0 else math.nan
    out = []
    for s in settings:
        row = rows[s.batch]
        steps = examples // s.batch
        ramp = min(warmup(s.batch, s.lr), steps // 4)
        policy = BranchBatch(task, run.cfg, s.batch, row["micro_batch"], s.lr, m.lr, ramp, seed + BRANCH_SEED)
        br = run.branch(examples, policy)
        out.append(Figures(s.label, s.batch, s.lr, row["seconds"] / row["steps"], start, list(br.losses),
                           br.examples, br.seconds, br.eval_loss, br.diverged))
    return out


def branch_all(task: Task, m: "Measurement", settings: list[Setting], rows: dict, examples: int, warmup,
               seed: int) -> list[Figures]:
    """The settings, then the next lower rate wherever every rate checked at a batch was ruled out."""
    figs = run_branches(task, m, settings, rows, examples, warmup, seed)
    retries: dict = {}
    while True:
        more = next_checks(figs, retries)
        if not more:
            return figs
        for s in more:
            retries[s.batch] = retries.get(s.batch, 0) + 1
        figs += run_branches(task, m, more, rows, examples, warmup, seed)


# ---- the one call from find --------------------------------------------------------------------------------

def check(result: "FindResult", m: "Measurement", task: Task, profile: HardwareProfile, *, seed: int = 0,
          verify: bool = True) -> "FindResult":
    """Cap the recommendation's rates by the stability bound and, with ``verify``, check it by branches;
    the recommendation is updated in place to what was checked (and returned)."""
    rec = result.recommendation
    stability = measure_stability(task, m, seed)
    cap = stability["cap"]
    stability["capped"] = rec.lr > cap
    rec.evidence["stability"] = stability
    inp = _inputs(result, m, task, profile)
    rows = {c["batch_size"]: c for c in rec.candidates}

    def warmup(b: int, lr: float) -> int:
        return recommend.warmup_steps(lr, m.lr, rows[b]["steps"])

    predicted = {"batch": rec.batch_size, "lr": cap_rate(rec.lr, cap), "uncapped_lr": rec.lr}
    if not verify:
        rec.verification = {"enabled": False, "predicted": predicted}
        _apply(rec, rows, rec.batch_size, predicted["lr"], "", cap, warmup)
        return result

    def rule_rate(b: int) -> float:
        return recommend.learning_rate(b, inp, rows[b]["steps"]).lr

    settings, skipped = candidate_settings(rec.batch_size, predicted["lr"], rule_rate, sorted(rows), cap)
    largest = max(s.batch for s in settings)
    # a measuring run stopped by its step cap left the predicted run an extrapolation: no budget rests on
    # it, the branches run at their floor
    extrapolated = m.run.stopped_because == "step limit"
    examples = branch_examples(0.0 if extrapolated else rec.predicted["examples"], largest, m.run.examples,
                               len(settings))
    figs = branch_all(task, m, settings, rows, examples, warmup, seed)
    budget = {**budget_figures(rec.predicted["examples"], m.run.examples, examples, len(figs), largest),
              "extrapolated": extrapolated}
    verdict = decide(figs, rec.batch_size)
    if verdict is None:   # every rate ruled out: the measuring run's own setting trained without spiking
        batch, lr, label = m.run.config["batch_size"], m.lr, "the measuring run's setting"
        why = "every branch was ruled out: the measuring run's own batch and rate are recommended"
    else:
        batch, lr, label, why = verdict.winner.batch, verdict.winner.lr, verdict.winner.label, verdict.why
    rec.verification = {
        "enabled": True, "predicted": predicted, "examples_per_branch": examples, "budget": budget,
        "from_step": m.run.steps,
        "time": TIME_BASIS, "branches": [f.to_dict() for f in figs], "not_branched": skipped,
        "winner": {"label": label, "batch_size": batch, "lr": lr}, "verdict": why,
        "separated": bool(verdict and verdict.separated), "tied": verdict.tied if verdict else [],
        "common_seconds": verdict.common_seconds if verdict else None, "cost": cost(figs, m, rec.predicted)}
    if batch not in rows:  # the fallback batch is not a candidate: keep the prediction's layout figures
        rows[batch] = {**rows[rec.batch_size], "batch_size": batch, "micro_batch": recommend.largest_divisor(
            batch, rows[rec.batch_size]["micro_batch"]), "accumulation": 1}
        rows[batch]["accumulation"] = batch // rows[batch]["micro_batch"]
    _apply(rec, rows, batch, lr, "" if label == "predicted" else label, cap, warmup)
    return result


def cost(figs: list[Figures], m: "Measurement", predicted: dict) -> dict:
    """What the branches cost, in steps, examples and seconds, and as shares of the measuring run."""
    steps, examples = sum(f.steps for f in figs), sum(f.examples for f in figs)
    seconds, modelled = sum(f.seconds for f in figs), sum(f.modelled_seconds for f in figs)
    run = m.run
    return {"branches": len(figs), "steps": steps, "examples": examples, "seconds": seconds,
            "modelled_seconds": modelled, "share_of_measuring": {
                "steps": steps / max(run.steps, 1), "examples": examples / max(run.examples, 1),
                "seconds": seconds / run.seconds if run.seconds > 0 else None},
            "share_of_predicted_run_examples": examples / predicted["examples"] if predicted["examples"] else None}


def _apply(rec: recommend.Recommendation, rows: dict, batch: int, lr: float, label: str, cap: float,
           warmup) -> None:
    """The recommendation at (batch, lr): its layout, prediction, warm-up and schedule from the candidates."""
    capped = bool(rec.evidence["stability"]["capped"]) and not label
    row = rows[batch]
    rec.batch_size, rec.micro_batch, rec.accumulation = batch, row["micro_batch"], row["accumulation"]
    if label:
        rec.lr_rule = f"{rec.lr_rule}; {label} chosen by the branch check"
        rec.lr_why = f"{rec.lr_why}. The branch check chose {label}: {rec.verification.get('verdict', '')}"
    elif capped:
        rec.lr_rule = f"{rec.lr_rule}, capped by the stability bound"
        rec.lr_why = (f"{rec.lr_why}; capped at {cap:.4g}, {SAFETY:g} x the SGD stability bound "
                      f"({rec.evidence['stability']['how']})")
    rec.lr = lr
    rec.warmup_steps = warmup(batch, lr)
    fastest = rec.predicted.get("fastest_batch")
    rec.predicted = {"steps": row["steps"], "examples": row["examples"], "seconds": row["seconds"],
                     "relative_time": row["relative_time"], "fastest_batch": fastest}
    rec.schedule = final_schedule(rec.schedule, batch, row["micro_batch"], row["accumulation"], lr, cap)


def stability_words(rec: recommend.Recommendation) -> Optional[str]:
    """The stability bound in a few words, for the output's table."""
    s = rec.evidence.get("stability")
    if not s:
        return None
    if "lambda_max" not in s:
        return s["how"]
    formula = "2(1+mu)/((1+2mu) lambda)" if s["nesterov"] else "2(1+mu)/lambda"
    head = (f"lambda_max {s['lambda_max']:.3g} ({'converged' if s['converged'] else 'NOT converged'}, "
            f"{s['iterations']} products, {s['examples']} examples): bound {formula} = {s['bound']:.3g}, "
            f"cap {s['cap']:.3g}")
    uncapped = rec.verification.get("predicted", {}).get("uncapped_lr")
    return head + (f"; the rule's rate {uncapped:.4g} was capped" if s["capped"] else "; not capped")
