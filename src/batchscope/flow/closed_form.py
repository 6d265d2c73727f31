r"""Closed forms for lines where they exist, and their agreement with the simulation.

Notation: stations i = 1..n with set-up s_i and unit time p_i (one resource each), order of N
units, process batch Q, transfer batch T, P = sum_i p_i, S_u = s_1 + ... + s_u.

**One process batch, T divides Q = N** (covers one-piece flow T = 1 and T = Q). Cut the batch into
k = Q / T transfer batches; transfer batch j takes a(j, i) = T p_i at station i, plus s_i when
j = 1 (the set-up waits for the first transfer batch). Station i works them in order, so the time
C(j, i) when transfer batch j leaves station i satisfies the flow-shop recursion

    C(j, i) = max(C(j-1, i), C(j, i-1)) + a(j, i),      C(0, i) = C(j, 0) = 0,

and C(j, n) is the length of the longest monotone path from cell (1, 1) to (j, n) in the grid
of a(j, i) (Johnson 1954; Conway, Maxwell & Miller 1967). A path runs along transfer batch 1 up to
station u_1, then steps down to the next transfer batch at stations u_1 <= u_2 <= ... <= u_{j-1}.
Its length is S_{u_1} + T (P + p_{u_1} + ... + p_{u_{j-1}}); the best u_2..u_{j-1} sit at the
slowest station at or after u_1, hence

    C(1, n) = S_n + T P
    C(j, n) = T P + max_u [ S_u + T p_u + (j - 2) T max_{i >= u} p_i ]      (j >= 2).

The order's lead time is C(k, n), its first unit's C(1, n). Without set-ups this is the familiar
T P + (k - 1) T max_i p_i; with T = Q (k = 1) it is sum_i (s_i + Q p_i).

**Transfer batch = process batch, Q divides N.** Each of the b = N / Q process batches is one job
of length a_i = s_i + Q p_i at station i, the same for every job, so the longest path through the
b x n grid steps down b - 1 times at the longest a_i: batch m leaves the line at
sum_i a_i + (m - 1) max_i a_i.

**One station.** The station never waits for material: process batch m (sizes Q_1, Q_2, ...)
ends at m s + (Q_1 + ... + Q_m) p, and each transfer batch leaves when its last unit is done.

From the exit times C of the transfer batches (sizes t_j) follow the other figures: mean unit
lead time W = sum_j t_j C_j / N, throughput N / L, value-added fraction P / L, waiting per unit
W - P, average WIP N W / L (Little's law with every unit released at time 0) and the idle time
of station i, L - b s_i - N p_i.

With random unit times the same sums hold for the means of the lead times whenever they are
sums of unit times, not maxima: one station, or one process batch moved whole (T = Q = N). Then
the means of the linear figures (lead times, waiting, value-added time, idle) are exact, while
ratios (throughput, value-added fraction, WIP) are not means of anything linear and are left out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

from .line import Line

LINEAR = ("lead_time", "first_unit_lead_time", "last_unit_lead_time", "mean_unit_lead_time",
          "value_added_time", "waiting_time_per_unit")


@dataclass(frozen=True)
class ClosedForm:
    case: str                      # which formula applied
    exact: bool                    # deterministic times: the simulation must match to rounding
    figures: dict                  # figure -> value (for random times: the linear figures' means)
    idle: tuple                    # per station (one resource each): idle time over the lead time

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClosedForm":
        return cls(d["case"], d["exact"], dict(d["figures"]), tuple(d["idle"]))


def one_batch_exits(setups, unit_times, transfer_batch: int, k: int) -> list[float]:
    """C(j, n) for j = 1..k transfer batches of one process batch (formula in the module docstring)."""
    n = len(unit_times)
    T, P = transfer_batch, math.fsum(unit_times)
    S = [math.fsum(setups[:u + 1]) for u in range(n)]                  # S_u
    slowest_after = [max(unit_times[u:]) for u in range(n)]            # max_{i >= u} p_i
    exits = [S[-1] + T * P]
    for j in range(2, k + 1):
        exits.append(T * P + max(S[u] + T * unit_times[u] + (j - 2) * T * slowest_after[u] for u in range(n)))
    return exits


def whole_batch_exits(setups, unit_times, process_batch: int, batches: int) -> list[float]:
    """Exit time of each of ``batches`` equal process batches moved whole."""
    a = [s + process_batch * p for s, p in zip(setups, unit_times)]
    return [math.fsum(a) + m * max(a) for m in range(batches)]


def single_station_exits(line: Line) -> tuple[list[float], list[int]]:
    st = line.stations[0]
    t = line.transfer_batch_at(0)
    exits, sizes = [], []
    for m, (a, b) in enumerate(line.process_batches(), start=1):
        for c in range(a, b, t):
            end = min(c + t, b)
            exits.append(m * st.setup + end * st.mean_unit_time)
            sizes.append(end - c)
    return exits, sizes


def closed_form(line: Line) -> Optional[ClosedForm]:
    """The closed form for ``line`` if one of the cases above applies, else None."""
    if any(s.resources != 1 for s in line.stations):
        return None
    n_units, q = line.order_quantity, line.process_batch
    setups = [s.setup for s in line.stations]
    p = [s.mean_unit_time for s in line.stations]
    uniform_t = all(s.transfer_batch is None for s in line.stations)
    t = line.transfer_batch
    batches = len(line.process_batches())

    if len(line.stations) == 1:
        case = "one station"
        exits, sizes = single_station_exits(line)
    elif line.random and not (uniform_t and t == q == n_units):
        return None
    elif uniform_t and q == n_units and q % t == 0:
        case = "one-piece flow" if t == 1 else ("whole order moved at once" if t == q
                                                else "one process batch, transfer batch divides it")
        k = q // t
        exits, sizes = one_batch_exits(setups, p, t, k), [t] * k
    elif uniform_t and t == q and n_units % q == 0:
        case = "transfer batch = process batch, process batch divides the order"
        exits, sizes = whole_batch_exits(setups, p, q, batches), [q] * batches
    else:
        return None

    lead = max(exits)
    mean_w = math.fsum(c * s for c, s in zip(exits, sizes)) / n_units
    va = math.fsum(p)
    figs = {"lead_time": lead, "first_unit_lead_time": min(exits), "last_unit_lead_time": lead,
            "mean_unit_lead_time": mean_w, "value_added_time": va, "waiting_time_per_unit": mean_w - va}
    if not line.random:
        figs.update({"throughput": n_units / lead, "value_added_fraction": va / lead,
                     "wip_average": n_units * mean_w / lead, "little_wip": n_units * mean_w / lead})
    idle = tuple(lead - batches * s - n_units * pi for s, pi in zip(setups, p))
    return ClosedForm(case, not line.random, figs, idle)


def agreement(closed: ClosedForm, sim) -> dict:
    """Figure by figure: the closed form, the simulation's mean and interval, and whether they agree
    (to rounding for deterministic lines, inside the interval for random ones)."""
    rows = {}
    for name, value in closed.figures.items():
        est = sim.figures[name]
        ok = math.isclose(est.mean, value, rel_tol=1e-9, abs_tol=1e-9) if closed.exact else est.covers(value)
        rows[name] = {"closed_form": value, "simulation": est.mean, "low": est.low, "high": est.high, "agrees": ok}
    for i, value in enumerate(closed.idle):
        est = sim.stations[i]["idle"][0]
        ok = (math.isclose(est["mean"], value, rel_tol=1e-9, abs_tol=1e-9) if closed.exact
              else est["low"] - 1e-9 <= value <= est["high"] + 1e-9)
        rows[f"idle[{sim.stations[i]['name']}]"] = {"closed_form": value, "simulation": est["mean"],
                                                    "low": est["low"], "high": est["high"], "agrees": ok}
    return {"case": closed.case, "exact": closed.exact, "figures": rows,
            "agrees": all(r["agrees"] for r in rows.values())}
