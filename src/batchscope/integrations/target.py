"""Stopping a framework's training at the task's target, and when that was: the framework-free part.

Time to target is what ``find`` optimises and what the README's comparisons count; under
Lightning or the Hugging Face Trainer it is measured by stopping the run at the first evaluation
that reaches the target and recording the step, the examples trained on and the seconds since
training began (evaluation included, and its own seconds beside it so they can be taken out).
The check runs where the framework evaluates, so the crossing is known to within one evaluation
interval: evaluate often enough for the resolution wanted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError

MODES = ("min", "max")


@dataclass(frozen=True)
class Evaluation:
    step: int               # optimizer steps so far
    examples: int           # training examples so far (all processes)
    seconds: float          # since training began, evaluations included
    eval_seconds: float     # of which evaluating
    value: float            # the watched metric


class TargetWatch:
    """The value to reach on ``metric`` ('min': at or below it, 'max': at or above), and when it was."""

    def __init__(self, value, metric: str, mode: str, where: str):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"The 'value' parameter of {where} must be a finite number (the target to reach). "
                              f"Got {value!r} instead.")
        if mode not in MODES:
            raise ConfigError(f"The 'mode' parameter of {where} must be 'min' (a loss: reached at or below the "
                              f"value) or 'max' (an accuracy: at or above). Got {mode!r} instead.")
        if not isinstance(metric, str) or not metric:
            raise ConfigError(f"The 'metric' parameter of {where} must be the name of a logged metric. "
                              f"Got {metric!r} instead.")
        self.value, self.metric, self.mode, self.where = float(value), metric, mode, where
        self.evaluations: list[Evaluation] = []
        self.reached: Optional[Evaluation] = None

    def read(self, metrics: dict, names=()) -> float:
        """The watched value from an evaluation's metrics (trying each of ``names`` in order)."""
        for name in (*names, self.metric):
            if name in metrics:
                return float(metrics[name])
        shown = ", ".join(sorted(map(str, metrics))[:12]) or "none"
        raise ConfigError(f"{self.where} watches {self.metric!r}, but the evaluation reported only: {shown}; pass "
                          "metric= one of those (or log it in the evaluation)")

    def check(self, value: float, step: int, examples: int, seconds: float, eval_seconds: float) -> bool:
        """Record one evaluation; True when it reaches the target (the first such is kept in ``reached``)."""
        e = Evaluation(int(step), int(examples), float(seconds), float(eval_seconds), float(value))
        self.evaluations.append(e)
        hit = math.isfinite(value) and (value <= self.value if self.mode == "min" else value >= self.value)
        if hit and self.reached is None:
            self.reached = e
        return hit

    def describe(self) -> str:
        op = "<=" if self.mode == "min" else ">="
        if self.reached is None:
            last = f"; last {self.evaluations[-1].value:.4g}" if self.evaluations else ""
            return (f"target {self.metric} {op} {self.value:g} not reached in {len(self.evaluations)} "
                    f"evaluations{last}")
        r = self.reached
        return (f"target {self.metric} {op} {self.value:g} reached at step {r.step} ({r.examples:,} examples, "
                f"{r.seconds:.1f} s, of which {r.eval_seconds:.1f} s evaluating): {self.metric} = {r.value:.4g}")
