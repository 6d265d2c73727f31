"""Turn a hardware profile and noise-scale measurements into one recommendation.

Everything here is arithmetic on numbers that were measured elsewhere, so it is tested against
hand-computed cases. The inputs say where each number came from; the outputs keep them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, Optional, Sequence

from ..errors import POSITIVE_INT, POSITIVE_NUMBER, ConfigError, Rule, check_params, optional
from ..hardware.steptime import StepTimeModel
from ..serialize import fields_to_dict, from_dict
from . import model
from .comm import Cluster
from .devices import DataParallelStep

Objective = Literal["fastest", "balanced", "cheapest"]
OBJECTIVES = ("fastest", "balanced", "cheapest")
CHEAPEST_SLACK = 0.10   # "cheapest": within 10% of the minimum compute E_min

# What the limits on a batch must be: declared once, checked by Constraints and, before any work, by
# the entry points that build one later (find checks them before profiling the hardware).
LIMITS = {
    "n_train": POSITIVE_INT,
    "memory_ceiling": optional(POSITIVE_INT),
    "max_batch": optional(POSITIVE_INT),
    "devices": POSITIVE_INT,
    "grad_bytes": Rule("a finite number of bytes, 0 or more",
                       lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf),
    "gamma": POSITIVE_NUMBER,
}


@dataclass(frozen=True)
class Constraints:
    n_train: int                          # the data set: a batch cannot exceed it
    memory_ceiling: Optional[int] = None  # largest micro-batch that fits one device (None: not limiting)
    max_batch: Optional[int] = None       # the user's cap on the global batch
    devices: int = 1                      # data-parallel workers; global batch = micro x accumulation x devices
    cluster: Optional[Cluster] = None     # how the devices synchronise gradients (None: no communication)
    grad_bytes: float = 0.0               # bytes all-reduced per step
    gamma: float = 1.0                    # overlap of the all-reduce with the backward pass (Pollux; 1: none)

    def __post_init__(self):
        check_params("Constraints", LIMITS, n_train=self.n_train, memory_ceiling=self.memory_ceiling,
                     max_batch=self.max_batch, devices=self.devices, grad_bytes=self.grad_bytes, gamma=self.gamma)


@dataclass(frozen=True)
class Inputs:
    step_time: StepTimeModel  # one device's seconds per pass (hardware profile)
    b_crit: float             # the predicted critical batch for a fixed batch over the whole run
    b_crit_low: float
    b_crit_high: float
    b_ref: int                # batch of the measuring run
    steps_ref: float          # projected steps to target at b_ref
    lr_ref: float             # known-good learning rate at b_ref
    optimizer: str            # sgd | adam | adamw


@dataclass(frozen=True)
class Layout:
    batch_size: int           # global batch actually used (micro x accumulation x devices)
    micro_batch: int          # examples per forward/backward pass on one device
    accumulation: int         # passes per optimizer step on each device
    devices: int


@dataclass(frozen=True)
class Candidate:
    batch_size: int
    micro_batch: int
    accumulation: int
    steps: float
    examples: float
    seconds: float
    relative_time: float      # seconds / the fastest candidate's
    relative_compute: float   # examples / E_min


@dataclass(frozen=True)
class LearningRate:
    lr: float
    rule: str
    why: str
    warmup_steps: int


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` not above ``at_most`` (at least 1): the one micro-batch rule.

    Splitting a batch into equal micro-batches keeps the batch exactly ``n`` (accumulation never
    silently changes it); the measuring run, the study's noise run and :func:`layout` all use it.
    """
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def layout(b: int, c: Constraints) -> Layout:
    """Split a global batch into devices x accumulation x micro-batch within the memory ceiling."""
    per_device = max(1, b // c.devices)
    micro = per_device if c.memory_ceiling is None else largest_divisor(per_device, c.memory_ceiling)
    return Layout(per_device * c.devices, micro, per_device // micro, c.devices)


def batch_limit(c: Constraints) -> int:
    """The largest global batch allowed: the data set and the user's cap (memory only forces accumulation)."""
    limit = c.n_train
    if c.max_batch is not None:
        limit = min(limit, c.max_batch)
    return limit


def candidate_batches(c: Constraints, smallest: int = 1) -> list[int]:
    """Powers of two from ``smallest`` up to the limit, multiples of the device count."""
    limit = batch_limit(c)
    out, b = [], 1
    while b <= limit:
        if b >= smallest and b % c.devices == 0:
            out.append(b)
        b *= 2
    if not out:
        raise ConfigError(f"no batch size fits: the limit is {limit} examples and a batch must be a multiple of "
                          f"the {c.devices} devices; lower 'devices' or raise 'max_batch'")
    return out


def evaluate_candidates(inp: Inputs, c: Constraints, batches: Sequence[int]) -> list[Candidate]:
    s_min = model.s_min_from_reference(inp.steps_ref, inp.b_ref, inp.b_crit)
    e_min = s_min * inp.b_crit
    # the one N-device step time (compute, all-reduce, overlap), shared with `plan`
    step = DataParallelStep(inp.step_time, c.memory_ceiling, c.cluster, c.grad_bytes, c.gamma)
    rows = []
    for b in batches:
        lay = layout(b, c)
        bs, bc = lay.batch_size, inp.b_crit
        rows.append((lay, model.steps_to_target(bs, s_min, bc), model.examples_to_target(bs, s_min, bc),
                     model.time_to_target(bs, s_min, bc, step(bs, c.devices).seconds)))
    fastest = min(secs for *_, secs in rows)
    return [Candidate(lay.batch_size, lay.micro_batch, lay.accumulation, steps, examples, secs, secs / fastest,
                      examples / e_min)
            for lay, steps, examples, secs in rows]


def choose(cands: Sequence[Candidate], objective: str, b_crit: float) -> Candidate:
    """Pick a candidate by objective.

    fastest:  least predicted wall-clock time to the target.
    balanced: the batch nearest B_crit (in log scale): twice the minimum steps and twice the minimum
              examples (McCandlish et al. 2018, section 2.2).
    cheapest: the fastest batch whose compute stays within 10% of the minimum E_min; on one machine
              time and cost coincide, so "cheap" means the fewest examples processed (FLOPs).
    """
    if objective == "fastest":
        return min(cands, key=lambda x: x.seconds)
    if objective == "balanced":
        return min(cands, key=lambda x: (abs(math.log(x.batch_size / b_crit)), x.seconds))
    if objective == "cheapest":
        frugal = [x for x in cands if x.relative_compute <= 1.0 + CHEAPEST_SLACK]
        return min(frugal, key=lambda x: x.seconds) if frugal else min(cands, key=lambda x: x.examples)
    raise ConfigError(f"The 'objective' parameter must be one of {', '.join(OBJECTIVES)}. Got {objective!r} instead.")


def learning_rate(b: int, inp: Inputs, predicted_steps: float) -> LearningRate:
    """Scale the reference learning rate to batch ``b`` by the rule that fits the optimizer."""
    if inp.optimizer == "sgd":
        lr = model.sgd_lr(b, inp.b_ref, inp.lr_ref, inp.b_crit)
        rule = "sgd: eps_max / (1 + B_crit / B)"
        why = (f"SGD's best step size grows linearly with B while B << B_crit and saturates beyond it "
               f"(McCandlish et al. 2018); anchored at lr {inp.lr_ref:g} for batch {inp.b_ref}, "
               f"B_crit {inp.b_crit:.0f}")
    else:
        lr = model.adam_lr(b, inp.b_ref, inp.lr_ref)
        rule = "adam: square root"
        why = (f"{inp.optimizer} normalises by the gradient's second moment; its learning rate scales with "
               f"sqrt(B) (Malladi et al. 2022); anchored at lr {inp.lr_ref:g} for batch {inp.b_ref}")
    return LearningRate(lr, rule, why, warmup_steps(lr, inp.lr_ref, predicted_steps))


def warmup_steps(lr: float, lr_ref: float, predicted_steps: float) -> int:
    """Linear warm-up over 5% of the predicted steps when the rate rises above the reference (Goyal et
    al. 2017 warmed up over 5 of 90 epochs), none otherwise."""
    return math.ceil(0.05 * predicted_steps) if lr > lr_ref * 1.05 else 0


@dataclass
class Recommendation:
    objective: str
    batch_size: int
    micro_batch: int
    accumulation: int
    devices: int
    lr: float
    lr_rule: str
    lr_why: str
    warmup_steps: int
    b_crit: dict                               # the predicted critical batch: value, low, high, level, b_simple, ...
    b_simple_at_target: dict                   # the growth law's B_simple at the target loss: value, low, high, loss
    predicted: dict                            # steps, examples, seconds, relative_time
    schedule: list = field(default_factory=list)
    candidates: list = field(default_factory=list)
    robustness: dict = field(default_factory=dict)
    constraints: list = field(default_factory=list)
    caveats: list = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    verification: dict = field(default_factory=dict)   # the branch check (plan.verify): branches, verdict, cost

    def to_dict(self) -> dict:
        return fields_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recommendation":
        """Also reads results written before the renames in :data:`RENAMED` (same meaning, old key)."""
        old = {k: v for k, v in RENAMED.items() if k in d and v not in d}
        return from_dict(cls, {old.get(k, k): v for k, v in d.items()})


# Keys of older `find` results and what they are called now.
RENAMED = {"b_noise": "b_crit", "b_crit_at_target": "b_simple_at_target"}


def recommend(inp: Inputs, c: Constraints,
              objective: str = "fastest") -> tuple[Candidate, list[Candidate], LearningRate]:
    cands = evaluate_candidates(inp, c, candidate_batches(c))
    best = choose(cands, objective, inp.b_crit)
    return best, cands, learning_rate(best.batch_size, inp, best.steps)


def regret_if_wrong(inp: Inputs, c: Constraints, objective: str) -> dict:
    """How much slower the chosen batch is if B_crit is really at the low or high end of its interval."""
    out = {}
    chosen, _, _ = recommend(inp, c, objective)
    for end in ("low", "high"):
        bc = getattr(inp, f"b_crit_{end}")
        if not (bc > 0 and math.isfinite(bc)):
            continue
        alt = replace(inp, b_crit=bc)
        cands = evaluate_candidates(alt, c, candidate_batches(c))
        there = next(x for x in cands if x.batch_size == chosen.batch_size)
        out[end] = {"b_crit": bc, "best_batch": min(cands, key=lambda x: x.seconds).batch_size,
                    "time_vs_best": there.relative_time}
    return out


def growth_schedule(b_crit_at, losses: Sequence[float], inp: Inputs, c: Constraints,
                    objective: str) -> list[dict]:
    """Batch size (and learning rate) to use from each loss level on, as the critical batch grows.

    ``b_crit_at(loss)``: the critical batch at that loss. Where it equals ``inp.b_crit`` the stage is
    the recommendation itself (the same planner on the same inputs), which is how `find` ends its schedule.
    """
    stages = []
    for loss in losses:
        bc = b_crit_at(loss)
        stage_inp = replace(inp, b_crit=bc)
        best, _, lr = recommend(stage_inp, c, objective)
        if stages and stages[-1]["batch_size"] == best.batch_size:
            continue
        stages.append({"from_loss": loss, "b_crit": bc, "batch_size": best.batch_size,
                       "micro_batch": best.micro_batch, "accumulation": best.accumulation, "lr": lr.lr})
    return stages
