"""The branch check's decisions and the stability cap: pure functions of numbers (no training here).

`find` checks its recommendation by short branches forked from the measuring run's end state
(:mod:`batchscope.plan.verify` trains them); this module says which settings to branch, how many
examples each gets, which branches are ruled out, which lower rate to check next, and which setting
wins. Every function takes plain figures, so each rule is tested on hand-made branches.

The rules (docs/design.md, "Checking the recommendation"):

- **Candidates.** The chosen (B, lr); B/2 and 2B at their rule's rate; B at lr/2 and 2 lr. Every rate
  is capped by the stability cap (:func:`cap_rate`); a candidate outside the allowed batches, or one
  that the cap makes a copy of another, is not branched (said in the result).
- **Budget.** Equal examples for every branch: :data:`BRANCH_SHARE` of the examples the recommended
  run is predicted to need, cut so that the measuring run and all the branches together stay within
  :data:`BUDGET` of them, but at least :data:`MIN_BRANCH_STEPS` steps of the largest batch branched,
  rounded up to whole steps of it (:func:`branch_examples`).
- **Ruled out.** A branch whose loss goes non-finite, or whose smoothed loss (the mean of the last
  ``w`` per-step losses, ``w`` a quarter of its steps, 2 to 20) rises above :data:`SPIKE` x its start
  (:func:`spike`). At a batch where every rate checked was ruled out, half the lowest one is checked
  next, :data:`MAX_RETRIES` times at most (:func:`next_checks`).
- **The comparison** is the loss reached at a common time: the modelled seconds of the quickest
  surviving branch (steps x the profile's step time at its batch). Each branch's loss there is the
  mean of its per-step training losses over the last quarter of the steps it had made by then, with a
  standard error from its per-step noise (:func:`loss_at`). The lowest loss wins when it beats the
  prediction by more than :data:`K_SE` standard errors of the difference; otherwise the two cannot be
  separated and the prediction stands (:func:`decide`). Only a larger batch (2B, a lower rate retried
  there) may replace the prediction; B/2 and another rate at the prediction's batch (lr/2, 2 lr) are
  fallbacks for a setting ruled out, and their lead is reported, not taken (:data:`NOT_TAKEN` says why).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from ..noise.hessian import STABILITY_FRACTION

BRANCH_SHARE = 0.008      # examples per branch, as a share of the recommended run's predicted examples
BUDGET = 0.10             # measuring run + all branches, as a share of the recommended run's predicted examples
MIN_BRANCH_STEPS = 8      # steps of the largest batch branched, at least
SPIKE = 1.5               # a smoothed loss above this multiple of its start rules the rate out
K_SE = 2.0                # standard errors of the difference that separate two branches
MAX_RETRIES = 2           # lower rates checked at one batch after every rate there was ruled out
SAFETY = STABILITY_FRACTION   # the stability cap: this share of the SGD stability bound (shared with adapt)
SMOOTH_MIN, SMOOTH_MAX = 2, 20   # steps of the trailing mean that smooths a branch's losses

# Why a smaller batch's or another rate's lead is not taken (docs/design.md, "Comparison"): over a short
# branch a smaller batch's extra steps and a lower rate gain at once (the short-horizon bias), and a
# higher rate's early gain from the fork does not show that it trains stably from scratch.
NOT_TAKEN = {
    "B/2": "a smaller batch makes more steps in the same time, a lead short branches favour (short-horizon bias)",
    "lr/2": "a lower rate reaches a lower loss sooner over a short branch (short-horizon bias)",
    "2 lr": "a higher rate's lead from the fork does not show that it trains stably from the start",
}


@dataclass(frozen=True)
class Setting:
    """One setting to branch: ``label`` says how it was derived from the prediction."""

    label: str                # 'predicted', 'B/2', '2B', 'lr/2', '2 lr', 'retry1 B=128' (half the lowest rate there)
    batch: int
    lr: float


@dataclass
class Figures:
    """What one branch did: the numbers the decisions read (and the table shows)."""

    label: str
    batch: int
    lr: float
    step_seconds: float               # modelled seconds per step at this batch (the profile's step time)
    start_loss: float                 # the parent's smoothed training loss at the fork
    losses: list                      # per-step training losses
    examples: int = 0
    seconds: float = 0.0              # seconds it really took here
    eval_loss: Optional[float] = None
    diverged: str = ""                # the loop's own divergence message ('' if none)
    status: str = ""                  # filled by decide(): winner, kept, tie, behind, ahead, not taken, ruled out: ...
    loss: Optional[float] = None      # filled by decide(): loss reached at the common time
    se: Optional[float] = None
    compared_steps: Optional[int] = None

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def modelled_seconds(self) -> float:
        return self.steps * self.step_seconds

    def end_loss(self) -> Optional[float]:
        """The smoothed training loss at the branch's end (None if it has no finite one)."""
        curve = smoothed(self.losses)
        return curve[-1] if curve and math.isfinite(curve[-1]) else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("losses")
        return {**d, "steps": self.steps, "modelled_seconds": self.modelled_seconds, "end_loss": self.end_loss(),
                "losses": list(self.losses)}


