"""The learning rate that goes with a batch size that changes, and schedules that survive the change.

- SGD: the AdaScale gain r = (1 + B_crit/B0) / (1 + B_crit/B) (Johnson et al. 2020), which is
  eps_opt(B) / eps_opt(B0) in McCandlish et al. 2018 (eq. 2.6): about B/B0 while B << B_crit,
  saturating at 1 + B_crit/B0 beyond it. The rate is lr0 · r relative to a known-good (B0, lr0).
- Adam-type: the square root of the batch ratio, sqrt(B/B0) (Malladi et al. 2022; OLMo-core's batch
  warm-up; AdaptDL's AdamScale uses r^0.5).

Schedules (warm-up, decay) are written in *reference steps*, steps at B0, and advance by the
progress a step makes rather than by one: AdaScale's r for SGD (a step at gain r is worth r steps at
B0), B/B0 for Adam-type optimizers (examples seen / B0). A warm-up of 100 steps then means the same
amount of training whether the batch stayed at B0 or grew to 8·B0 half-way.
"""

from __future__ import annotations

import math
from typing import Optional

from ..errors import ConfigError, check_positive_float, check_positive_int
from ..plan import model
from ..train import SCHEDULES, lr_factor

ADAM_TYPE = ("adam", "adamw")


def adascale_gain(b: float, b0: float, b_crit: float) -> float:
    """r = (1 + B_crit/B0) / (1 + B_crit/B): the SGD step-size ratio between batch B and B0."""
    return model.sgd_lr(b, b0, 1.0, b_crit)


def sqrt_gain(b: float, b0: float) -> float:
    """sqrt(B/B0): the Adam-type rate ratio."""
    return model.adam_lr(b, b0, 1.0)


class ScaledLearningRate:
    """lr0 · gain(B) · schedule(progress), with progress counted in reference steps (steps at B0).

    optimizer: 'sgd' (AdaScale gain and progress) or an Adam type ('adam', 'adamw': square root
    gain, progress = examples / B0). Before any finite noise estimate the SGD gain is 1 at every
    batch (the controller does not move the batch before one); afterwards the last finite estimate
    is used, so a non-finite one never changes the rate.
    warmup, total: reference steps of linear warm-up and of the whole schedule (None: no decay).
    """

    def __init__(self, lr0: float, b0: int, optimizer: str = "sgd", *, warmup: float = 0.0,
                 total: Optional[float] = None, schedule: str = "constant"):
        self.lr0 = check_positive_float("lr0", lr0)
        self.b0 = check_positive_int("b0", b0)
        self.optimizer = optimizer.lower()
        if self.optimizer != "sgd" and self.optimizer not in ADAM_TYPE:
            raise ConfigError(f"The 'optimizer' parameter must be one of sgd, {', '.join(ADAM_TYPE)}. "
                              f"Got {optimizer!r} instead.")
        if schedule not in SCHEDULES:
            raise ConfigError(f"The 'schedule' parameter must be one of {', '.join(SCHEDULES)}. "
                              f"Got {schedule!r} instead.")
        if warmup < 0:
            raise ConfigError(f"The 'warmup' parameter must be >= 0. Got {warmup!r} instead.")
        self.warmup = float(warmup)
        self.total = None if total is None else float(total)
        self.schedule = schedule
        self.progress = 0.0          # reference steps made so far
        self.b_crit = math.nan      # the last finite estimate seen
        self.ceiling = math.inf     # the largest lr0 · gain allowed (before warm-up and decay)

    def observe(self, b_crit: float) -> None:
        """Take a new noise estimate; non-finite or non-positive ones are ignored."""
        if math.isfinite(b_crit) and b_crit > 0:
            self.b_crit = float(b_crit)

    def rule_gain(self, b: int) -> float:
        """The rule's gain at batch ``b`` (no ceiling)."""
        if self.optimizer in ADAM_TYPE:
            return sqrt_gain(b, self.b0)
        if b == self.b0 or not math.isfinite(self.b_crit):
            return 1.0
        return adascale_gain(b, self.b0, self.b_crit)

    def gain(self, b: int) -> float:
        """The gain used at batch ``b``: the rule's, capped at ``ceiling / lr0``."""
        return min(self.rule_gain(b), self.ceiling / self.lr0)

    def base(self, b: int) -> float:
        """lr0 · gain(b): the rate at batch ``b`` before warm-up and decay."""
        return self.lr0 * self.gain(b)

    def factor(self) -> float:
        """Warm-up and decay at the current progress (``train.lr_factor`` on reference steps)."""
        total = None if self.total is None else math.ceil(self.total)
        return lr_factor(self.progress, total, math.ceil(self.warmup), self.schedule) if self.warmup or total else 1.0

    def lr(self, b: int) -> float:
        """The rate for the next step at global batch ``b``."""
        return self.lr0 * self.gain(b) * self.factor()

    def advance(self, b: int) -> float:
        """Count one optimizer step at batch ``b``; returns the progress it made in reference steps."""
        made = self.gain(b) if self.optimizer == "sgd" else b / self.b0
        self.progress += made
        return made

    def state_dict(self) -> dict:
        return {"progress": self.progress, "b_crit": self.b_crit, "ceiling": self.ceiling}

    def load_state_dict(self, state: dict) -> None:
        self.progress = float(state["progress"])
        self.b_crit = float(state.get("b_crit", state.get("b_noise")))
        self.ceiling = float(state.get("ceiling", math.inf))
