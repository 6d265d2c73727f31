"""`plan`: from a task's measurements (hardware profile + noise scale) to the device-count frontier.

The noise side comes from a `find` result (``find --out result.json``) or from running the find
pipeline now; the hardware side is the profile inside it. The time-to-target model is `find`'s:
S_min (1 + B_crit / B) steps, S_min from the measuring run's projected length.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..errors import BatchscopeError, ConfigError, check_params, check_positive_int
from ..hardware.steptime import StepTimeModel
from ..hardware.units import format_bytes
from ..tasks import Task
from . import model
from .recommend import LIMITS, RENAMED
from .comm import Cluster
from .devices import DataParallelStep, ceiling_on, gradient_bytes
from .frontier import KNEE_FRACTION, Plan, make_plan


@dataclass(frozen=True)
class Measured:
    """What the plan needs from measurements, with where it came from."""

    b_crit: float                    # the predicted critical batch of `find`
    s_min: float
    profile: object                  # HardwareProfile: one device's step time and memory
    source: str


@dataclass
class DevicePlan:
    plan: Plan
    cluster: str
    gamma: float
    grad_bytes: int
    micro_ceiling: Optional[int]
    measured: dict
    assumptions: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict(), "cluster": self.cluster, "gamma": self.gamma,
                "gradient_bytes": self.grad_bytes, "micro_batch_ceiling": self.micro_ceiling,
                "measured": self.measured, "assumptions": self.assumptions}


def measured_from_find(doc: dict, task: Task, source: str) -> Measured:
    """B_crit, S_min and the profile from a `find --out` document, checked to belong to ``task``."""
    from ..hardware import HardwareProfile

    old = {new: key for key, new in RENAMED.items()}
    try:
        b_crit = float(doc["b_crit" if "b_crit" in doc else old["b_crit"]]["value"])
        ev = doc["evidence"]
        b_ref, examples_ref = int(ev["ref_batch"]), float(ev["projected_examples_at_ref"])
        profile = HardwareProfile.from_dict(doc["profile"])
    except BatchscopeError as e:   # a find result whose profile is damaged: that message, naming the file
        raise ConfigError(f"{source}: {e}") from e
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{source} is not a `batchscope find --out` result ({type(e).__name__}: {e}); "
                          "write one with `batchscope find --task NAME --out result.json`") from e
    if profile.task != task.name or profile.parameters != task.parameter_count():   # a find result, for another task
        raise ConfigError(f"{source} is a find result for task {profile.task!r} ({profile.parameters:,} parameters), "
                          f"not for task {task.name!r} ({task.parameter_count():,} parameters); give the --task it was "
                          "written for, or write one for this task with `batchscope find --task TASK --out "
                          "result.json`")
    if not (b_crit > 0 and math.isfinite(b_crit) and examples_ref > 0):
        raise ConfigError(f"{source} holds no usable critical batch (B_crit {b_crit!r}); run find again")
    s_min = model.s_min_from_reference(examples_ref / b_ref, b_ref, b_crit)
    return Measured(b_crit, s_min, profile, source)


def measured_from_result(result, source: str = "measured now (find pipeline)") -> Measured:
    """The same from a :class:`~batchscope.plan.find.FindResult` just computed."""
    r = result.recommendation
    b_ref, examples_ref = r.evidence["ref_batch"], r.evidence["projected_examples_at_ref"]
    b_crit = r.b_crit["value"]
    return Measured(b_crit, model.s_min_from_reference(examples_ref / b_ref, b_ref, b_crit), result.profile, source)


def check_grid(task: Task, devices: Sequence[int] = (1,), batches: Optional[Sequence[int]] = None,
               max_batch: Optional[int] = None) -> int:
    """The largest global batch a plan for ``task`` may use; refuses, before anything is measured, a grid beyond it.

    The limit is the training set (a step cannot take more examples than there are) or ``max_batch``;
    a message names which of the two it is, since the fixes differ.
    """
    if max_batch is not None:
        check_positive_int("max_batch", max_batch)
    limit = task.n_train if max_batch is None else min(task.n_train, max_batch)
    by_data = limit == task.n_train
    why = (f"task {task.name!r} has {task.n_train:,} training examples" if by_data
           else f"--max-batch is {max_batch:,}")
    too_big = sorted(b for b in set(batches or ()) if b > limit)
    if too_big:
        raise ConfigError(f"global batch {', '.join(f'{b:,}' for b in too_big)} is larger than a step can take: {why}; "
                          f"give --batches up to {limit:,}" + ("" if by_data else " or raise --max-batch"))
    if devices and min(devices) > limit:
        raise ConfigError(f"{min(devices):,} devices need a global batch of at least {min(devices):,} (one example "
                          f"each), but {why}; " + (f"plan for at most {limit:,} devices" if by_data
                                                   else "raise --max-batch or plan for fewer devices"))
    return limit


def plan_devices(task: Task, measured: Measured, cluster: Cluster, *, devices: Sequence[int],
                 batches: Optional[Sequence[int]] = None, gamma: float = 1.0, price: Optional[float] = None,
                 knee_fraction: float = KNEE_FRACTION, device_memory: Optional[float] = None,
                 grad_dtype=None, max_batch: Optional[int] = None) -> DevicePlan:
    """The device-count x global-batch grid for ``task``, its frontier, and the assumptions behind it."""
    check_params("plan_devices", LIMITS, max_batch=max_batch)
    prof = measured.profile
    grad_bytes = gradient_bytes(task.make_model(), grad_dtype)
    if device_memory is not None:
        ceiling = ceiling_on(device_memory, prof.m0, prof.m1, prof.parameters, task.optimizer)
    else:
        ceiling = prof.max_batch   # the largest micro-batch a pass may take (what find uses too)
    limit = check_grid(task, devices, batches, max_batch)
    step = DataParallelStep(StepTimeModel.from_profile(prof), ceiling, cluster, grad_bytes, gamma)
    plan = make_plan(devices, measured.s_min, measured.b_crit, step, limit=limit, batches=batches, price=price,
                     knee_fraction=knee_fraction)
    assumptions = [
        f"compute: one device's step time from the profile ({prof.device.get('name', prof.device.get('type'))}), "
        "the same on every device",
        f"gradient synchronisation: ring all-reduce of {format_bytes(grad_bytes)} per step; {cluster.describe()}",
        f"overlap with the backward pass: gamma = {gamma:g} (1: none; large: full)",
        f"steps to target: S_min (1 + B_crit / B) with B_crit {measured.b_crit:.0f} and S_min {measured.s_min:.0f} "
        f"({measured.source})",
    ]
    if getattr(prof, "amp", False) and grad_dtype is None:
        assumptions.append("mixed precision keeps float32 parameters, so float32 gradients are all-reduced; "
                           "a DDP compression hook halves that (--grad-dtype bfloat16)")
    if ceiling is not None:
        assumptions.append(f"memory: at most {ceiling:,} examples per pass on one device; beyond, accumulation")
    return DevicePlan(plan, cluster.describe(), gamma, grad_bytes, ceiling,
                      {"b_crit": measured.b_crit, "s_min": measured.s_min, "source": measured.source,
                       "alpha": prof.alpha, "beta": prof.beta}, assumptions)


def read_find_result(path: "str | Path") -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"find result {str(p)!r} does not exist; write one with "
                          "`batchscope find --task NAME --out result.json`")
    try:
        doc = json.loads(p.read_text())
    except ValueError as e:
        raise ConfigError(f"find result {str(p)!r} is not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"find result {str(p)!r} is not a JSON object")
    return doc
