"""Discrete-event simulation of a line with SimPy (https://simpy.readthedocs.io), the model of
:mod:`batchscope.flow.line` step by step, with independent replications and t-intervals.

Each (station, process batch) is one SimPy process: wait for the batch's first unit, take a free
resource (a ``simpy.Store`` of resource ids, served first come first served), set up, then process
the batch's units in order, waiting for each to arrive, and release a transfer batch to the next
station whenever it is full or the process batch is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .distributions import draw
from .line import Line
from .stats import Estimate
from .trace import FIGURES, Trace, figures, little_gap, station_figures


def _simpy():
    try:
        import simpy
    except ImportError:
        raise ConfigError("The flow simulation needs SimPy. Install it with `pip install 'batchscope[flow]'` "
                          "(or `pip install simpy`).") from None
    return simpy


def draw_times(line: Line, rng: np.random.Generator) -> np.ndarray:
    """(stations, units) processing times, drawn station by station before the run, so the same seed
    gives the same times whatever the batch sizes (common random numbers across a sweep)."""
    n = line.order_quantity
    return np.stack([draw(s.distribution, s.unit_time, s.cv, n, rng) for s in line.stations])


def run_once(line: Line, times: np.ndarray, *, record_intervals: bool = False) -> Trace:
    """Simulate the order once with the given (stations, units) processing times."""
    simpy = _simpy()
    env = simpy.Environment()
    k, n = len(line.stations), line.order_quantity
    arrivals, starts, departures = np.full((k, n), np.nan), np.full((k, n), np.nan), np.full((k, n), np.nan)
    busy = [np.zeros(s.resources) for s in line.stations]
    intervals: list[tuple] = []
    batches = line.process_batches()

    # arrived[i][u]: event that fires when unit u reaches station i; shared by a transfer batch.
    released = env.event()
    released.succeed()
    arrived = [[released] * n] + [[None] * n for _ in range(k - 1)]
    arrivals[0] = 0.0
    for i in range(k - 1):
        t = line.transfer_batch_at(i)
        for a, b in batches:
            for c in range(a, b, t):
                ev = env.event()
                for u in range(c, min(c + t, b)):
                    arrived[i + 1][u] = ev

    free = []
    for s in line.stations:
        store = simpy.Store(env)
        store.items.extend(range(s.resources))
        free.append(store)

    def batch(i: int, a: int, b: int):
        st = line.stations[i]
        t = line.transfer_batch_at(i)
        yield arrived[i][a]
        r = yield free[i].get()
        if st.setup > 0:
            t0 = env.now
            yield env.timeout(st.setup)
            busy[i][r] += st.setup
            if record_intervals:
                intervals.append((i, r, t0, env.now, "setup"))
        for u in range(a, b):
            yield arrived[i][u]
            starts[i, u] = env.now
            yield env.timeout(times[i, u])
            busy[i][r] += times[i, u]
            if record_intervals:
                intervals.append((i, r, starts[i, u], env.now, "process"))
            if (u - a + 1) % t == 0 or u == b - 1:       # transfer batch full, or process batch done
                first = u - (u - a) % t
                departures[i, first:u + 1] = env.now
                if i + 1 < k:
                    arrivals[i + 1, first:u + 1] = env.now
                    arrived[i + 1][u].succeed()
        free[i].put(r)

    for i in range(k):
        for a, b in batches:
            env.process(batch(i, a, b))
    env.run()
    return Trace(arrivals, starts, departures, np.asarray(times, dtype=float), busy, intervals)


@dataclass
class SimulationResult:
    """Figures over ``replications`` independent runs: a mean and t-interval for each."""

    line: Line
    replications: int
    seed: int
    figures: dict[str, Estimate]
    stations: list[dict]                    # capacity, bottleneck flag, idle/busy/utilisation estimates
    little_max_gap: float                   # largest relative gap between integrated WIP and lambda*W
    traces: list[Trace] = field(default_factory=list, repr=False)   # kept when asked (plots)

    def __getitem__(self, name: str) -> Estimate:
        return self.figures[name]

    def to_dict(self) -> dict:
        return {"line": self.line.to_dict(), "replications": self.replications, "seed": self.seed,
                "figures": {k: v.to_dict() for k, v in self.figures.items()},
                "stations": self.stations, "little_max_gap": self.little_max_gap}

    @classmethod
    def from_dict(cls, d: dict) -> "SimulationResult":
        return cls(Line.from_dict(d["line"]), d["replications"], d["seed"],
                   {k: Estimate.from_dict(v) for k, v in d["figures"].items()}, d["stations"], d["little_max_gap"])


def simulate(line: Line, replications: int = 30, seed: int = 0, *, level: float = 0.95,
             keep_traces: int = 0, record_intervals: bool = False) -> SimulationResult:
    """Run the order ``replications`` times (once when every time is deterministic) with independent
    random streams spawned from ``seed``, and summarise each figure by its mean and t-interval."""
    if isinstance(replications, bool) or not isinstance(replications, int) or replications < 1:
        raise ConfigError(f"The 'replications' parameter must be a positive integer. Got {replications!r} instead.")
    if not line.random:
        replications = 1
    per_run: dict[str, list[float]] = {f: [] for f in FIGURES}
    per_station: list[list[dict]] = []
    gaps, traces = [], []
    for child in np.random.SeedSequence(seed).spawn(replications):
        trace = run_once(line, draw_times(line, np.random.default_rng(child)), record_intervals=record_intervals)
        figs = figures(trace)
        for f in FIGURES:
            per_run[f].append(figs[f])
        per_station.append(station_figures(trace))
        gaps.append(little_gap(figs))
        if len(traces) < keep_traces:
            traces.append(trace)
    caps = line.capacities()
    neck = line.bottleneck()
    stations = []
    for i, st in enumerate(line.stations):
        runs = [ps[i] for ps in per_station]
        stations.append({
            "name": st.name, "capacity": caps[i], "bottleneck": i == neck, "resources": st.resources,
            "utilization": Estimate.of([r["utilization"] for r in runs], level).to_dict(),
            "wip_average": Estimate.of([r["wip_average"] for r in runs], level).to_dict(),
            "idle": [Estimate.of([r["idle"][j] for r in runs], level).to_dict() for j in range(st.resources)],
        })
    return SimulationResult(line, replications, seed, {f: Estimate.of(v, level) for f, v in per_run.items()},
                            stations, max(gaps), traces)
