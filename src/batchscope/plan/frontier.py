"""How many devices, at which global batch: time to target and device-hours over a grid, and its frontier.

For every device count N and global batch B (a multiple of N):

    steps(B)      = S_min (1 + B_crit / B)                  (McCandlish et al. 2018)
    time(N, B)    = steps(B) * T_step(B, N)                  (model.time_to_target, devices.DataParallelStep)
    device-hours  = N * time / 3600

For a fixed N, cost is proportional to time, so each N keeps its fastest batch. Across N:
fastest (least time), cheapest (fewest device-hours) and the knee, the smallest N from which a
doubling of the devices shortens the run by no more than ``knee_fraction``. With no communication
and the memory ceiling m per device, the best batch is B = N m and doubling N saves
(B_crit / 2B) / (1 + B_crit / B) of the time: exactly 1/4 at B = B_crit, so with the default
fraction 1/4 the knee is the device count at which the global batch reaches the critical batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from ..errors import ConfigError
from . import model
from .devices import DataParallelStep

KNEE_FRACTION = 0.25


@dataclass(frozen=True)
class PlanRow:
    devices: int
    batch_size: int
    micro_batch: int
    accumulation: int
    step_seconds: float
    compute_seconds: float     # per step, without synchronisation
    sync_seconds: float        # per step, the all-reduce alone
    steps: float
    seconds: float             # to the target
    device_hours: float
    cost: Optional[float]      # device_hours * price, when a price was given


@dataclass
class Plan:
    rows: list                 # every (N, B) evaluated
    best: list                 # the fastest batch for each N, in increasing N
    fastest: PlanRow
    cheapest: PlanRow
    knee: Optional[PlanRow]    # None: every doubling planned saved more than the fraction
    knee_fraction: float
    pareto: list               # device counts on the time / device-hours frontier
    b_noise: float
    s_min: float
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def default_batches(n: int, limit: int) -> list[int]:
    """Powers of two times ``n``, from ``n`` up to ``limit``."""
    out, b = [], n
    while b <= limit:
        out.append(b)
        b *= 2
    return out


def evaluate(n: int, b: int, s_min: float, b_noise: float, step: DataParallelStep,
             price: Optional[float]) -> PlanRow:
    st = step(b, n)
    steps = model.steps_to_target(b, s_min, b_noise)
    seconds = model.time_to_target(b, s_min, b_noise, st.seconds)
    hours = n * seconds / 3600.0
    return PlanRow(n, b, st.split.micro_batch, st.split.accumulation, st.seconds, st.compute, st.sync, steps,
                   seconds, hours, None if price is None else hours * price)


def knee(best: Sequence[PlanRow], fraction: float) -> Optional[PlanRow]:
    """The smallest N from which doubling N saves at most ``fraction`` of the time.

    Between listed counts that are not doublings the saving is taken per doubling:
    1 - (T_next / T) ** (1 / log2(N_next / N)).
    """
    for a, b in zip(best, best[1:]):
        per_doubling = 1.0 - (b.seconds / a.seconds) ** (1.0 / math.log2(b.devices / a.devices))
        if per_doubling <= fraction:
            return a
    return None


def pareto(best: Sequence[PlanRow]) -> list[int]:
    """Device counts no other count beats on both time and device-hours."""
    return [r.devices for r in best
            if not any(o.seconds <= r.seconds and o.device_hours <= r.device_hours
                       and (o.seconds, o.device_hours) != (r.seconds, r.device_hours) for o in best)]


def make_plan(devices: Sequence[int], s_min: float, b_noise: float, step: DataParallelStep, *,
              limit: int, batches: Optional[Sequence[int]] = None, price: Optional[float] = None,
              knee_fraction: float = KNEE_FRACTION) -> Plan:
    """Evaluate every device count x global batch; ``limit`` caps the batch (data set, --max-batch)."""
    if not devices:
        raise ConfigError("no device counts to plan for; pass --devices, e.g. 1,2,4,8")
    if not 0 < knee_fraction < 1:
        raise ConfigError(f"The 'knee' parameter must be a fraction in (0, 1). Got {knee_fraction!r} instead.")
    if price is not None and not (math.isfinite(price) and price > 0):
        raise ConfigError(f"the price per device-hour must be a positive number. Got {price!r} instead.")
    rows, best, notes = [], [], []
    for n in sorted(set(devices)):
        grid = sorted(set(batches)) if batches else default_batches(n, limit)
        if not grid:
            notes.append(f"{n} devices: no global batch up to {limit} gives each device an example; left out")
            continue
        here = [evaluate(n, b, s_min, b_noise, step, price) for b in grid]
        rows += here
        best.append(min(here, key=lambda r: r.seconds))
    if not best:
        raise ConfigError(f"no device count leaves each device at least one example of a batch up to {limit}; "
                          "plan for fewer devices or raise --max-batch")
    return Plan(rows=rows, best=best, fastest=min(best, key=lambda r: r.seconds),
                cheapest=min(best, key=lambda r: (r.device_hours, r.seconds)),
                knee=knee(best, knee_fraction), knee_fraction=knee_fraction, pareto=pareto(best),
                b_noise=b_noise, s_min=s_min, notes=notes)
