"""Closed forms vs the SimPy simulation of batchscope.flow: agreement and cost.

1. Deterministic lines (hand cases, a machining cell, random lines where a closed form applies):
   largest relative difference between closed form and simulation over every figure.
2. Random unit times where the mean has a closed form (whole order moved at once, one station):
   how often the 95% t-interval of R replications covers the exact mean, over many seeds
   (should be close to 0.95).
3. GPipe: simulated bubble vs (P-1)/(M+P-1) over a grid of P and M.
4. Cost: wall time of one simulated replication against the closed form, as the order grows.

Run: PYTHONPATH=src python benchmarks/flow_closed_vs_sim.py   (writes benchmarks/results/flow_closed_vs_sim.json)
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from batchscope.flow import closed_form, make_line, simulate, simulate_pipeline
from batchscope.flow.closed_form import LINEAR
from batchscope.serialize import write_json

OUT = Path(__file__).parent / "results" / "flow_closed_vs_sim.json"


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def deterministic_agreement() -> dict:
    lines = {f"three stations T={t}": make_line([1.0, 2.0, 1.0], 4, setups=[2.0, 3.0, 1.0], transfer_batch=t)
             for t in (1, 2, 4)}
    lines["cell Q=N=120 T=10"] = make_line([1.0, 3.0, 2.0, 0.5], 120, setups=[10.0, 30.0, 20.0, 0.0],
                                           transfer_batch=10)
    lines["cell Q=20 T=Q N=120"] = make_line([1.0, 3.0, 2.0, 0.5], 120, setups=[10.0, 30.0, 20.0, 0.0],
                                             process_batch=20)
    lines["one station ragged"] = make_line([0.7], 100, setups=[5.0], process_batch=30, transfer_batch=7)
    rows = []
    for name, line in lines.items():
        closed, sim = closed_form(line), simulate(line)
        err = max([rel_err(sim[k].mean, v) for k, v in closed.figures.items()]
                  + [rel_err(sim.stations[i]["idle"][0]["mean"], v) if v else abs(sim.stations[i]["idle"][0]["mean"])
                     for i, v in enumerate(closed.idle)])
        rows.append({"line": name, "case": closed.case, "lead_time": closed.figures["lead_time"],
                     "max_rel_err": err})
    rng = np.random.default_rng(0)
    worst, count = 0.0, 0
    while count < 300:
        n, order = int(rng.integers(1, 7)), int(rng.integers(1, 60))
        q = int(rng.choice([d for d in range(1, order + 1) if order % d == 0]))
        t = int(rng.choice([d for d in range(1, q + 1) if q % d == 0]))
        line = make_line(list(rng.uniform(0.1, 5, n)), order, setups=list(rng.uniform(0, 20, n)),
                         process_batch=q, transfer_batch=t)
        closed = closed_form(line)
        if closed is None:
            continue
        sim = simulate(line)
        worst = max(worst, max(rel_err(sim[k].mean, v) for k, v in closed.figures.items()))
        count += 1
    rows.append({"line": f"{count} random lines (1-6 stations, real-valued times)", "case": "all cases",
                 "lead_time": None, "max_rel_err": worst})
    return {"rows": rows}


def coverage(seeds: int = 200, replications: int = 20) -> dict:
    cases = {
        "3 stations, lognormal cv 0.6, T=Q=N=20": make_line([1.0, 2.0, 0.5], 20, setups=[3.0, 1.0, 2.0],
                                                              distribution="lognormal", cv=0.6),
        "1 station, exponential, Q=6 T=4 N=20": make_line([2.0], 20, setups=[3.0], process_batch=6,
                                                           transfer_batch=4, distribution="exponential"),
        "1 station, normal cv 0.8 (truncated), N=20": make_line([1.0], 20, setups=[1.0], process_batch=5,
                                                                 distribution="normal", cv=0.8),
    }
    rows = []
    for name, line in cases.items():
        exact = closed_form(line).figures
        hits = {k: 0 for k in ("lead_time", "first_unit_lead_time", "mean_unit_lead_time")}
        for seed in range(seeds):
            sim = simulate(line, replications, seed)
            for k in hits:
                hits[k] += sim[k].covers(exact[k], rel_tol=0)
        rows.append({"line": name, "replications": replications, "seeds": seeds, "exact_lead_time": exact["lead_time"],
                     **{f"coverage_{k}": v / seeds for k, v in hits.items()}})
    return {"rows": rows, "nominal": 0.95, "binomial_sd": math.sqrt(0.95 * 0.05 / seeds), "linear_figures": LINEAR}


def pipeline_grid() -> dict:
    worst, n = 0.0, 0
    for p in (1, 2, 4, 8, 16):
        for m in (1, 2, 4, 8, 16, 32, 64):
            r = simulate_pipeline(p, m)
            worst = max(worst, abs(r.bubble_fraction - (p - 1) / (m + p - 1)))
            n += 1
    unequal = simulate_pipeline(4, 16, stage_times=[1.0, 1.5, 0.8, 1.2], backward_ratio=2.0)
    return {"grid_points": n, "max_abs_err": worst,
            "unequal_stages_example": {"stage_times": unequal.stage_times, "micro_batches": 16,
                                       "bubble_simulated": unequal.bubble_fraction,
                                       "bubble_formula": unequal.bubble_fraction_formula,
                                       "gpipe_equal_stage_formula": 3 / 19}}


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cost() -> dict:
    rows = []
    for order in (100, 1_000, 10_000):
        for t in (1, order):
            line = make_line([1.0, 2.0, 1.5, 1.0, 0.5], order, setups=[5.0] * 5, transfer_batch=t)
            reps = 7 if order <= 1_000 else 3
            # interleave the two measurements so machine noise hits both alike
            sim_t, cf_t = [], []
            for _ in range(reps):
                sim_t.append(median_time(lambda: simulate(line), 1))
                cf_t.append(median_time(lambda: closed_form(line), 1))
            s, c = statistics.median(sim_t), statistics.median(cf_t)
            rows.append({"order": order, "stations": 5, "transfer_batch": t, "sim_seconds": s,
                         "closed_form_seconds": c, "ratio": s / c,
                         "us_per_unit_station": s / (order * 5) * 1e6})
    return {"rows": rows}


def main() -> None:
    t0 = time.perf_counter()
    result = {"deterministic": deterministic_agreement(), "coverage": coverage(), "pipeline": pipeline_grid(),
              "cost": cost(), "python": platform.python_version(), "machine": platform.machine(),
              "note": "2 shared CPU cores; times are medians of interleaved repeats"}
    result["total_seconds"] = time.perf_counter() - t0
    print("1. deterministic lines: closed form vs simulation")
    print(f"   {'line':52s} {'case':64s} {'max rel err':>11s}")
    for r in result["deterministic"]["rows"]:
        print(f"   {r['line']:52s} {r['case']:64s} {r['max_rel_err']:11.1e}")
    print("2. random times: coverage of the 95% t-interval of the exact mean "
          f"(binomial sd {result['coverage']['binomial_sd']:.3f})")
    for r in result["coverage"]["rows"]:
        print(f"   {r['line']:46s} R={r['replications']} seeds={r['seeds']}: lead {r['coverage_lead_time']:.3f}  "
              f"first {r['coverage_first_unit_lead_time']:.3f}  mean unit {r['coverage_mean_unit_lead_time']:.3f}")
    pl = result["pipeline"]
    print(f"3. GPipe bubble: {pl['grid_points']} (P, M) points, max |sim - (P-1)/(M+P-1)| = {pl['max_abs_err']:.1e}; "
          f"unequal stages {pl['unequal_stages_example']['stage_times']}: sim "
          f"{pl['unequal_stages_example']['bubble_simulated']:.4f} = formula "
          f"{pl['unequal_stages_example']['bubble_formula']:.4f} (equal-stage formula would say 0.1579)")
    print("4. cost of one simulated replication vs the closed form (5 stations)")
    print(f"   {'order':>6s} {'T':>6s} {'sim s':>9s} {'closed s':>10s} {'ratio':>9s} {'us/unit-station':>16s}")
    for r in result["cost"]["rows"]:
        print(f"   {r['order']:6d} {r['transfer_batch']:6d} {r['sim_seconds']:9.4f} {r['closed_form_seconds']:10.6f} "
              f"{r['ratio']:9.0f} {r['us_per_unit_station']:16.1f}")
    write_json(OUT, result)
    print(f"wrote {OUT} ({result['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
