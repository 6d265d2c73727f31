"""The sweep: which runs a study consists of, each one a frozen :class:`RunSpec` with a stable key.

A study is the Cartesian product batch size x optimizer x learning-rate rule x learning-rate
multiplier x warm-up x seed, with everything else held fixed. Budgets are either the same number
of epochs for every batch size (same examples) or the same number of optimizer steps (same updates).

With ``adaptive``, each (optimizer, seed) also gets one run whose batch follows the gradient noise
scale (:mod:`batchscope.adapt`): it starts at the smallest batch with the optimizer's base rate,
scales the rate itself (AdaScale for SGD, square root for Adam-type), may grow up to the largest
batch of the grid, and has the same budget: the same epochs (examples), or the same optimizer steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

from ..errors import ConfigError, check_lr, check_positive_float, check_positive_int
from ..tasks import Task
from ..tasks import OPTIMIZERS

DEFAULT_BATCH_SIZES = (32, 64, 128, 256, 512, 1024)
# Exponent p of lr(B) = lr_ref * (B / B_ref)^p: none keeps the rate, linear follows Goyal et al.
# 2017 (SGD), square root follows Malladi et al. 2022 (Adam-type optimizers).
LR_RULES = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
BUDGETS = ("epochs", "steps")
DEFAULT_ADAM_LR = 1e-3


def _tuple(name: str, values, kind=float) -> tuple:
    try:
        out = tuple(kind(v) for v in values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"The '{name}' parameter must be a list of numbers. Got {values!r} instead.") from e
    if not out:
        raise ConfigError(f"The '{name}' parameter is empty, so the study grid has no runs; give at least one value")
    if len(set(out)) != len(out):
        raise ConfigError(f"The '{name}' parameter repeats a value: {list(values)!r}; list each value once")
    return out


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study, fully resolved (learning rate and warm-up steps are numbers)."""

    batch_size: int
    optimizer: str
    lr_rule: str
    lr_multiplier: float
    warmup_epochs: float
    seed: int
    lr: float
    warmup_steps: int
    steps: Optional[int] = None
    epochs: Optional[float] = None
    grad_norms: bool = False      # measure the gradient-norm distribution in this run
    adaptive: bool = False        # the batch follows the noise scale; batch_size and lr are where it starts

    @property
    def key(self) -> str:
        if self.adaptive:
            return f"adaptive-B{self.batch_size}-{self.optimizer}-s{self.seed}"
        return (f"B{self.batch_size}-{self.optimizer}-{self.lr_rule}-x{self.lr_multiplier:g}"
                f"-w{self.warmup_epochs:g}-s{self.seed}")

    @property
    def baseline(self) -> bool:
        """Fixed learning rate, no warm-up: the arm of the classic fixed-hyperparameter experiment."""
        return self.lr_rule == "none" and self.lr_multiplier == 1.0 and self.warmup_epochs == 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        return cls(**d)


