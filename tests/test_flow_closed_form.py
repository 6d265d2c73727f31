"""Closed forms against hand-computed schedules, and against the simulation."""

import numpy as np
import pytest

from batchscope.flow import agreement, closed_form, make_line, simulate
from batchscope.flow.closed_form import LINEAR, one_batch_exits, whole_batch_exits


def three_stations(transfer_batch: int):
    # A: set-up 2, 1 per unit; B: set-up 3, 2 per unit; C: set-up 1, 1 per unit; an order of 4 units
    # made as one process batch. Value-added time per unit = 1 + 2 + 1 = 4.
    return make_line([1.0, 2.0, 1.0], 4, setups=[2.0, 3.0, 1.0], transfer_batch=transfer_batch,
                     names=["A", "B", "C"])


# Transfer batch = order (4): each station waits for the whole order.
#   A: set-up [0,2], units [2,6]      -> all 4 leave at 6
#   B: set-up [6,9], units [9,17]     -> leave at 17
#   C: set-up [17,18], units [18,22]  -> leave at 22
# lead time 22 for every unit; value-added fraction 4/22; waiting 22 - 4 = 18; WIP 4 throughout;
# idle A 22-6 = 16, B 22-11 = 11, C 22-5 = 17.
WHOLE = dict(lead_time=22.0, first_unit_lead_time=22.0, mean_unit_lead_time=22.0, value_added_fraction=4 / 22,
             waiting_time_per_unit=18.0, wip_average=4.0, throughput=4 / 22)
WHOLE_IDLE = (16.0, 11.0, 17.0)

# One-piece flow (transfer batch 1):
#   A: set-up [0,2]; units done 3, 4, 5, 6
#   B: unit 1 arrives 3, set-up [3,6]; units [6,8] [8,10] [10,12] [12,14]
#   C: unit 1 arrives 8, set-up [8,9]; units [9,10]; then each as it arrives: [10,11] [12,13] [14,15]
# exits 10, 11, 13, 15: lead time 15, first unit 10, mean 49/4 = 12.25; value-added fraction 4/15;
# waiting 12.25 - 4 = 8.25; WIP = sum of lead times / lead time = 49/15; idle A 9, B 4, C 10.
ONE_PIECE = dict(lead_time=15.0, first_unit_lead_time=10.0, mean_unit_lead_time=12.25, value_added_fraction=4 / 15,
                 waiting_time_per_unit=8.25, wip_average=49 / 15, throughput=4 / 15)
ONE_PIECE_IDLE = (9.0, 4.0, 10.0)

# Transfer batch 2: A releases 2 units at 4 and 6; B sets up [4,7], does [7,11] -> 11, [11,15] -> 15;
# C sets up [11,12], does [12,14] -> 14, [15,17] -> 17. Exits 14, 14, 17, 17.
TWO = dict(lead_time=17.0, first_unit_lead_time=14.0, mean_unit_lead_time=15.5, value_added_fraction=4 / 17)


@pytest.mark.parametrize("t, expected, idle, case", [
    (4, WHOLE, WHOLE_IDLE, "whole order moved at once"),
    (1, ONE_PIECE, ONE_PIECE_IDLE, "one-piece flow"),
    (2, TWO, None, "one process batch, transfer batch divides it"),
])
def test_three_station_line_by_hand(t, expected, idle, case):
    line = three_stations(t)
    closed = closed_form(line)
    sim = simulate(line)
    assert closed.case == case and closed.exact
    for name, value in expected.items():
        assert closed.figures[name] == pytest.approx(value, rel=1e-12), name
        assert sim[name].mean == pytest.approx(value, rel=1e-12), name
    if idle:
        assert closed.idle == pytest.approx(idle)
        assert [s["idle"][0]["mean"] for s in sim.stations] == pytest.approx(idle)
    assert agreement(closed, sim)["agrees"]


def test_overlap_formula_reduces_to_the_textbook_cases():
    p, s = [1.0, 3.0, 2.0], [0.0, 0.0, 0.0]
    # no set-ups: C(k, n) = T P + (k - 1) T max p
    assert one_batch_exits(s, p, 2, 5)[-1] == 2 * 6 + 4 * 2 * 3
    # T = Q: sum of (set-up + Q p)
    assert one_batch_exits([1.0, 2.0, 3.0], p, 10, 1) == [6 + 10 * 6]
    # identical jobs: sum a + (b - 1) max a, a = s + Q p = (3, 8, 5)
    assert whole_batch_exits([1.0, 2.0, 3.0], [1.0, 3.0, 1.0], 2, 3) == [16.0, 24.0, 32.0]


def test_closed_forms_agree_with_simulation_on_many_deterministic_lines():
    rng = np.random.default_rng(7)
    checked = 0
    while checked < 40:
        n = int(rng.integers(1, 5))
        order = int(rng.integers(1, 25))
        q = int(rng.choice([d for d in range(1, order + 1) if order % d == 0]))
        t = int(rng.choice([d for d in range(1, q + 1) if q % d == 0]))
        line = make_line(list(rng.integers(1, 6, n) / 2), order, setups=list(rng.integers(0, 9, n) / 4),
                         process_batch=q, transfer_batch=t)
        closed = closed_form(line)
        if closed is None:
            continue
        checked += 1
        assert agreement(closed, simulate(line))["agrees"], line


def test_multi_batch_whole_transfer_by_hand():
    # Two stations (set-up 1, 1/unit) and (set-up 0, 2/unit), order 9 in process batches of 3 moved whole:
    # jobs of a = (1 + 3, 0 + 6) = (4, 6): batch 1 leaves at 10, batch 2 at 16, batch 3 at 22; mean 16.
    line = make_line([1.0, 2.0], 9, setups=[1.0, 0.0], process_batch=3)
    closed = closed_form(line)
    assert closed.case.startswith("transfer batch = process batch")
    assert (closed.figures["first_unit_lead_time"], closed.figures["lead_time"]) == (10.0, 22.0)
    assert closed.figures["mean_unit_lead_time"] == 16.0
    assert simulate(line)["mean_unit_lead_time"].mean == 16.0


def test_random_times_agree_within_the_interval():
    # Whole order moved at once: lead time = sum of set-ups and of every unit time, so its mean is exact.
    line = make_line([1.0, 2.0, 0.5], 20, setups=[3.0, 1.0, 2.0], distribution="lognormal", cv=0.6)
    closed = closed_form(line)
    assert not closed.exact and set(closed.figures) == set(LINEAR)
    assert closed.figures["lead_time"] == pytest.approx(6 + 20 * 3.5)
    sim = simulate(line, replications=40, seed=3)
    assert sim["lead_time"].half_width > 0
    assert agreement(closed, sim)["agrees"]
    # One station with ragged batches and a truncated normal (mean above nominal).
    one = make_line([2.0], 20, setups=[3.0], process_batch=6, transfer_batch=4, distribution="normal", cv=0.8)
    assert agreement(closed_form(one), simulate(one, replications=40, seed=3))["agrees"]


def test_no_closed_form_where_none_is_derived():
    assert closed_form(make_line([1.0, 2.0], 10, resources=[1, 2])) is None
    assert closed_form(make_line([1.0, 2.0], 10, transfer_batch=3)) is None                  # ragged transfer batch
    assert closed_form(make_line([1.0, 2.0], 10, transfer_batch=5, distribution="exponential")) is None
