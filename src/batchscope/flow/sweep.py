"""Sweeps: the line's figures against the transfer batch, and capacity and lead time against the
process batch. Every point reuses the same seed, so random lines are compared on common random
numbers and the differences between points are not swamped by noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import ConfigError
from .line import Line, capacity
from .simulate import simulate
from .stats import Estimate


def lot_sizes(limit: int, max_points: int = 24) -> list[int]:
    """Sizes worth trying up to ``limit``: its divisors (no ragged last batch) and powers of two,
    thinned evenly to ``max_points`` keeping both ends."""
    sizes = sorted({d for d in range(1, limit + 1) if limit % d == 0} | {2 ** k for k in range(limit.bit_length())
                                                                          if 2 ** k <= limit})
    if len(sizes) > max_points:
        step = (len(sizes) - 1) / (max_points - 1)
        sizes = sorted({sizes[round(k * step)] for k in range(max_points)})
    return sizes


@dataclass(frozen=True)
class SweepResult:
    parameter: str                  # "transfer_batch" or "process_batch"
    values: tuple[int, ...]
    figures: tuple[dict, ...]       # per value: figure -> Estimate
    capacities: tuple[tuple[float, ...], ...] = ()    # process-batch sweep: per value, per station
    station_names: tuple[str, ...] = ()

    def series(self, name: str) -> list[float]:
        return [f[name].mean for f in self.figures]

    def to_dict(self) -> dict:
        d = {"parameter": self.parameter, "values": list(self.values), "station_names": list(self.station_names),
             "figures": [{k: v.to_dict() for k, v in f.items()} for f in self.figures]}
        if self.capacities:
            d["capacities"] = [list(c) for c in self.capacities]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SweepResult":
        return cls(d["parameter"], tuple(d["values"]),
                   tuple({k: Estimate.from_dict(v) for k, v in f.items()} for f in d["figures"]),
                   tuple(tuple(c) for c in d.get("capacities", ())), tuple(d.get("station_names", ())))


def _check_values(name: str, values: Sequence[int], limit: int, what: str) -> list[int]:
    values = sorted(set(values))
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= limit]
    if not values or bad:
        raise ConfigError(f"The '{name}' values must be integers from 1 to the {what} ({limit}). "
                          f"Got {bad or values!r} instead.")
    return values


def sweep_transfer(line: Line, values: Optional[Sequence[int]] = None, *, replications: int = 30,
                   seed: int = 0) -> SweepResult:
    """Lead times, WIP and value-added fraction for each transfer batch (process batch fixed)."""
    values = _check_values("transfer_batch", values or lot_sizes(line.process_batch), line.process_batch,
                           "process batch")
    figs = tuple(simulate(line.with_(transfer_batch=t), replications, seed).figures for t in values)
    return SweepResult("transfer_batch", tuple(values), figs, station_names=tuple(s.name for s in line.stations))


def sweep_process(line: Line, values: Optional[Sequence[int]] = None, *, replications: int = 30,
                  seed: int = 0) -> SweepResult:
    """Capacity of every station (closed form) and the simulated order for each process batch; the
    transfer batch stays as it is unless it would exceed the process batch."""
    values = _check_values("process_batch", values or lot_sizes(line.order_quantity), line.order_quantity,
                           "order quantity")
    figs, caps = [], []
    for q in values:
        figs.append(simulate(line.with_(process_batch=q), replications, seed).figures)
        caps.append(tuple(capacity(s.setup, s.mean_unit_time, q, s.resources) for s in line.stations))
    return SweepResult("process_batch", tuple(values), tuple(figs), tuple(caps),
                       tuple(s.name for s in line.stations))