@dataclass
class Verdict:
    """What the branches decided."""

    winner: Figures
    default: Optional[Figures]        # the setting kept when the branches cannot separate (None: none viable)
    separated: bool                   # the winner beat the default by more than K_SE standard errors
    tied: list = field(default_factory=list)     # labels of the branches not separated from the winner
    common_seconds: float = math.nan
    why: str = ""


# ---- the stability cap ----------------------------------------------------------------------------

def stability_cap(bound: float, lr_ref: float, safety: float = SAFETY) -> float:
    """The highest rate find may recommend or try: ``safety`` x the bound, never below the reference rate.

    The reference rate trained the measuring run without spiking: a rate up to it is shown to work.
    A bound of inf (no bound: an adaptive optimizer, or a flat top) caps nothing.
    """
    if not math.isfinite(bound):
        return math.inf
    return max(safety * bound, lr_ref)


def cap_rate(lr: float, cap: float) -> float:
    return min(lr, cap)


# ---- which settings, how many examples --------------------------------------------------------------

def candidate_settings(batch: int, lr: float, rule_rate, allowed: Sequence[int], cap: float
                       ) -> tuple[list[Setting], list[str]]:
    """The settings to branch, capped, and what was not branched and why.

    ``rule_rate(b)``: the rate rule's rate at batch b; ``allowed``: the batches the constraints allow.
    """
    wanted = [("predicted", batch, lr), ("B/2", batch // 2, None), ("2B", batch * 2, None),
              ("lr/2", batch, lr / 2), ("2 lr", batch, lr * 2)]
    out, skipped, seen = [], [], set()
    for label, b, rate in wanted:
        if b not in allowed or b < 1 or (label == "B/2" and batch % 2):
            skipped.append(f"{label}: batch {b} is outside the allowed batches")
            continue
        r = cap_rate(rule_rate(b) if rate is None else rate, cap)
        if (b, round(r, 12)) in seen:
            skipped.append(f"{label}: the stability cap {cap:.4g} makes it the same setting as another branch")
            continue
        seen.add((b, round(r, 12)))
        out.append(Setting(label, b, r))
    return out, skipped


def branch_examples(predicted_examples: float, largest_batch: int, measured_examples: float = 0.0,
                    branches: int = 1, share: float = BRANCH_SHARE, budget: float = BUDGET,
                    min_steps: int = MIN_BRANCH_STEPS) -> int:
    """Examples for each of ``branches`` branches: ``share`` of the predicted run, cut to what keeps the
    measuring run's ``measured_examples`` plus the branches within ``budget`` of it, at least ``min_steps``
    steps of the largest batch, in whole steps of it (so every batch branched, a power-of-two divisor, makes
    whole steps). The floor wins over the budget: a branch of fewer steps cannot show a spike."""
    room = max(0.0, budget * predicted_examples - measured_examples) / max(branches, 1)
    want = max(min(share * predicted_examples, room), min_steps * largest_batch)
    return int(math.ceil(want / largest_batch)) * largest_batch


def budget_figures(predicted_examples: float, measured_examples: float, per_branch: int, branches: int,
                   largest_batch: int, budget: float = BUDGET) -> dict:
    """The budget as the output shows it: shares of the predicted run's examples."""
    p = predicted_examples or math.nan
    return {"budget": budget, "predicted_examples": predicted_examples, "measured_examples": measured_examples,
            "branches": branches, "examples_per_branch": per_branch,
            "measuring_share": measured_examples / p, "branches_share": per_branch * branches / p,
            "floor": per_branch <= MIN_BRANCH_STEPS * largest_batch,
            "within": (measured_examples + per_branch * branches) <= budget * p}


# ---- one branch's figures ---------------------------------------------------------------------------

def smooth_window(steps: int) -> int:
    return max(SMOOTH_MIN, min(SMOOTH_MAX, steps // 4))


def smoothed(losses: Sequence[float], window: Optional[int] = None) -> list[float]:
    """The trailing mean of the last ``window`` losses at every step from the window on (a shorter series:
    the mean of all)."""
    w = window or smooth_window(len(losses))
    if len(losses) < w:
        return [sum(losses) / len(losses)] if losses else []
    return [sum(losses[i - w + 1:i + 1]) / w for i in range(w - 1, len(losses))]


def spike(f: Figures, factor: float = SPIKE) -> str:
    """Why the branch's rate is ruled out ('' if it is not)."""
    if f.diverged:
        return f"diverged ({f.diverged.split(';')[0]})"
    bad = next((x for x in f.losses if not math.isfinite(x)), None)
    if bad is not None:
        return f"the loss became {bad}"
    if f.start_loss > 0 and math.isfinite(f.start_loss):
        peak = max(smoothed(f.losses), default=-math.inf)
        if peak > factor * f.start_loss:
            return f"the smoothed loss rose to {peak:.4g}, above {factor:g}x its start {f.start_loss:.4g}"
    return ""


def peak_ratio(losses: Sequence[float], start: float) -> float:
    """The spike rule's figure: the largest smoothed loss over ``start``.

    Smoothing: :func:`smoothed` (the trailing mean of the last :func:`smooth_window` per-step losses, a
    quarter of the steps, 2 to 20; a series shorter than that window: the mean of all). ``start``: the
    smoothed loss where the setting began (a branch: the parent's at the fork; a run from scratch: the
    training loss at initialisation). :func:`spike` rules a branch with finite losses out exactly when
    this exceeds :data:`SPIKE`. inf when a loss is non-finite; nan when there are no losses or ``start``
    is not a positive finite number (no scale to compare to, as in :func:`spike`).
    """
    if any(not math.isfinite(x) for x in losses):
        return math.inf
    if not losses or not (start > 0 and math.isfinite(start)):
        return math.nan
    return max(smoothed(losses)) / start


def peak_step(losses: Sequence[float]) -> int:
    """The step (1-based, counting ``losses``) at which the largest smoothed loss of :func:`peak_ratio`
    ends: the first non-finite loss if there is one; 0 for no losses."""
    bad = next((i for i, x in enumerate(losses) if not math.isfinite(x)), None)
    if bad is not None:
        return bad + 1
    curve = smoothed(losses)
    if not curve:
        return 0
    at = max(range(len(curve)), key=curve.__getitem__)
    return len(losses) - len(curve) + at + 1


def per_step_noise(losses: Sequence[float]) -> float:
    """The per-step loss noise: the spread of successive differences / sqrt 2 (a slow trend cancels)."""
    d = [b - a for a, b in zip(losses, losses[1:])]
    if len(d) < 2:
        return math.inf
    mean = sum(d) / len(d)
    return math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / 2)


def loss_at(f: Figures, seconds: float) -> tuple[float, float, int]:
    """The loss the branch had reached by ``seconds`` of modelled time, its standard error, and the steps
    made by then: the mean of the last quarter (at least 2) of those steps' losses."""
    n = max(2, min(f.steps, int(math.floor(seconds / f.step_seconds + 1e-9))))
    w = max(2, n // 4)
    window = f.losses[n - w:n]
    return sum(window) / w, per_step_noise(f.losses) / math.sqrt(w), n


# ---- decisions ----------------------------------------------------------------------------------------

def next_checks(figs: Sequence[Figures], retries: dict, max_retries: int = MAX_RETRIES) -> list[Setting]:
    """The next lower rate to check at each batch where every rate checked was ruled out.

    ``retries``: batch -> lower rates already checked there (updated by the caller).
    """
    out = []
    for b in sorted({f.batch for f in figs}):
        here = [f for f in figs if f.batch == b]
        if any(not spike(f) for f in here) or retries.get(b, 0) >= max_retries:
            continue
        lowest = min(f.lr for f in here)
        k = retries.get(b, 0) + 1
        out.append(Setting(f"retry{k} B={b}", b, lowest / 2))
    return out


def default_of(viable: Sequence[Figures], predicted_batch: int) -> Optional[Figures]:
    """The setting the branches must beat: the prediction when it survived, else the highest surviving
    rate at the predicted batch, else the surviving branch with the largest batch (then rate)."""
    if not viable:
        return None
    pred = next((f for f in viable if f.label == "predicted"), None)
    if pred:
        return pred
    same = [f for f in viable if f.batch == predicted_batch]
    if same:
        return max(same, key=lambda f: f.lr)
    return max(viable, key=lambda f: (f.batch, f.lr))


def not_taken(f: Figures, default_batch: int) -> str:
    """Why this branch's lead does not replace the default: its label's reason; a retry's, by its batch."""
    return NOT_TAKEN.get(f.label) or NOT_TAKEN["B/2" if f.batch < default_batch else "lr/2"]


def decide(figs: Sequence[Figures], predicted_batch: int, k: float = K_SE) -> Optional[Verdict]:
    """Rule out the spiking branches, compare the others at a common time, pick the winner.

    The rivals are the default and every branch at a larger batch. A smaller batch or another rate at the
    default's batch is a fallback, not a rival: over a short branch more steps and a lower rate lead whatever
    they do later (the short-horizon bias, Wu et al. 2018) and a higher rate leads while it is still stable,
    so their lead is reported and not taken (:data:`NOT_TAKEN`); they stand in when the prediction is ruled
    out. None when every branch was ruled out. Fills each figure's ``status``, ``loss``, ``se`` and
    ``compared_steps``.
    """
    for f in figs:
        why = spike(f)
        f.status = f"ruled out: {why}" if why else ""
    viable = [f for f in figs if not f.status]
    if not viable:
        return None
    common = min(f.modelled_seconds for f in viable)
    for f in viable:
        f.loss, f.se, f.compared_steps = loss_at(f, common)
    default = default_of(viable, predicted_batch)
    rivals = [f for f in viable if f is default or f.batch > default.batch]
    best = min(rivals, key=lambda f: f.loss)

    def apart(a: Figures, b: Figures) -> bool:
        """a's loss lies more than k standard errors of the difference below b's."""
        return b.loss - a.loss > k * math.hypot(a.se, b.se)

    separated = best is not default and apart(best, default)
    winner = best if separated else default
    tied = [f.label for f in viable if f is not winner and not apart(winner, f) and not apart(f, winner)]
    ahead = [f for f in viable if f not in rivals and apart(f, winner)]
    for f in viable:
        f.status = (("winner" if separated or not tied else "kept") if f is winner else "tie" if f.label in tied
                    else "ahead, not taken" if f in ahead else "behind")
    name = f"{winner.label} (B={winner.batch}, lr {winner.lr:.4g})"
    if separated:
        why = (f"{name} reached loss {winner.loss:.4g} against {default.loss:.4g} for {default.label} at the same "
               f"modelled time, more than {k:g} standard errors apart: the measured winner is recommended")
    elif tied:
        why = (f"{name} kept: the branches cannot separate it from {', '.join(tied)} (loss within {k:g} standard "
               f"errors at the same modelled time)")
    else:
        why = f"{name} confirmed: its loss is more than {k:g} standard errors below every rival's"
    for f in ahead:
        why += f"; {f.label} reached a lower loss, not taken: {not_taken(f, default.batch)}"
    return Verdict(winner, default, separated, tied, common, why)


def final_schedule(schedule: Sequence[dict], batch: int, micro_batch: int, accumulation: int, lr: float,
                   cap: float) -> list[dict]:
    """The growth schedule capped by the stability cap and ending at the checked recommendation.

    Stages at or above the new batch give way to it (the schedule only grows); the last stage is the
    recommendation itself, from the loss where the old last stage began.
    """
    stages = [{**s, "lr": cap_rate(s["lr"], cap)} for s in schedule]
    if not stages:
        return stages
    last = stages[-1]
    keep = [s for s in stages[:-1] if s["batch_size"] < batch]
    return keep + [{**last, "batch_size": batch, "micro_batch": micro_batch, "accumulation": accumulation,
                    "lr": lr}]