@dataclass(frozen=True)
class StudyPlan:
    """What to sweep. ``lrs`` maps optimizer -> learning rate at the reference batch size."""

    task: str
    batch_sizes: tuple = DEFAULT_BATCH_SIZES
    budget: str = "epochs"
    epochs: float = 10.0
    steps: Optional[int] = None
    optimizers: tuple = ("sgd", "adam")
    lrs: dict = field(default_factory=dict)
    lr_rules: tuple = ("none", "linear", "sqrt")
    reference_batch: Optional[int] = None     # B_ref of the lr rules (default: the smallest batch size)
    lr_grid: tuple = (1.0,)                   # multipliers on the rule's learning rate
    warmup_epochs: tuple = (0.0,)             # gradual linear warm-up lengths, in epochs
    seeds: tuple = (0,)
    target: Optional[float] = None            # override of the task's target value (same kind and split)
    grad_norm_batches: int = 1000             # N fresh batches per gradient-norm checkpoint (0: none)
    grad_norm_early: float = 0.1              # the early checkpoint, as a fraction of the run
    noise_steps: int = 500                    # steps of the B_simple measurement (0: none)
    noise_batch: Optional[int] = None         # its batch size (default: the middle of batch_sizes)
    evals_per_run: int = 50
    train_eval_examples: int = 2048           # training examples evaluated at each point of the curve
    device: str = "cpu"
    adaptive: bool = False                    # add one adaptive-batch run per optimizer and seed
    # The hardware profile (HardwareProfile.to_dict()) every adaptive run decides with. It is measured
    # once by the driver (or read from --profile) and stored with the plan, so workers on other machines,
    # and a resumed study, choose batches from the same step-time curve instead of each measuring its own.
    profile: Optional[dict] = None

    def __post_init__(self):
        object.__setattr__(self, "batch_sizes", tuple(sorted(_tuple("batch_sizes", self.batch_sizes, int))))
        object.__setattr__(self, "optimizers", _tuple("optimizers", [o.lower() for o in self.optimizers], str))
        object.__setattr__(self, "lr_rules", _tuple("lr_rules", [r.lower() for r in self.lr_rules], str))
        object.__setattr__(self, "lr_grid", _tuple("lr_grid", self.lr_grid))
        object.__setattr__(self, "warmup_epochs", _tuple("warmup_epochs", self.warmup_epochs))
        object.__setattr__(self, "seeds", _tuple("seeds", self.seeds, int))
        object.__setattr__(self, "lrs", {str(k).lower(): float(v) for k, v in dict(self.lrs).items()})
        for b in self.batch_sizes:
            check_positive_int("batch_sizes", b, where="the study")
        for o in self.optimizers:
            if o not in OPTIMIZERS:
                raise ConfigError(f"The 'optimizers' parameter must hold names from {', '.join(OPTIMIZERS)}. "
                                  f"Got {o!r} instead.")
        for o, v in self.lrs.items():
            if o not in OPTIMIZERS:
                raise ConfigError(f"learning rate given for unknown optimizer {o!r}; use {', '.join(OPTIMIZERS)}")
            check_lr("lr", v, where=o)
        for r in self.lr_rules:
            if r not in LR_RULES:
                raise ConfigError(f"The 'lr_rules' parameter must hold names from {', '.join(LR_RULES)}. "
                                  f"Got {r!r} instead.")
        for m in self.lr_grid:
            check_positive_float("lr_grid", m)
        for w in self.warmup_epochs:
            if not (w >= 0 and math.isfinite(w)):
                raise ConfigError(f"The 'warmup_epochs' parameter must hold numbers >= 0. Got {w!r} instead.")
        if self.budget not in BUDGETS:
            raise ConfigError(f"The 'budget' parameter must be one of {', '.join(BUDGETS)}. "
                              f"Got {self.budget!r} instead.")
        if self.budget == "epochs":
            check_positive_float("epochs", self.epochs)
        else:
            check_positive_int("steps", self.steps)
        if self.reference_batch is not None:
            check_positive_int("reference_batch", self.reference_batch)
        if self.grad_norm_batches < 0:
            raise ConfigError(f"The 'grad_norm_batches' parameter must be >= 0. "
                              f"Got {self.grad_norm_batches!r} instead.")
        if not 0 < self.grad_norm_early < 1:
            raise ConfigError(f"The 'grad_norm_early' parameter must lie in (0, 1). "
                              f"Got {self.grad_norm_early!r} instead.")
        check_positive_int("evals_per_run", self.evals_per_run)
        if self.noise_steps < 0:
            raise ConfigError(f"The 'noise_steps' parameter must be >= 0. Got {self.noise_steps!r} instead.")
        if self.noise_batch is not None:
            check_positive_int("noise_batch", self.noise_batch)
        check_positive_int("train_eval_examples", self.train_eval_examples)

    @property
    def b_ref(self) -> int:
        return self.reference_batch or self.batch_sizes[0]

    def base_lr(self, optimizer: str, task: Task) -> float:
        """The learning rate at B_ref: given, else the task's own (for its optimizer), else a common default."""
        if optimizer in self.lrs:
            return self.lrs[optimizer]
        if optimizer == task.optimizer or (optimizer in ("adam", "adamw") and task.optimizer in ("adam", "adamw")):
            return task.lr
        return DEFAULT_ADAM_LR if optimizer in ("adam", "adamw") else 0.1

    def resolved(self, task: Task) -> "StudyPlan":
        """The plan with every optimizer's learning rate filled in, so a resumed study never re-guesses."""
        return replace(self, lrs={o: self.base_lr(o, task) for o in self.optimizers})

    def check(self, task: Task) -> None:
        """Errors that need the task: batch sizes beyond the data, an adaptive arm that cannot start."""
        if self.adaptive and self.batch_sizes[0] < 2:
            raise ConfigError(f"the adaptive runs start at the smallest batch size, {self.batch_sizes[0]}, and measure "
                              "the noise on two micro-batches of it; use batch sizes of 2 or more with --adaptive")
        too_big = [b for b in self.batch_sizes if b > task.n_train]
        if too_big:
            raise ConfigError(f"batch size(s) {', '.join(map(str, too_big))} larger than the training set of task "
                              f"{task.name!r} ({task.n_train:,} examples); use batch sizes up to {task.n_train:,}")

    def expand(self, task: Task) -> list[RunSpec]:
        """Every run, in a stable order (seed outermost, so a partial study already covers the grid)."""
        self.check(task)
        runs = []
        for seed in self.seeds:
            for opt in self.optimizers:
                for rule in self.lr_rules:
                    for mult in self.lr_grid:
                        for w in self.warmup_epochs:
                            for b in self.batch_sizes:
                                per_epoch = task.n_train // b
                                lr = self.base_lr(opt, task) * mult * (b / self.b_ref) ** LR_RULES[rule]
                                check_lr("lr", lr, where=f"the run at B={b} ({opt}, {rule} rule, x{mult:g})")
                                spec = RunSpec(
                                    batch_size=b, optimizer=opt, lr_rule=rule, lr_multiplier=mult,
                                    warmup_epochs=w, seed=seed, lr=lr,
                                    warmup_steps=int(round(w * per_epoch)),
                                    steps=self.steps if self.budget == "steps" else None,
                                    epochs=self.epochs if self.budget == "epochs" else None,
                                )
                                if self.grad_norm_batches and spec.baseline and seed == self.seeds[0]:
                                    spec = replace(spec, grad_norms=True)
                                runs.append(spec)
            if self.adaptive:
                runs += [self.adaptive_spec(opt, seed, task) for opt in self.optimizers]
        return runs

    def adaptive_spec(self, optimizer: str, seed: int, task: Task) -> RunSpec:
        """The adaptive run of ``optimizer``: smallest batch, base rate, no warm-up, the study's budget."""
        return RunSpec(batch_size=self.batch_sizes[0], optimizer=optimizer, lr_rule="adaptive", lr_multiplier=1.0,
                       warmup_epochs=0.0, seed=seed, lr=self.base_lr(optimizer, task), warmup_steps=0,
                       steps=self.steps if self.budget == "steps" else None,
                       epochs=self.epochs if self.budget == "epochs" else None, adaptive=True)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StudyPlan":
        return cls(**d)
