"""When a run evaluates, how long it lasts, its rate multiplier, where it crossed the target, and
when it counts as diverged: pure functions of counters, shared by every batch policy."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..tasks import Target, Task

SCHEDULES = ("constant", "cosine", "linear")
EVALS_PER_RUN = 25           # fixed-length runs: evaluations spread evenly over the run
TARGET_RESOLUTION = 1 / 25   # target-driven runs: the gap between evaluations, as a share of the steps so far
DIVERGE_SMOOTHING = 20       # steps: the window of the smoothed loss the trend rule watches


def lr_factor(step: float, total: Optional[int], warmup: int, schedule: str) -> float:
    """Multiplier on the base learning rate for optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup`` steps (Goyal et al. 2017), then constant, cosine or linear decay
    to zero at ``total`` steps. Without a known total (target-driven runs) decay is not possible and
    the rate stays constant after warm-up.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or not total or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def total_steps(task: Task, cfg, b: int, step: int = 0, examples: int = 0) -> int:
    """Optimizer steps at batch ``b`` that the run's budget (steps, epochs or the target's cap) allows.

    ``step``, ``examples``: a run continued at ``b`` from a state saved after that many steps and
    examples (at any batch): the budget counts the whole run, so ``steps`` are all its steps, ``epochs``
    all its examples, and the cap is counted from the continuation.
    """
    per_epoch = task.n_train // b
    limits = []
    if cfg.steps is not None:
        limits.append(cfg.steps)
    if cfg.epochs is not None:
        left = math.ceil(cfg.epochs * per_epoch - examples / b)
        limits.append(max(1, left) if step == 0 else step + max(0, left))
    if not limits:  # until_target alone: a generous safety cap of 200 epochs (at least 2,000 steps)
        limits.append(step + max(2000, 200 * per_epoch))
    return min(limits)


def evaluation_gap(step: int, total: int, cfg) -> int:
    """Steps (at the run's starting batch) from ``step`` to the next evaluation.

    ``eval_every`` when given. A run of known length evaluates ~25 times. A run that stops at its
    target has no meaningful length (its cap is only a safety net), so the gap grows with the run:
    every step for the first 25, then 1/25 of the steps so far. Steps to target, interpolated
    between evaluations, are then resolved to ~4% whatever cap was set; a run of S steps evaluates
    about 25 (1 + ln(S / 25)) times.
    """
    if cfg.eval_every is not None:
        return cfg.eval_every
    if cfg.until_target:
        return max(1, int(step * TARGET_RESOLUTION))
    return max(1, total // EVALS_PER_RUN)


def crossing_step(points: list[tuple[float, Optional[float]]], threshold: float,
                  higher_is_better: bool) -> Optional[float]:
    """First step at which a measured series reaches ``threshold``, interpolated linearly between evaluations.

    ``points`` are (step, value) in step order. Evaluations are sparse, so taking the evaluation's
    own step would round every steps-to-target up to the evaluation grid. This is the one
    definition of "steps to target" (``TrainResult.target_step`` and the study's runs use it).
    """
    prev = None
    for step, value in points:
        if value is None or not math.isfinite(value):
            prev = None
            continue
        ok = value >= threshold if higher_is_better else value <= threshold
        if ok:
            if prev is None or prev[1] == value:
                return float(step)
            s0, v0 = prev
            return float(s0 + (threshold - v0) / (value - v0) * (step - s0))
        prev = (step, value)
    return None


@dataclass(frozen=True)
class TargetCrossing:
    step: float                 # optimizer steps, interpolated between the evaluations either side
    examples: float             # examples seen by then, interpolated the same way (the batch may change)
    seconds: float              # training seconds, interpolated the same way
    interpolated: bool          # False when an evaluation sat exactly on the crossing (or at step 0)


def target_crossing(history: list, target: Target) -> Optional[TargetCrossing]:
    """Where ``history`` (HistoryPoints) first reached ``target`` (None if it never did)."""
    values = [(p.step, p.metric if target.kind == "metric" else p.eval_loss) for p in history]
    step = crossing_step(values, target.value, target.kind == "metric")
    if step is None:
        return None
    steps = [p.step for p in history]
    examples = float(np.interp(step, steps, [p.examples for p in history]))
    seconds = float(np.interp(step, steps, [p.seconds for p in history]))
    return TargetCrossing(step, examples, seconds, step not in steps)


def divergence(step_loss: float, smoothed: float, steps: int, initial: float, cfg) -> Optional[str]:
    """Why the run counts as diverged after this step, or None.

    Three rules: a non-finite loss; one step's loss above ``diverge_factor`` (1000x) the initial
    loss; or, after the first ``DIVERGE_SMOOTHING`` steps, the smoothed loss (an EMA over ~20 steps)
    above ``diverge_trend`` (10x) the initial loss. Normal training, however noisy, brings the
    loss *down* from its start: a 20-step average ten times above it means the run is climbing,
    not fluctuating (``--lr 5`` on dots takes the loss from 0.71 to 177). Both ratios are skipped
    when the initial loss is not positive (a loss that can be negative has no scale to compare to).
    """
    if not math.isfinite(step_loss):
        return f"became {step_loss}"
    if initial <= 0:
        return None
    if cfg.diverge_factor is not None and step_loss > cfg.diverge_factor * initial:
        return f"grew from {initial:.4g} to {step_loss:.4g}"
    if cfg.diverge_trend is not None and steps >= DIVERGE_SMOOTHING and smoothed > cfg.diverge_trend * initial:
        return f"grew from {initial:.4g} to {smoothed:.4g} (mean of the last ~{DIVERGE_SMOOTHING} steps)"
    return None
