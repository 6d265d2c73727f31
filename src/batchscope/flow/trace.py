"""What one run of a line did (per unit and per resource), and the figures read from it.

The discrete-event simulation records a :class:`Trace`; the figures come from the trace alone,
so a closed form checked against them checks the simulation end to end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Per-run scalar figures, in the order tables show them.
FIGURES = ("lead_time", "first_unit_lead_time", "last_unit_lead_time", "mean_unit_lead_time", "throughput",
           "value_added_time", "value_added_fraction", "waiting_time_per_unit", "wip_average", "little_wip")


@dataclass
class Trace:
    arrivals: np.ndarray        # (stations, units): when unit u reached station i (its transfer batch arrived)
    starts: np.ndarray          # (stations, units): when its processing at station i began
    departures: np.ndarray      # (stations, units): when it left station i (its transfer batch left)
    processing: np.ndarray      # (stations, units): its drawn processing time at station i
    busy: list[np.ndarray]      # per station, (resources,): set-up + processing time of each resource
    intervals: list[tuple] = field(default_factory=list)  # (station, resource, start, end, kind) for Gantt charts

    @property
    def units(self) -> int:
        return self.departures.shape[1]

    @property
    def exits(self) -> np.ndarray:
        return self.departures[-1]


def time_average(ups: np.ndarray, downs: np.ndarray, horizon: float) -> float:
    """Time average over [0, horizon] of a count that rises by one at each time in ``ups`` and falls
    by one at each time in ``downs``: the integral of the step function, walked event by event."""
    times = np.concatenate([ups, downs])
    steps = np.concatenate([np.ones(len(ups)), -np.ones(len(downs))])
    order = np.lexsort((-steps, times))          # at equal times count arrivals first
    times, steps = times[order], steps[order]
    level = np.cumsum(steps)[:-1]                # count held on [times[k], times[k+1])
    return float(np.dot(level, np.diff(times))) / horizon


def figures(trace: Trace) -> dict[str, float]:
    """The per-run figures. The order is released at time 0, so a unit's lead time is its exit time.

    Work in progress counts every unit of the order from release to exit (material waiting before
    the first station is inventory too). ``wip_average`` integrates that count over the trace's
    events; ``little_wip`` = throughput x mean unit lead time is Little's law L = lambda W
    (Little 1961) on the same run. Over a horizon that starts and ends empty the two are equal, so a
    gap means the trace's bookkeeping is wrong.
    """
    exits = trace.exits
    n = trace.units
    lead = float(exits.max())
    mean_w = float(exits.mean())
    va = float(trace.processing.sum(axis=0).mean())
    throughput = n / lead
    return {
        "lead_time": lead,
        "first_unit_lead_time": float(exits.min()),
        "last_unit_lead_time": lead,
        "mean_unit_lead_time": mean_w,
        "throughput": throughput,
        "value_added_time": va,
        "value_added_fraction": va / lead,
        "waiting_time_per_unit": mean_w - va,
        "wip_average": time_average(np.zeros(n), exits, lead),
        "little_wip": throughput * mean_w,
    }


def station_figures(trace: Trace) -> list[dict]:
    """Per station: busy and idle time of each resource over the order's lead time, utilisation,
    and the average number of units at the station (arrived, not yet left)."""
    lead = float(trace.exits.max())
    out = []
    for i, busy in enumerate(trace.busy):
        out.append({
            "busy": [float(b) for b in busy],
            "idle": [lead - float(b) for b in busy],
            "utilization": float(busy.sum()) / (lead * len(busy)),
            "wip_average": time_average(trace.arrivals[i], trace.departures[i], lead),
        })
    return out


def little_gap(figs: dict[str, float]) -> float:
    """Relative difference between the integrated WIP and lambda * W."""
    return abs(figs["wip_average"] - figs["little_wip"]) / max(figs["wip_average"], math.ulp(1.0))
