import sys

import numpy as np
import pytest

from batchscope import ConfigError
from batchscope.flow import Line, Station, example_line, make_line, simulate
from batchscope.flow.simulate import draw_times, run_once
from batchscope.flow.trace import figures, time_average


@pytest.mark.parametrize("line", [
    example_line(),
    make_line([1.0, 2.0, 1.5], 40, setups=[5.0, 2.0, 0.0], process_batch=15, transfer_batch=4,
              distribution="exponential"),
    make_line([2.0, 1.0], 30, setups=[1.0, 6.0], resources=[3, 1], process_batch=7, transfer_batch=3,
              distribution="uniform", cv=0.5),
], ids=["example", "exponential", "parallel"])
def test_littles_law_on_simulated_runs(line):
    # Integrated WIP (walking the trace's events) equals throughput x mean lead time on every run.
    sim = simulate(line, replications=8, seed=11, keep_traces=8)
    assert sim.little_max_gap < 1e-9
    for trace in sim.traces:
        f = figures(trace)
        assert f["wip_average"] == pytest.approx(f["little_wip"], rel=1e-9)
        # and per station: average units at the station = arrival rate x mean time spent there
        lead = trace.exits.max()
        for i in range(len(line.stations)):
            stay = trace.departures[i] - trace.arrivals[i]
            assert time_average(trace.arrivals[i], trace.departures[i], lead) == pytest.approx(
                trace.units / lead * stay.mean(), rel=1e-9)


def test_time_average_by_hand():
    # one unit on [0, 4], a second on [1, 3]: area 4 + 2 = 6 over 4
    assert time_average(np.array([0.0, 1.0]), np.array([4.0, 3.0]), 4.0) == 1.5


def test_trace_is_causal():
    line = make_line([1.0, 2.0, 1.5], 40, setups=[5.0, 2.0, 1.0], process_batch=15, transfer_batch=4,
                     distribution="gamma", cv=0.5)
    tr = run_once(line, draw_times(line, np.random.default_rng(0)))
    assert (tr.starts >= tr.arrivals).all()                                  # nothing starts before it arrives
    assert (tr.departures >= tr.starts + tr.processing - 1e-12).all()
    assert (tr.arrivals[1:] == tr.departures[:-1]).all()                     # moving takes no time
    # units leave in transfer batches of 4 within process batches of 15: 4, 4, 4, 3
    assert [len(set(tr.departures[0, a:b])) for a, b in [(0, 15), (15, 30), (30, 40)]] == [4, 4, 3]


def test_parallel_resources_take_whole_process_batches():
    # One station, 2 resources, set-up 1, 1 per unit, order 4 in process batches of 2:
    # both batches run side by side: lead time 1 + 2 = 3, capacity 2 * 2 / 3, no idle resource.
    line = Line((Station("s", 1.0, setup=1.0, resources=2),), 4, process_batch=2)
    sim = simulate(line)
    assert sim["lead_time"].mean == 3.0
    assert sim.stations[0]["capacity"] == pytest.approx(4 / 3)
    assert [x["mean"] for x in sim.stations[0]["idle"]] == [0.0, 0.0]
    # One process batch: the second resource never works.
    whole = simulate(line.with_(process_batch=4))
    assert whole["lead_time"].mean == 5.0
    assert [x["mean"] for x in whole.stations[0]["idle"]] == [0.0, 5.0]


def test_station_transfer_batch_override():
    # Station 1 moves the whole order at once even though the line's transfer batch is 1.
    line = Line((Station("a", 1.0, transfer_batch=4), Station("b", 1.0)), 4, transfer_batch=1)
    sim = simulate(line)
    assert (sim["first_unit_lead_time"].mean, sim["lead_time"].mean) == (5.0, 8.0)


def test_replications_seed_and_reproducibility():
    line = make_line([1.0, 2.0], 20, transfer_batch=5, distribution="exponential")
    a, b = simulate(line, 5, seed=1), simulate(line, 5, seed=1)
    assert a["lead_time"] == b["lead_time"] and a["lead_time"].n == 5
    assert simulate(line, 5, seed=2)["lead_time"].mean != a["lead_time"].mean
    assert simulate(make_line([1.0], 5), replications=50).replications == 1    # deterministic: one run
    with pytest.raises(ConfigError, match=r"The 'replications' parameter must be a positive integer\. Got 0"):
        simulate(line, 0)


def test_result_round_trip():
    from batchscope.flow import SimulationResult
    from batchscope.serialize import dumps
    import json
    sim = simulate(example_line(), replications=3)
    back = SimulationResult.from_dict(json.loads(dumps(sim.to_dict())))
    assert back.figures == sim.figures and back.line == sim.line


def test_missing_simpy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "simpy", None)
    with pytest.raises(ConfigError,
                       match=r"The flow simulation needs SimPy\. Install it with `pip install 'batchscope\[flow\]'`"):
        simulate(make_line([1.0], 3))
